"""pytest fixtures of the benchmarks. The helpers live in benchmarks/harness.py (bench files import
`harness`; pytest puts this directory on sys.path because of this file)."""
import pytest

# Re-exported for bench_loader.py and bench_e2e.py, which still `from conftest import` them until
# they are converted to the harness (issue 13 item 4); new code imports them from harness.
from harness import copy_bandwidth, device_name, record, sync  # noqa: F401


@pytest.fixture
def cpu_copy_gbps():
    return copy_bandwidth(256 * 2**20, "cpu")
