"""End to end in a real browser: `streamlit run app.py`, Debian's chromium driven by Playwright.

Sets epochs to 1 and a 128-image subset through the UI, clicks Run, waits for the finished
metrics and the Plotly SVG, checks the run reached the store, and saves a screenshot
under tmp_path. Every page also opens by its URL as a fresh server's first request; the planner
and How it works are used there too.
Skipped only when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from facto.store.history import RunStore

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, name: str = "streamlit") -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free port with an empty run store under tmp_path/name; returns at
    once with (process, url): `wait_until_healthy` before the first page."""
    port, home = free_port(), tmp_path / name / "home"
    home.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FACTO_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / name / "streamlit.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_until_healthy(proc: subprocess.Popen, url: str, log: Path, limit_s: float = 60) -> None:
    """Until the server answers /_stcore/health (no script runs for it: the next page is its first)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"streamlit did not become healthy in {limit_s:.0f} s"
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture()
def server(tmp_path):
    """The app served by a real `streamlit run` with an empty run store; yields (url, FACTO_HOME)."""
    proc, url = start_server(tmp_path)
    try:
        wait_until_healthy(proc, url, tmp_path / "streamlit" / "streamlit.log")
        yield url, tmp_path / "streamlit" / "home"
    finally:
        stop(proc)


def requests_elsewhere(page, url: str) -> list[str]:
    """Filled with every request of `page` that goes anywhere but the app's server: an offline
    classroom must not need the network (a Material favicon came from Google's font CDN once)."""
    elsewhere: list[str] = []
    page.on("request", lambda r: elsewhere.append(r.url)
            if not r.url.startswith((url, "data:", "blob:", "about:")) else None)
    return elsewhere


# The projector: a 1024x768 window, the sidebar open (a chart in half the page is about 270 px wide)
PROJECTOR = {"width": 1024, "height": 768}

# Every Plotly text box of the page (title, legend, axis titles, tick labels, annotations) against
# its chart's SVG box; titles, legends, axis titles and annotations against each other and against
# the toolbar (modebar, where one is drawn); every metric card's label, value and delta and every
# heading against its own width (a cut one scrolls: Streamlit ends it with an ellipsis).
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const box = el => el.getBoundingClientRect();
  const text = el => (el.textContent || "").replace(/\\s+/g, " ").trim().slice(0, 80) || el.getAttribute("class");
  const area = r => r.width > 0.5 && r.height > 0.5;
  const inside = (r, o) => r.left >= o.left - 1 && r.right <= o.right + 1 && r.top >= o.top - 1
    && r.bottom <= o.bottom + 1;
  const meet = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const AXIS_TITLES = "[class^='x'][class$='title'], [class^='y'][class$='title']";  // xtitle, y2title, ...
  const px = r => `${Math.round(r.left)},${Math.round(r.top)} ${Math.round(r.width)}x${Math.round(r.height)}`;
  document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot").forEach(plot => {
    const svg = plot.querySelector(".main-svg");
    if (!svg) return;
    const chart = box(svg);
    const name = text(plot.querySelector(".gtitle") || svg);
    const texts = [...plot.querySelectorAll(`.gtitle, .g-gtitle text, .legend, .annotation, .cbtitle, ${AXIS_TITLES},
      [class^='x'][class$='tick'] text, [class^='y'][class$='tick'] text`)].filter(el => area(box(el)));
    for (const el of texts)
      if (!inside(box(el), chart))
        problems.push(`chart "${name}": "${text(el)}" (${px(box(el))}) is cut by the chart (${px(chart)})`);
    const kind = el => el.matches(".legend") ? "legend" : el.matches(".modebar") ? "toolbar" : "text";
    const boxes = [...plot.querySelectorAll(`.gtitle, .legend, .annotation, .modebar, ${AXIS_TITLES}`)]
      .filter(el => area(box(el)));
    for (let i = 0; i < boxes.length; i++)
      for (let j = i + 1; j < boxes.length; j++)
        if (meet(box(boxes[i]), box(boxes[j])))
          problems.push(`chart "${name}": ${kind(boxes[i])} "${text(boxes[i])}" overlaps `
                        + `${kind(boxes[j])} "${text(boxes[j])}"`);
  });
  const labels = `[data-testid='stMetricLabel'], [data-testid='stMetricValue'], [data-testid='stMetricDelta'],
    [data-testid='stHeading'], h1, h2, h3, h4`;
  document.querySelectorAll(labels).forEach(el => {
    for (const part of [el, ...el.querySelectorAll("*")])
      if (part.clientWidth > 0 && part.scrollWidth > part.clientWidth + 1) {
        problems.push(`"${text(el)}" is cut (${part.scrollWidth} px in ${part.clientWidth})`);
        break;
      }
  });
  return [...new Set(problems)];
}"""


# The page's n Plotly charts drawn, each at its column's width (after a resize too)
CHARTS_DRAWN = """n => {
  const charts = [...document.querySelectorAll("[data-testid='stPlotlyChart']")];
  return charts.length === n && charts.every(chart => {
    const svg = chart.querySelector(".main-svg");
    return svg !== null && chart.querySelector(".gtitle") !== null
      && Math.abs(svg.getBoundingClientRect().width - chart.getBoundingClientRect().width) < 2;
  });
}"""
# The page's height: Streamlit scrolls its main area, not the document, so a full-page screenshot
# would hold the window only
PAGE_HEIGHT = """() => Math.max(...["[data-testid='stMain']", "[data-testid='stAppViewContainer']"]
  .map(s => document.querySelector(s)).filter(Boolean).map(el => el.scrollHeight), window.innerHeight)"""


def layout_problems(page, shots: Path, name: str, charts: int) -> list[str]:
    """What is cut or overlapped on the page (LAYOUT_PROBLEMS) once its `charts` Plotly charts are
    drawn, each problem naming the page and the text; then a screenshot of the whole page at the
    window's width, shots/name.png (and in $FACTO_SCREENSHOTS when set)."""
    page.wait_for_function(CHARTS_DRAWN, arg=charts, timeout=120_000)
    problems = [f"{name}: {p}" for p in page.evaluate(LAYOUT_PROBLEMS)]
    window = page.viewport_size
    page.set_viewport_size({"width": window["width"], "height": page.evaluate(PAGE_HEIGHT)})  # same width
    page.wait_for_function(CHARTS_DRAWN, arg=charts, timeout=30_000)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name}.png"))
    if os.environ.get("FACTO_SCREENSHOTS"):
        folder = Path(os.environ["FACTO_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / f"{name}.png", folder / f"{name}.png")
    page.set_viewport_size(window)
    return problems


def test_run_in_a_real_browser(server, browser, tmp_path):
    """A run through the UI to its stored end: metrics, the four charts, the run in the store; then
    on a projector (1024x768, the sidebar open) nothing of the page is cut or overlapped."""
    from playwright.sync_api import expect

    url, home = server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    elsewhere = requests_elsewhere(page, url)
    page.goto(url)
    page.wait_for_selector(IDLE, timeout=90_000)
    expect(page.get_by_role("heading", name="Facto · train & compare")).to_be_visible()

    epochs = page.get_by_role("spinbutton", name="Epochs")
    epochs.fill("1")
    epochs.press("Enter")
    page.get_by_text("Advanced: subset, blocks").click()
    subset = page.get_by_role("spinbutton", name="Train images (0 = all)")
    subset.fill("128")
    subset.press("Enter")
    page.wait_for_selector(IDLE, timeout=30_000)
    expect(epochs).to_have_value("1")

    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_enabled(timeout=30_000)  # locked while running
    done = page.get_by_text("Done: Facto stored")
    expect(done).to_be_visible(timeout=240_000)
    page.wait_for_selector(IDLE, timeout=60_000)  # the page's last redraw after the run is over
    page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=60_000)
    saving = page.locator("[data-testid='stMetric']", has_text="Memory saving")
    expect(saving).to_have_count(1, timeout=30_000)  # stale elements of the live view are gone
    value = saving.locator("[data-testid='stMetricValue']").inner_text()
    assert float(value.split()[0]) > 0
    assert page.locator("[data-testid='stPlotlyChart']").count() == 5
    # on a CPU under Linux, what the machine gave the process: each variant's step peak beside its stored bytes
    process = page.locator("[data-testid='stPlotlyChart']", has_text="Process memory per step")
    expect(process).to_have_count(1)
    legend = process.locator(".legend").text_content()
    assert "Baseline · step peak" in legend and "Facto · step peak" in legend, legend
    peak = RunStore(home / "runs.db").list_runs()[0].summary["process_peak"]
    assert peak["facto"] > 0 and peak["baseline"] > 0, peak
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()
    page.screenshot(path=str(tmp_path / "main.png"), full_page=True)
    (run,) = RunStore(home / "runs.db").list_runs()
    assert run.status == "completed" and run.config["epochs"] == 1
    page.set_viewport_size(PROJECTOR)
    expect(page.locator("[data-testid='stSidebar']")).to_have_attribute("data-collapsed", "false")
    charts = page.locator("[data-testid='stPlotlyChart']").count()  # drawn at the wider window
    problems = layout_problems(page, tmp_path / "projector", "main", charts)
    assert problems == [], "\n".join(problems)
    assert elsewhere == []


def _batches(page) -> dict[str, int]:
    """The planner's cards: variant -> largest batch ("1,234")."""
    cards = page.locator("[data-testid='stMetric']")
    out = {}
    for i in range(cards.count()):
        label = cards.nth(i).locator("[data-testid='stMetricLabel']").inner_text().strip()
        value = cards.nth(i).locator("[data-testid='stMetricValue']").inner_text()
        out[label] = int(value.replace(",", "").strip())
    return out


def _fit_my_gpu(page, tmp_path: Path) -> None:
    """The planner page: cards per variant, chart and table; a smaller budget gives smaller batches;
    a budget it cannot read gets a plain error naming it."""
    from playwright.sync_api import expect

    page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=120_000)
    page.wait_for_selector(IDLE, timeout=60_000)
    at_8gb = _batches(page)
    assert {"dense", "balanced"} <= set(at_8gb), at_8gb
    assert at_8gb["balanced"] > at_8gb["dense"] > 0
    expect(page.locator("[data-testid='stDataFrame']")).to_have_count(1)
    page.screenshot(path=str(tmp_path / "plan.png"), full_page=True)

    budget = page.get_by_role("textbox", name="Memory budget")
    budget.fill("2GB")
    budget.press("Enter")
    deadline = time.monotonic() + 60
    while (at_2gb := _batches(page)).get("dense") == at_8gb["dense"]:  # until the new plan shows
        assert time.monotonic() < deadline, "the plan did not change with the budget"
        page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=60_000)
    at_2gb = _batches(page)
    assert set(at_2gb) == set(at_8gb)
    assert all(at_2gb[v] < at_8gb[v] for v in at_8gb), (at_2gb, at_8gb)

    budget.fill("lots")
    budget.press("Enter")
    expect(page.get_by_text("Memory budget 'lots' is not allowed")).to_be_visible(timeout=30_000)  # names the value


def _how_it_works(page, tmp_path: Path) -> None:
    """How it works: its figures draw, without an exception."""
    page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=120_000)
    page.wait_for_selector(IDLE, timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(tmp_path / "how.png"), full_page=True)


# The pages whose content is checked further once they opened by their link
FURTHER = {"fit-my-gpu": _fit_my_gpu, "how-it-works": _how_it_works}


# Every page's URL, the title it draws and its browser tab's title
DEEP_LINKS = {"sweep": ("Sweep", "Facto · sweep"), "layers": ("Layers", "Facto · layers"),
              "compression": ("Compression", "Facto · compression"), "history": ("History", "Facto · history"),
              "how-it-works": ("How it works", "Facto · how it works"),
              "fit-my-gpu": ("Fit my GPU", "Facto · fit my GPU")}
CHARTS = {"layers": 3, "compression": 3, "how-it-works": 5, "fit-my-gpu": 1}  # each page's Plotly charts (else 0)
NAVIGATION = ["Train & compare", "Sweep", "Layers", "Compression", "History", "How it works", "Fit my GPU"]


def test_every_page_opens_by_its_deep_link_as_a_fresh_servers_first_request(browser, tmp_path):
    """A shared link is often a server's first request. Each page on its own fresh server, asked
    only /_stcore/health before: the link opens its own page (its title shows), not "Page not
    found" over the main page, with the sidebar's navigation (ui.PAGES' labels, linking to the
    same URLs; Streamlit's own list of file names hidden) and nothing fetched from elsewhere.
    The window is a projector's (1024x768, the sidebar open): once a page has drawn, nothing of it
    is cut or overlapped (layout_problems; a screenshot of each under tmp_path/projector). The
    planner and How it works are then used there (FURTHER); test_app.py covers the other pages'
    content. Each server is killed once its page is checked, and the next one starts while a page
    is checked."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PROJECTOR)
    paths, servers, problems = list(DEEP_LINKS), {}, []
    try:
        for i, path in enumerate(paths):
            for upcoming in paths[i:i + 2]:
                if upcoming not in servers:
                    servers[upcoming] = start_server(tmp_path, upcoming)
            proc, url = servers[path]
            wait_until_healthy(proc, url, tmp_path / path / "streamlit.log")
            page = context.new_page()
            elsewhere = requests_elsewhere(page, url)
            page.goto(f"{url}/{path}")
            title, tab_title = DEEP_LINKS[path]
            expect(page.get_by_role("heading", level=1, name=title)).to_be_visible(timeout=120_000)
            assert page.url.split("?")[0] == f"{url}/{path}", page.url
            expect(page).to_have_title(tab_title)
            expect(page.get_by_text("Page not found")).to_have_count(0)
            expect(page.locator("[data-testid='stException']")).to_have_count(0)
            assert page.locator("[data-testid='stSidebarNav']").count() == 0  # Streamlit's own navigation
            links = page.locator("[data-testid='stSidebar'] [data-testid='stPageLink-NavLink']")
            expect(links).to_have_count(len(NAVIGATION))
            assert [t.strip().splitlines()[-1] for t in links.all_inner_texts()] == NAVIGATION
            href = page.get_by_role("link", name=title).evaluate("a => a.href")  # as the browser resolves it
            assert href.split("?")[0] == f"{url}/{path}", href
            expect(page.locator("[data-testid='stSidebar']")).to_have_attribute("data-collapsed", "false")
            problems += layout_problems(page, tmp_path / "projector", path, CHARTS.get(path, 0))
            page.wait_for_selector(IDLE, timeout=60_000)
            if path in FURTHER:
                FURTHER[path](page, tmp_path)
            assert elsewhere == [], (path, elsewhere)
            proc.kill()  # nothing of it is kept (an empty run store under tmp_path)
            proc.wait(10)
            page.close()
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait(10)
        context.close()
    assert problems == [], "\n".join(problems)
