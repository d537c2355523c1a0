"""What a classroom costs: a default comparison from the CLI, then the same run started in the app
with 1 tab watching, then with 3 tabs watching (headless Chromium via Playwright).

    python benchmarks/classroom.py                 # 3 rounds of the default run (4 epochs), ~4 minutes here
    python benchmarks/classroom.py --epochs 1 --repeat 1   # quicker
    python benchmarks/classroom.py --tab-cost      # what one watching tab costs its browser, ~1 minute

The wall time of each run is what the run history stored (finished_at - created_at), so the
browser's own timing plays no part. Each round runs every row once; the table has the median,
and "vs CLI" the median (min-max) of each round's app run over the same round's CLI run.
The browsers run on the same machine as the server and the training, which a classroom does
not do (each student's browser draws on their own machine): the CPU columns say where the
machine's time went from Run to Done (the training process, start-up included, the web server,
the browsers). `--apart` adds rows closer to a classroom: the browsers on the last core, the CLI,
the server and the training on the others (the CLI row pinned alike, so training gets the same
cores in both).
Prints a markdown table and the machine it ran on.
Needs Debian's chromium at /usr/bin/chromium and the playwright package.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facto.config import count  # noqa: E402
from facto.engine.devices import machine  # noqa: E402
from facto.store.history import RunStore  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned_to(cpus: set[int] | None):
    """A preexec_fn that keeps a child process (and its children) on `cpus` (None: no pinning)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def cli_run(home: Path, epochs: int, cpus: set[int] | None = None) -> tuple[float, float]:
    """The stored wall time of a CLI run and the CPU seconds of its process (start-up included)."""
    env = {**os.environ, "FACTO_HOME": str(home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "facto", "train", "--quiet", "--device", "cpu", "--epochs", str(epochs)],
                   cwd=ROOT, env=env, check=True, capture_output=True, preexec_fn=pinned_to(cpus))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return last_run_seconds(home), cpu


def last_run_seconds(home: Path) -> float:
    run = RunStore(home / "runs.db").list_runs(limit=1)[0]
    assert run.status == "completed", run
    return run.finished_at - run.created_at


def serve(home: Path, port: int, cpus: set[int] | None = None) -> subprocess.Popen:
    """The app on `port` (its training processes inherit the pinning to `cpus`)."""
    env = {**os.environ, "FACTO_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pinned_to(cpus))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("streamlit did not start")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process, from /proc (Linux)."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def browser_pids() -> list[int]:
    """Every chromium process alive now (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"chromium" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass  # ended meanwhile
    return pids


def browsers_cpu_seconds() -> float:
    """CPU seconds of every chromium process alive now."""
    total = 0.0
    for pid in browser_pids():
        try:
            total += sum(cpu_seconds(pid))
        except (OSError, ValueError):
            pass  # ended meanwhile
    return total


def split_cpus() -> tuple[set[int], set[int]]:
    """(cores for the training side, the core for the browsers): the last core apart."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--apart needs at least 2 cores")
    return set(cpus[:-1]), {cpus[-1]}


def open_tabs(browser, url: str, tabs: int, epochs: int) -> list:
    """`tabs` pages, each its own browser context (its own student); the first shows the app with
    `epochs` set, ready to Run."""
    pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page() for _ in range(tabs)]
    first = pages[0]
    first.goto(url)
    first.wait_for_selector(IDLE, timeout=90_000)
    if epochs != 4:  # the default
        box = first.get_by_role("spinbutton", name="Epochs")
        box.fill(str(epochs))
        box.press("Enter")
        first.wait_for_selector(IDLE, timeout=30_000)
    return pages


def app_run(home: Path, tabs: int, epochs: int, apart: bool = False) -> tuple[float, dict[str, float]]:
    """Start the default run in one tab, watch it from `tabs - 1` more: the stored wall time and the
    CPU seconds of the server, the training child and the browsers from Run to Done. `apart`: the
    browsers on their own core (Playwright and Chromium inherit this process's pinning)."""
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    train_cpus, browser_cpus = split_cpus() if apart else (None, None)
    server = serve(home, port, train_cpus)
    url = f"http://127.0.0.1:{port}"
    own_cpus = os.sched_getaffinity(0)
    try:
        if apart:
            os.sched_setaffinity(0, browser_cpus)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pages = open_tabs(browser, url, tabs, epochs)
            first = pages[0]
            server_before, browsers_before = cpu_seconds(server.pid)[0], browsers_cpu_seconds()
            first.get_by_role("button", name="Run", exact=True).click()
            for page in pages[1:]:
                page.goto(url)
                page.get_by_role("button", name="Watch").first.click(timeout=90_000)
            expect(first.get_by_text("Done: Facto stored")).to_be_visible(timeout=1_800_000)
            time.sleep(1.0)  # let the server reap the finished training child
            own, child = cpu_seconds(server.pid)
            cpu = {"server": own - server_before, "training": child,
                   "browsers": browsers_cpu_seconds() - browsers_before}
            browser.close()
    finally:
        os.sched_setaffinity(0, own_cpus)
        server.terminate()
        server.wait(10)
    return last_run_seconds(home), cpu


def tab_cost(tabs: int = 3, seconds: float = 15.0) -> dict[str, float]:
    """What watching costs the browsers: one tab starts a long run (30 epochs), `tabs - 1` more open
    the page and press Watch; the browsers' CPU seconds for each page load and from Watch to a drawn
    page (median), then the cores each tab and the server use while all watch for `seconds`."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = serve(Path(tmp), port)
        url = f"http://127.0.0.1:{port}"
        loads, watches = [], []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                pages = open_tabs(browser, url, tabs, epochs=30)
                first = pages[0]
                first.get_by_role("button", name="Run", exact=True).click()
                first.get_by_text("Baseline activations").first.wait_for(timeout=90_000)  # the first step is done
                for page in pages[1:]:
                    before = browsers_cpu_seconds()
                    page.goto(url)
                    page.wait_for_selector(IDLE, timeout=90_000)
                    loaded = browsers_cpu_seconds()
                    page.get_by_role("button", name="Watch").first.click(timeout=90_000)
                    page.get_by_text("Baseline activations").first.wait_for(timeout=90_000)
                    page.wait_for_selector(IDLE, timeout=60_000)
                    loads.append(loaded - before)
                    watches.append(browsers_cpu_seconds() - loaded)
                browsers, own = browsers_cpu_seconds(), cpu_seconds(server.pid)[0]
                time.sleep(seconds)
                watching = (browsers_cpu_seconds() - browsers) / seconds / tabs
                serving = (cpu_seconds(server.pid)[0] - own) / seconds
                first.get_by_role("button", name="Stop").first.click()
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
    return {"load": statistics.median(loads), "watch": statistics.median(watches), "watching": watching,
            "server": serving}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3, help="rounds; each runs every row once (default 3)")
    p.add_argument("--apart", action="store_true",
                   help="also rows with the browsers on the last core, the rest on the others")
    p.add_argument("--tab-cost", action="store_true",
                   help="only what a watching tab costs its browser (page load, Watch, cores while watching)")
    args = p.parse_args(argv)
    if args.tab_cost:
        cost = tab_cost()
        print(f"machine: {machine()}\n")
        print("| 3 tabs on one run (30 epochs) | browsers' CPU |\n|---|---|")
        print(f"| a tab opens the page mid-run (median) | {cost['load']:.2f} s |")
        print(f"| it presses Watch, until the page is drawn (median) | {cost['watch']:.2f} s |")
        print(f"| each tab while all three watch | {cost['watching']:.3f} cores |")
        print(f"| the web server meanwhile | {cost['server']:.3f} cores |")
        return 0
    setups = [(tabs, apart) for apart in ((False, True) if args.apart else (False,)) for tabs in (None, 1, 3)]
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[dict[str, float]]] = {}
    cli_name = "CLI (`facto train`)"
    reference: dict[str, str] = {}  # row -> the CLI row it is compared with
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):  # rounds interleave the rows, so drift touches all alike
            for tabs, apart in setups:
                home = Path(tmp) / f"tabs{tabs}{'a' if apart else ''}{round_}"
                suffix = " (browsers on their own core)" if apart else ""
                cli_row = cli_name + (" (pinned like the app's training)" if apart else "")
                if tabs is None:  # the CLI, pinned like the app's training side
                    name = cli_row
                    seconds, cpu = cli_run(home, args.epochs, split_cpus()[0] if apart else None)
                    cpu = {"training": cpu}
                else:
                    name = f"app, {tabs} tab{'s' if tabs > 1 else ''} watching{suffix}"
                    seconds, cpu = app_run(home, tabs, args.epochs, apart)
                reference[name] = cli_row
                walls.setdefault(name, []).append(seconds)
                cpus.setdefault(name, []).append(cpu)
    print(f"machine: {machine()}\n")
    print(f"default comparison ({count(args.epochs, 'epoch')}), {args.repeat} rounds: median wall time as stored"
          " in the run history (min-max), median CPU seconds from Run to Done (the training process's start-up"
          " included)\n")
    print("| where | wall time | vs CLI | CPU: training | CPU: server | CPU: browsers |\n|---|---|---|---|---|---|")
    for name, times in walls.items():
        wall = statistics.median(times)
        # each round's app run over the same round's CLI run (paired: drift between rounds cancels)
        ratios = [t / c for t, c in zip(times, walls[reference[name]])]
        vs_cli = "1.00x" if reference[name] == name else \
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        cells = []
        for key in ("training", "server", "browsers"):
            values = [c[key] for c in cpus[name] if key in c]
            cells.append(f"{statistics.median(values):.1f} s" if values else "")
        print(f"| {name} | {wall:.1f} s ({min(times):.1f}-{max(times):.1f}) | {vs_cli} | "
              + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
