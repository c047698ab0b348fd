"""Test session setup: 8 fake CPU devices for sharding tests, fast compilation, and a fresh data directory.

Both must happen before jax (or leanjax) is imported anywhere, so they live at module import time.

`make test` runs the suite on two pytest-xdist workers (pyproject's addopts). Each worker is its own
process that imports this file again (with `PYTEST_XDIST_WORKER` set) and gets its own data
directory: a worker builds the embedded sets it uses (a few seconds each) into a directory no other
process writes, so two builders never race on one set.
"""

import os
import shutil
import tempfile

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # xdist workers inherit the controller's environment, where this flag is already set.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    # Tests run tiny shapes, so their time is compilation: LLVM at -O0 compiles XLA's CPU programs 3-6x
    # faster (threefry initializers most of all). Buffer assignment, fusion and the numbers computed are
    # XLA's own passes, unchanged; only the machine code is slower, which no test times.
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Builders write into a temporary directory, never a cache from an earlier run, so a broken builder
# cannot hide behind it. The BPE tokenizer cache and built data sets are shared by the whole session
# (by one worker's share of it under xdist).
_worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in an xdist worker
_DATA_DIR = tempfile.mkdtemp(prefix=f"leanjax-test-data-{_worker}-" if _worker else "leanjax-test-data-")
os.environ["LEANJAX_DATA_DIR"] = _DATA_DIR

import pytest  # noqa: E402


def pytest_unconfigure(config):
    shutil.rmtree(_DATA_DIR, ignore_errors=True)  # ~15 MB per process and run


@pytest.fixture(scope="session")
def data_dir() -> str:
    return os.environ["LEANJAX_DATA_DIR"]
