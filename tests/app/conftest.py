"""Each AppTest scans every installed distribution for Streamlit components on its first run (about
1 s of CPU); the installed packages don't change during a test session, so the scan runs once."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scan_components_once():
    from streamlit.components.v2 import manifest_scanner

    scan = manifest_scanner.scan_component_manifests
    cached = functools.cache(scan)
    manifest_scanner.scan_component_manifests = lambda max_workers=None: list(cached())
    yield
    manifest_scanner.scan_component_manifests = scan


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty FACTO_HOME (its path), no room mode, the app's modules importable from the repository
    root, and fresh server caches (the history, the registry and cached results are Streamlit caches)."""
    import streamlit as st

    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FACTO_ROOM", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path / "home"
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture()
def browser():
    """Headless Chromium (Debian's), closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield chromium
        finally:
            chromium.close()
