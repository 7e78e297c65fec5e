"""The student's deploy-time form (SAGEStudent.fuse_for_inference, fusion/archs/sage_student_deploy.py) and the
runner (fusion/inferencer.py) give the plain student's results."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import DATASETS
from torch import nn

from fusion.archs.bn_fold import fold_conv_bn
from fusion.archs.sage_student_arch import SAGEStudent
from fusion.archs.sage_student_deploy import FastSAGEStudent, mkldnn_fused_available
from fusion.inference import load_student
from fusion.inferencer import FusionInferencer, resolve_channels_last
from fusion.utils.img_util import read_image, read_ir, read_vis_ycrcb, tensor_to_uint8, ycrcb_to_rgb


M3FD = osp.join(DATASETS, 'M3FD')
MFNET = osp.join(DATASETS, 'MFNet')
TOL = 1e-5  # the bound for "same outputs as the plain eval-mode student"


def load_pair(folder: str, name: str) -> tuple:
    vis = read_vis_ycrcb(osp.join(folder, 'vi', f'{name}.png'))[0]
    ir = read_ir(osp.join(folder, 'ir', f'{name}.png'))
    return vis, ir


@pytest.fixture(scope='module')
def crops() -> list:
    """Real pairs as 1 x 1 x h x w tensors: a multiple-of-4 crop, an odd-size crop, a MFNet crop."""
    vis, ir = load_pair(M3FD, '00000')
    vis2, ir2 = load_pair(MFNET, '00701N')

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))[None, None]

    return [(t(vis[300:396, 400:528, 0]), t(ir[300:396, 400:528])),
            (t(vis[101:202, 13:144, 0]), t(ir[101:202, 13:144])),
            (t(vis2[200:297, 300:427, 0]), t(ir2[200:297, 300:427]))]


def plain_output(student: nn.Module, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return student(vis, ir)[0]


@pytest.fixture(scope='module')
def plain_refs(student, crops) -> list:
    return [plain_output(student, vis, ir) for vis, ir in crops]


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('use_mkldnn', [False, True])
def test_fast_student_equals_plain(student, crops, plain_refs, channels_last, use_mkldnn):
    fast = student.fuse_for_inference()
    fast.use_mkldnn = use_mkldnn
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for (vis, ir), ref in zip(crops, plain_refs):
        with torch.inference_mode():
            got = fast(vis, ir)
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() < TOL


def test_fused_kernels_are_used_on_this_cpu():
    # the speed-up on CPU comes from oneDNN's fused conv kernels: they must pass their self-check
    assert mkldnn_fused_available() == torch.backends.mkldnn.is_available()


def test_fast_student_structure(student):
    fast = student.fuse_for_inference()
    assert isinstance(fast, FastSAGEStudent)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert [len(getattr(fast, f'module{i}')) for i in range(1, 6)] == [3] * 5
    assert fast.adjust_channels4_up.bias is None and fast.adjust_channels4_skip.bias is not None
    # BN parameters are gone (17 BN layers x 64), everything else is kept
    n_plain = sum(p.numel() for p in student.parameters())
    assert sum(p.numel() for p in fast.parameters()) == n_plain - 17 * 64


def test_fold_conv_bn_uses_running_statistics():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.rand(2, 3, 11, 13)
    ref = bn.eval()(conv(x))
    w, b = fold_conv_bn(conv, bn)
    assert (torch.nn.functional.conv2d(x, w, b, padding=1) - ref).abs().max().item() < 1e-5


def test_fuse_for_inference_leaves_a_training_student_alone(student):
    train_student = copy.deepcopy(student).train()
    before = {k: v.clone() for k, v in train_student.state_dict().items()}
    vis, ir = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    fast = train_student.fuse_for_inference()
    assert train_student.training  # not switched to eval behind the caller's back
    assert all(torch.equal(before[k], v) for k, v in train_student.state_dict().items())
    with torch.inference_mode():
        assert (fast(vis, ir) - plain_output(student, vis, ir)).abs().max().item() < TOL
    with pytest.raises(ValueError, match='eval-mode'):
        FastSAGEStudent(train_student)


def test_inferencer_batches_equal_sizes_and_keeps_order(student, crops):
    (a_vis, a_ir), (b_vis, b_ir), _ = crops
    pairs = [(a_vis, a_ir), (b_vis[0], b_ir[0]), (a_vis.flip(-1), a_ir.flip(-1)), (a_vis[0, 0].numpy(), a_ir[0, 0]),
             (b_vis.flip(-2), b_ir.flip(-2))]
    inferencer = FusionInferencer(student, max_batch=2)
    calls = []
    forward = inferencer.net.forward

    def counting_forward(vis, ir, *args, **kwargs):
        calls.append(vis.shape[0])
        return forward(vis, ir, *args, **kwargs)

    inferencer.net.forward = counting_forward
    outputs = inferencer(pairs)
    # three pairs of size A -> batches of 2 + 1; two of size B -> one batch of 2
    assert sorted(calls) == [1, 2, 2]
    assert len(outputs) == len(pairs)
    for (vis, ir), out in zip(pairs, outputs):
        vis_t = torch.as_tensor(vis).reshape(1, 1, *vis.shape[-2:])
        ir_t = torch.as_tensor(ir).reshape(1, 1, *ir.shape[-2:])
        assert out.shape == (1,) + tuple(vis_t.shape[-2:]) and out.device.type == 'cpu'
        assert (out - plain_output(student, vis_t, ir_t)[0]).abs().max().item() < TOL


def test_inferencer_plain_mode_is_the_plain_student(student, crops):
    vis, ir = crops[1]
    inferencer = FusionInferencer(student, fast=False)
    assert isinstance(inferencer.net, SAGEStudent) and not inferencer.net.training
    assert inferencer.channels_last is False
    (out,) = inferencer([(vis, ir)])
    assert torch.equal(out, plain_output(student, vis, ir)[0])


def test_inferencer_rejects_bad_inputs(student):
    inferencer = FusionInferencer(student)
    with pytest.raises(ValueError, match='pair 1.*equal in size'):
        inferencer([(torch.rand(8, 8), torch.rand(8, 8)), (torch.rand(8, 8), torch.rand(8, 10))])
    with pytest.raises(ValueError, match='pair 0 ir.*single-channel'):
        inferencer([(torch.rand(8, 8), torch.rand(3, 8, 8))])
    with pytest.raises(ValueError, match='float'):
        inferencer([(torch.zeros(8, 8, dtype=torch.uint8), torch.rand(8, 8))])
    with pytest.raises(ValueError, match='max_batch'):
        FusionInferencer(student, max_batch=0)
    with pytest.raises(ValueError, match='channels_last'):
        FusionInferencer(student, channels_last='yes')


def test_channels_last_auto_follows_the_device():
    assert resolve_channels_last('auto', torch.device('cpu')) == torch.backends.mkldnn.is_available()
    assert resolve_channels_last('auto', torch.device('cuda')) is False  # measured: NCHW faster on an H100
    assert resolve_channels_last(True, torch.device('cuda')) is True


def test_load_student_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no_such.pth'):
        load_student(str(tmp_path / 'no_such.pth'))
    bad = tmp_path / 'bad.pth'
    torch.save({'module1.0.weight': torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match='bad.pth.*not a SAGE student'):
        load_student(str(bad))
    wrapped = tmp_path / 'wrapped.pth'
    torch.save({'params': SAGEStudent().state_dict()}, wrapped)
    assert isinstance(load_student(str(wrapped)), SAGEStudent)


def test_official_output_reproduced(student):
    """Full M3FD image through the fast path + the official colour conversion vs the released result."""
    vis, ir = load_pair(M3FD, '00000')
    (fused_y,) = FusionInferencer(student)([(vis[..., 0], ir)])
    cr = torch.from_numpy(np.ascontiguousarray(vis[..., 1]))[None, None]
    cb = torch.from_numpy(np.ascontiguousarray(vis[..., 2]))[None, None]
    ours = tensor_to_uint8(ycrcb_to_rgb(fused_y[None], cr, cb)[0]).astype(np.float64)
    expected = read_image(osp.join(M3FD, 'expected_official', '00000.png'))[..., ::-1].astype(np.float64)
    mse = np.mean((ours - expected) ** 2)
    psnr = 10 * np.log10(255.0 ** 2 / mse) if mse > 0 else float('inf')
    assert psnr >= 45.0, psnr
