"""Each AppTest scans every installed distribution for Streamlit components on its first run (about
1 s of CPU); the installed packages don't change during a test session, so the scan runs once."""
from __future__ import annotations

import functools

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scan_components_once():
    from streamlit.components.v2 import manifest_scanner

    scan = manifest_scanner.scan_component_manifests
    cached = functools.cache(scan)
    manifest_scanner.scan_component_manifests = lambda max_workers=None: list(cached())
    yield
    manifest_scanner.scan_component_manifests = scan
