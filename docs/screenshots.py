"""Remake the README's screenshots (docs/screenshots/*.png) from the app.

    python docs/screenshots.py            # ~2 minutes on 2 CPU cores: a default run and a default sweep

Serves the app with an empty run history (a temporary FACTO_HOME), then in headless Chromium:
the main page after the default comparison, the Sweep page after the default sweep, Fit my GPU
and How it works with their defaults. Needs Debian's chromium at /usr/bin/chromium and playwright.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from classroom import ARGS, CHROMIUM, IDLE, free_port, serve  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
CHART = "[data-testid='stPlotlyChart'] .main-svg"
ERROR = "[data-testid='stException']"
LONG = 600_000  # ms: a run or a sweep on a slow machine


def settle(page) -> None:
    """Wait until the page is drawn: script idle, its charts in, the last redraw done."""
    page.wait_for_selector(IDLE, timeout=LONG)
    page.wait_for_selector(f"{CHART}, {ERROR}", timeout=LONG)
    if page.locator(ERROR).count():
        raise SystemExit(f"{page.url} shows an exception:\n{page.locator(ERROR).first.inner_text()}")
    page.wait_for_timeout(1500)
    page.wait_for_selector(IDLE, timeout=LONG)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python docs/screenshots.py", description=__doc__.split("\n\n")[0]).parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        server = serve(Path(home), port)
        url = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                shots = [("", "main", 1100, "Done: Facto stored"), ("/sweep", "sweep", 1450, "Sweep done"),
                         ("/fit-my-gpu", "plan", 1100, None), ("/how-it-works", "how", 1100, None)]
                for path, name, height, finished in shots:
                    page = browser.new_page(viewport={"width": 1500, "height": height})
                    page.goto(url + path)
                    page.wait_for_selector(IDLE, timeout=LONG)
                    if finished:
                        page.get_by_role("button", name="Run", exact=True).click()
                        expect(page.get_by_text(finished)).to_be_visible(timeout=LONG)
                    settle(page)
                    page.screenshot(path=str(OUT / f"{name}.png"))
                    print(f"wrote {OUT / f'{name}.png'}")
                    page.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
