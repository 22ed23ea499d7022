import os
import sys

import pytest
import torch

# Tests run on CPU with little data: one thread keeps them fast on a shared 2-core machine.
torch.set_num_threads(int(os.environ.get("DETPRE_TEST_THREADS", "1")))

import detpre  # noqa: E402,F401  (registers every component)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test modules share small builders by module name (``from _catalog import ...``, ``from test_spcl
# import _tiny_cfg``): this folder and every test folder under it on the path, whichever runs.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _d in sorted(os.path.join(_HERE, d) for d in os.listdir(_HERE) if not d.startswith(("_", "."))):
    if os.path.isdir(_d) and _d not in sys.path:
        sys.path.append(_d)


@pytest.fixture
def repo_root():
    return REPO
