"""Shared test setup: import the package from this checkout, keep runs small and deterministic."""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

import fusion  # noqa: E402,F401  (basicsr fixes + registries)

DATASETS = osp.join(ROOT, 'datasets')
STUDENT_CKPT = osp.join(ROOT, 'experiments', 'pretrained_models', 'sage_student_official.pth')


@pytest.fixture
def repo_root() -> str:
    return ROOT


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='module')
def student():
    """The released SAGE student in eval mode on the CPU (a fresh copy per test module)."""
    from fusion.inference import load_student
    return load_student(STUDENT_CKPT)
