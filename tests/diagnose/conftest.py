import pytest
import torch


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hwattn-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache_root, monkeypatch):
    # never read or write the user's ~/.cache/hwattn from tests
    monkeypatch.setenv("HWATTN_CACHE_DIR", str(cache_root))


@pytest.fixture(scope="session")
def cpu_ceilings(cache_root):
    """Quick CPU ceilings, measured once per test process (about 1 s)."""
    from hwattn.diagnose import _ceilings
    return _ceilings.measure_ceilings(torch.device("cpu"), quick=True)
