"""Test session setup: 8 fake CPU devices for sharding tests, and a fresh data directory.

Both must happen before jax (or leanjax) is imported anywhere, so they live at module import time.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Builders write into a temporary directory, never a cache from an earlier run, so a broken builder
# cannot hide behind it. The BPE tokenizer cache and built data sets are shared by the whole session.
os.environ["LEANJAX_DATA_DIR"] = tempfile.mkdtemp(prefix="leanjax-test-data-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> str:
    return os.environ["LEANJAX_DATA_DIR"]
