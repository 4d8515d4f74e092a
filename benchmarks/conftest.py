"""pytest fixtures of the benchmarks. The helpers live in benchmarks/harness.py: bench files import
`harness` (pytest puts this directory on sys.path because of this file), none imports conftest."""
import pytest

from harness import copy_bandwidth


@pytest.fixture
def cpu_copy_gbps():
    return copy_bandwidth(256 * 2**20, "cpu")
