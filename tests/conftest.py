"""Test-session settings: keep the BLAS/OpenMP pool from spin-waiting on a busy 2-core machine, and one
thread per worker when pytest-xdist runs the suite in parallel."""
import os

# Must be set before torch loads its OpenMP runtime. With the default active wait policy an
# eigh on 2 threads took 2-14 s instead of 0.1 s while another process used the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n N`: N workers share the cores, one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """The slow tests first: with `-n N` they start at once and the short ones fill the workers' ends."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
