import os

import pytest
import torch

# Tests run on CPU with little data: one thread keeps them fast on a shared 2-core machine.
torch.set_num_threads(int(os.environ.get("DETPRE_TEST_THREADS", "1")))

import detpre  # noqa: E402,F401  (registers every component)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO
