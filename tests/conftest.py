"""Shared test setup: import the package from this checkout, the paths every test uses, and
fixtures that keep runs small and deterministic.

Markers: ``slow`` (subprocess and end-to-end tests); ``python -m pytest -m "not slow"`` is the
quick loop, CI runs everything.
"""
import contextlib
import os.path as osp
import sys
from typing import Iterator


ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

import fusion  # noqa: E402,F401  (basicsr fixes + registries)
from fusion.inference import DEFAULT_MODEL  # noqa: E402


DATASETS = osp.join(ROOT, 'datasets')
TEST_DATA = osp.join(ROOT, 'tests', 'data')
BENCHMARKS = osp.join(ROOT, 'scripts', 'benchmarks')
STUDENT_CKPT = DEFAULT_MODEL  # the released student, the package's one default checkpoint


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` torch threads inside the block. Tiny models on a busy shared 2-core CPU spend their
    time in OpenMP barriers with 2 threads (measured 10-100x slower than 1); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    with torch_threads(1):
        yield


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


def randomise_bn(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """BatchNorm statistics and affines far from identity (seeded), so that folding BN into the
    convolutions is really tested; returns the net in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return net.eval()
