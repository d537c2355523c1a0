"""What a classroom costs: a default comparison from the CLI, then the same run started in the app
with 1 tab watching, then with 3 tabs watching (headless Chromium via Playwright).

    python benchmarks/classroom.py                 # the default run (4 epochs), about 5 minutes here
    python benchmarks/classroom.py --epochs 1      # quicker

The wall time of each run is what the run history stored (finished_at - created_at), so the
browser's own timing plays no part. The browsers run on the same machine as the server and
the training, which a classroom does not do (each student's browser draws on their own
machine): `--browsers-niced` lowers their priority to stand in for that, and the table has
both. Prints a markdown table and the machine it ran on.
Needs Debian's chromium at /usr/bin/chromium and the playwright package.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facto.machine import machine  # noqa: E402
from facto.store import RunStore  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_run(home: Path, epochs: int) -> float:
    env = {**os.environ, "FACTO_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "facto", "train", "--quiet", "--device", "cpu", "--epochs", str(epochs)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return last_run_seconds(home)


def last_run_seconds(home: Path) -> float:
    run = RunStore(home / "runs.db").list_runs(limit=1)[0]
    assert run.status == "completed", run
    return run.finished_at - run.created_at


def serve(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FACTO_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def browsers_cpu_seconds() -> float:
    """CPU seconds of every chromium process alive now."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"chromium" in (entry / "cmdline").read_bytes():
                    total += sum(cpu_seconds(int(entry.name)))
            except (OSError, ValueError):
                pass
    return total


def renice_browsers() -> None:
    """Lower the priority of every chromium process (Linux): the browsers stand in for students'
    own machines and take only what the server and training leave."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"chromium" in (entry / "cmdline").read_bytes():
                    os.setpriority(os.PRIO_PROCESS, int(entry.name), 19)
            except (OSError, PermissionError):
                pass


def app_run(home: Path, tabs: int, epochs: int, niced: bool = False) -> tuple[float, dict[str, float]]:
    """Start the default run in one tab, watch it from `tabs - 1` more: the stored wall time and the
    CPU seconds of the server, the training child and the browsers from Run to Done."""
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    server = serve(home, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page() for _ in range(tabs)]
            if niced:
                renice_browsers()
            first = pages[0]
            first.goto(url)
            first.wait_for_selector(IDLE, timeout=90_000)
            if epochs != 4:
                box = first.get_by_role("spinbutton", name="Epochs")
                box.fill(str(epochs))
                box.press("Enter")
                first.wait_for_selector(IDLE, timeout=30_000)
            server_before, browsers_before = cpu_seconds(server.pid)[0], browsers_cpu_seconds()
            first.get_by_role("button", name="Run", exact=True).click()
            for page in pages[1:]:
                page.goto(url)
                page.get_by_role("button", name="Watch").first.click(timeout=90_000)
            if niced:
                renice_browsers()  # renderer processes started with the tabs
            expect(first.get_by_text("Done: Facto stored")).to_be_visible(timeout=1_800_000)
            time.sleep(1.0)  # let the server reap the finished training child
            own, child = cpu_seconds(server.pid)
            cpu = {"server": own - server_before, "training": child,
                   "browsers": browsers_cpu_seconds() - browsers_before}
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    return last_run_seconds(home), cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_run(Path(tmp) / "cli", args.epochs)
        rows.append(("CLI (`facto train`)", cli, None))
        for niced in (False, True):
            for tabs in (1, 3):
                seconds, cpu = app_run(Path(tmp) / f"tabs{tabs}{'n' if niced else ''}", tabs, args.epochs, niced)
                where = "browsers at low priority" if niced else "browsers at normal priority"
                rows.append((f"app, {tabs} tab{'s' if tabs > 1 else ''} watching ({where})", seconds, cpu))
    print(f"machine: {machine()}\n")
    print(f"default comparison ({args.epochs} epochs), wall time as stored in the run history;"
          " CPU seconds from Run to Done (the training child includes its start-up)\n")
    print("| where | wall time | vs CLI | CPU: training | CPU: server | CPU: browsers |\n|---|---|---|---|---|---|")
    for name, seconds, cpu in rows:
        cells = [f"{cpu[k]:.1f} s" for k in ("training", "server", "browsers")] if cpu else ["", "", ""]
        print(f"| {name} | {seconds:.1f} s | {seconds / cli:.2f}x | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
