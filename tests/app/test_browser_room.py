"""A classroom in a real browser (also what two students sharing a server meet): `FACTO_ROOM=1 streamlit run app.py`, three students as three
Chromium contexts (three browsers: their own cookies), Playwright.

Student A runs the default run (room mode must take its own defaults) to its end, and the
accuracy cards read at every refresh never compare two different test points. B opens A's
full URL: B watches (pictures only, no chart library) but cannot stop or delete A's run. C opens
two tabs: one run between them, whatever they press. A reloads and is back on its run; A's
second tab stops A's next run.
Skipped only when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import re

import pytest

from facto.store.history import RunStore
from tests.app.test_browser import CHROMIUM, IDLE, start_server, stop, wait_until_healthy

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)")]

# Each time Streamlit marks an element stale (being redrawn): its opacity and transition then.
# Streamlit's own rule fades a stale element to 0.33 after a 0.5 s delay (transition 1 s).
RECORD_STALE_STYLE = """() => {
  window.staleStyles = [];
  new MutationObserver(records => {
    for (const r of records) {
      if (r.target.getAttribute("data-stale") !== "true") continue;
      const style = getComputedStyle(r.target);
      window.staleStyles.push(style.opacity + " " + style.transitionDuration);
    }
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["data-stale"]});
}"""

VIEWPORT = {"width": 1400, "height": 1000}
FIRST_STEPS = re.compile(r"Step [1-9]\d* of")  # "Step 0 of" shows before any step is done

# What the accuracy cards say now: [label, value] of each card of the page.
CARDS = """() => [...document.querySelectorAll("[data-testid='stMetric']")].map(card => [
  card.querySelector("[data-testid='stMetricLabel']")?.innerText.trim(),
  card.querySelector("[data-testid='stMetricValue']")?.innerText.trim()])"""


@pytest.fixture()
def room_server(tmp_path, monkeypatch):
    """The app served in room mode with an empty run store; yields (url, FACTO_HOME)."""
    monkeypatch.setenv("FACTO_ROOM", "1")
    proc, url = start_server(tmp_path, "room")
    try:
        wait_until_healthy(proc, url, tmp_path / "room" / "streamlit.log")
        yield url, tmp_path / "room" / "home"
    finally:
        stop(proc)


def read_cards(page) -> tuple[int, float, float] | None:
    """(epoch, baseline %, Facto %) the accuracy cards compare, None while they compare nothing."""
    cards = {label: value for label, value in page.evaluate(CARDS) if label}
    change = next((label for label in cards if label.startswith("Change after epoch")), None)
    if change is None:
        return None
    percent = {k: float(cards[k].split()[0]) for k in ("Baseline accuracy", "Facto accuracy")}
    return int(change.split()[-1]), percent["Baseline accuracy"], percent["Facto accuracy"]


def test_a_room_of_three_students(room_server, browser, tmp_path):
    from playwright.sync_api import expect

    url, home = room_server
    a_context = browser.new_context(viewport=VIEWPORT)
    a = a_context.new_page()
    a.goto(url)
    a.wait_for_selector(IDLE, timeout=90_000)
    expect(a.get_by_text(re.compile(r"88 steps \(22 per epoch\) on 1,400 images, 4 tests"))).to_be_visible()
    a.get_by_role("button", name="Run", exact=True).click()  # the defaults, untouched
    expect(a.get_by_text(FIRST_STEPS).first).to_be_visible(timeout=90_000)
    assert "v=" not in a.url and "job=1" in a.url

    # B, another browser, opens A's full URL: watches A's run, cannot stop it
    b = browser.new_context(viewport=VIEWPORT).new_page()
    scripts = []  # what B's browser loads: while it watches, no chart library
    b.on("request", lambda r: scripts.append(r.url) if r.url.endswith(".js") else None)
    b.goto(a.url)
    expect(b.get_by_text("Watching run #1, started by visitor")).to_be_visible(timeout=60_000)
    expect(b.get_by_role("button", name="Stop", exact=True)).to_be_disabled()
    # five pictures: the fifth the process's memory (a CPU under Linux)
    expect(b.locator("[data-testid='stMain'] img[src^='data:image/svg+xml']")).to_have_count(5, timeout=30_000)
    assert b.locator("[data-testid='stPlotlyChart']").count() == 0
    assert not [u for u in scripts if "Plotly" in u], scripts

    # C, a third browser, two tabs: one run between them
    c_context = browser.new_context(viewport=VIEWPORT)
    c1, c2 = c_context.new_page(), c_context.new_page()
    c1.goto(url)
    c1.wait_for_selector(IDLE, timeout=60_000)
    c1.get_by_role("button", name="Run", exact=True).click()
    expect(c1.get_by_text("Waiting for a free slot")).to_be_visible(timeout=30_000)
    c2.goto(url)
    expect(c2.get_by_text("Can't run now: you already have 1 run going or waiting")).to_be_visible(timeout=60_000)
    c2.get_by_role("button", name="Run", exact=True).click()
    c2.wait_for_selector(IDLE, timeout=30_000)
    expect(c2.get_by_text("Runs on this server (2 going or waiting)")).to_be_visible(timeout=30_000)
    c1.get_by_role("button", name="Stop", exact=True).click()  # its own waiting run
    c1.wait_for_selector(IDLE, timeout=30_000)

    a.reload()  # the URL keeps ?job=1: the reloaded tab is back on its run, still A's
    expect(a.get_by_text(FIRST_STEPS).first).to_be_visible(timeout=60_000)
    assert not a.get_by_text("Watching run #1, started by visitor").is_visible()
    expect(a.get_by_role("button", name="Stop", exact=True)).to_be_enabled()
    a.evaluate(RECORD_STALE_STYLE)  # live redraws do not fade what they redraw
    seen: set[tuple[int, float, float]] = set()
    done = a.get_by_text("Done: Facto stored")
    while not done.is_visible():
        cards = read_cards(a)
        if cards is not None:
            seen.add(cards)
        a.wait_for_timeout(500)
    styles = set(a.evaluate("() => window.staleStyles"))
    assert styles == {"1 0s"}, styles  # full opacity, no transition

    # Every change the cards showed compares the two variants after the same epoch
    run = next(r for r in RunStore(home / "runs.db").list_runs() if r.id == 1)
    assert run.status == "completed" and run.config["max_train"] is None and run.summary["steps"]["baseline"] == 88
    tested = {(e["variant"], e["epoch"]): round(e["accuracy"], 1)
              for e in RunStore(home / "runs.db").metrics(run.id, kind="eval")}
    assert len({epoch for epoch, _, _ in seen}) >= 2 and len(tested) == 8  # read after two tests at least
    for epoch, baseline, facto in seen:
        assert (baseline, facto) == (tested[("baseline", epoch)], tested[("facto", epoch)]), (epoch, seen, tested)

    # B can't delete A's run: B's History lists none of it
    b.goto(f"{url}/history")
    expect(b.get_by_text("You have not started a run on this server yet")).to_be_visible(timeout=60_000)

    # A's second tab is A too: it stops A's next run
    a.goto(url)
    a.wait_for_selector(IDLE, timeout=60_000)
    a.get_by_role("button", name="Run", exact=True).click()
    expect(a.get_by_text(FIRST_STEPS).first).to_be_visible(timeout=90_000)
    a2 = a_context.new_page()
    a2.goto(url)
    expect(a2.get_by_text("started by you")).to_be_visible(timeout=60_000)
    a2.get_by_role("button", name="Watch", exact=True).click()
    expect(a2.get_by_role("button", name="Stop", exact=True)).to_be_enabled(timeout=30_000)
    a2.get_by_role("button", name="Stop", exact=True).click()
    expect(a2.get_by_text("Stopped after")).to_be_visible(timeout=60_000)
    stopped = [r for r in RunStore(home / "runs.db").list_runs() if r.id != 1]
    assert [r.status for r in stopped] == ["interrupted"]
