"""Open a page of the app in `streamlit.testing.v1.AppTest` as a served app opens it.

app.py is always the main script, so Streamlit's file-based multipage app registers app.py and
every pages/*.py (as `streamlit run app.py` does) and the navigation every page draws
(`ui.page`, links to the registered pages) resolves. A page of pages/ is then selected before the
first run, by its file, as a deep link (/sweep) selects it on a fresh server.
"""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def app_test(page: str = "app.py", timeout: float = 120) -> AppTest:
    """An AppTest that runs `page` ("app.py" or "pages/..."), not run yet."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    return at if page == "app.py" else at.switch_page(page)


def opened(page: str = "app.py", timeout: float = 120, **session) -> AppTest:
    """`page` run once with `session` in its session state (e.g. visitor="a"), no exception raised."""
    at = app_test(page, timeout)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
