"""Mixed precision: bf16 inference of the student (fast and plain paths, the script, val.precision),
the teacher's validation in bf16, ``train.amp`` bf16 / fp16 (autocast on every network, losses in
float32, the fp16 GradScaler saved and restored on resume) and ``train.channels_last``."""
import copy
import math
import os
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from basicsr.models import build_model
from conftest import DATASETS, ROOT
from test_sage_model import batch, make_opt, params

from fusion.archs.sage_student_deploy import mkldnn_fused_available
from fusion.inferencer import FusionInferencer
from fusion.utils.img_util import list_pairs, read_pair
from fusion.utils.precision_util import cpu_has_bf16_units, parse_amp, parse_precision, to_float


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double().clamp(0, 1) - b.double().clamp(0, 1)) ** 2).mean())
    return float('inf') if mse == 0 else 10 * np.log10(1.0 / mse)


def sample_pairs(crop=None):
    """Every bundled M3FD pair and three MFNet pairs as (name, vis_y, ir) tensors; with ``crop``
    (h, w), their central crops of that size."""
    out = []
    for folder, count in (('M3FD', None), ('MFNet', 3)):
        for pair in list_pairs(osp.join(DATASETS, folder, 'ir'), osp.join(DATASETS, folder, 'vi'))[:count]:
            ir, ycrcb, _ = read_pair(pair['ir_path'], pair['vis_path'])
            vis = ycrcb[..., 0]
            if crop:
                y0, x0 = (ir.shape[0] - crop[0]) // 2, (ir.shape[1] - crop[1]) // 2
                vis, ir = (a[y0:y0 + crop[0], x0:x0 + crop[1]] for a in (vis, ir))
            out.append((f'{folder}/{pair["name"]}', torch.from_numpy(np.ascontiguousarray(vis)),
                        torch.from_numpy(np.ascontiguousarray(ir))))
    return out


# ---------------------------------------------------------------------------------------------- options
def test_precision_option_parsing():
    assert parse_amp(None) == 'none' and parse_amp(False) == 'none' and parse_amp('bf16') == 'bf16'
    assert parse_precision(None) == 'fp32' and parse_precision('bf16') == 'bf16'
    with pytest.raises(ValueError, match='train.amp must be one of'):
        parse_amp('float16')
    with pytest.raises(ValueError, match='val.precision must be one of'):
        parse_precision('int8', 'val.precision')
    t = torch.ones(2)
    assert to_float(t) is t  # fp32 untouched (amp none stays bit-identical)
    out = to_float((t.bfloat16(), [t.half()], torch.ones(2, dtype=torch.long)))
    assert out[0].dtype == torch.float32 and out[1][0].dtype == torch.float32 and out[2].dtype == torch.long


# ---------------------------------------------------------------------------------------------- inference
@pytest.mark.slow  # ~1 min on a busy 2-core CPU: 768x1024 and 480x640 images, three paths
def test_bf16_student_within_45_db_of_fp32_on_the_samples(student):
    # without bf16 units (AVX2 only) torch's bf16 convolutions are emulated, over 10 min for the
    # whole images: their central 128 x 192 px there (about 40 s)
    crop = None if cpu_has_bf16_units() else (128, 192)
    fp32 = FusionInferencer(student, 'cpu')
    fast_bf16 = FusionInferencer(student, 'cpu', precision='bf16')
    plain_bf16 = FusionInferencer(student, 'cpu', fast=False, precision='bf16')
    assert fast_bf16.net.module1[0].weight.dtype == torch.bfloat16
    assert fast_bf16.net.module1[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, vis, ir in sample_pairs(crop):
        ref = fp32([(vis, ir)])[0]
        for label, runner in (('fast', fast_bf16), ('plain', plain_bf16)):
            out = runner([(vis, ir)])[0]
            assert out.dtype == torch.float32 and out.shape == ref.shape
            value = psnr(out, ref)
            print(f'{name} {label} bf16: {value:.1f} dB from fp32')
            assert 45.0 <= value < float('inf'), (name, label, value)


def test_bf16_fast_path_uses_the_fused_bf16_kernels_where_the_cpu_has_them(student):
    runner = FusionInferencer(student, 'cpu', precision='bf16')
    x = torch.rand(1, 2, 16, 16, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = runner.net._fused_ok(x)
    assert fused == mkldnn_fused_available(torch.bfloat16)
    if cpu_has_bf16_units():
        assert fused  # AVX512-BF16 / AMX: oneDNN's bf16 kernels must pass their check


def test_bf16_tiling_and_unsupported_precisions(student):
    vis, ir = torch.rand(1, 1, 100, 140), torch.rand(1, 1, 100, 140)
    whole = FusionInferencer(student, 'cpu', precision='bf16').fuse(vis, ir)
    tiled = FusionInferencer(student, 'cpu', precision='bf16', tile_size=64, tile_overlap=24).fuse(vis, ir)
    assert tiled.dtype == torch.float32 and psnr(tiled, whole) > 45
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        FusionInferencer(student, 'cpu', precision='fp16')
    with pytest.raises(ValueError, match='precision must be one of'):
        FusionInferencer(student, 'cpu', precision='float16')


@pytest.mark.slow
def test_inference_script_precision(tmp_path):
    ir_dir, vis_dir = tmp_path / 'ir', tmp_path / 'vi'  # one 480x640 MFNet pair keeps it short
    for folder, src in ((ir_dir, 'ir'), (vis_dir, 'vi')):
        folder.mkdir()
        shutil.copy(osp.join(DATASETS, 'MFNet', src, '00104D.png'), folder / '00104D.png')
    ir_dir, vis_dir = str(ir_dir), str(vis_dir)
    outs = {}
    for precision in ('fp32', 'bf16'):
        out = tmp_path / precision
        result = subprocess.run([sys.executable, 'scripts/inference.py', '--ir', ir_dir, '--vis', vis_dir,
                                 '--output', str(out), '--device', 'cpu', '--precision', precision],
                                cwd=ROOT, capture_output=True, text=True, timeout=600,
                                env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert result.returncode == 0, result.stderr[-2000:]
        outs[precision] = out
    assert [p.name for p in outs['fp32'].iterdir()] == ['00104D.png']
    for path in sorted(outs['fp32'].iterdir()):
        a = cv2.imread(str(path)).astype(np.float64)
        b = cv2.imread(str(outs['bf16'] / path.name)).astype(np.float64)
        assert 10 * np.log10(255.0 ** 2 / max(np.mean((a - b) ** 2), 1e-12)) >= 45.0, path.name
    result = subprocess.run([sys.executable, 'scripts/inference.py', '--ir', ir_dir, '--vis', vis_dir,
                             '--output', str(tmp_path / 'fp16'), '--device', 'cpu', '--precision', 'fp16'],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and result.stderr.startswith('error: ') and 'fp16 needs a CUDA device' in \
        result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'fp16').exists()


# ---------------------------------------------------------------------------------------------- validation
def test_val_precision_for_the_student_and_the_teacher(tmp_path):
    opt = make_opt(tmp_path, seg=False)
    model = build_model(opt)
    data = batch(b=1, h=40, w=48)
    model._val_net = 'student'
    ref_s = model.fuse_batch(data)
    model._val_net = 'teacher'
    ref_t = model.fuse_batch(data)
    model.opt['val']['precision'] = 'bf16'
    out_t = model.fuse_batch(data)
    model._val_net = 'student'
    out_s = model.fuse_batch(data)
    for ref, out in ((ref_s, out_s), (ref_t, out_t)):
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert 35.0 < psnr(out, ref) < float('inf')  # random tiny networks: looser than the trained student
    model.opt['val']['precision'] = 'fp16'
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        model.fuse_batch(data)


# ---------------------------------------------------------------------------------------------- training
def _input_dtypes(model) -> dict:
    """Records the dtype each network's first convolution sees."""
    seen = {}
    nets = {'t': model.net_t, 'g': model.net_g, 'seg': model.net_seg,
            'sam': model.cri_contrastive.encoder}
    for name, net in nets.items():
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, inp, out, name=name: seen.setdefault(name, out.dtype) and None)
    return seen


def test_amp_bf16_autocasts_every_network_and_keeps_losses_in_float32(tmp_path):
    model = build_model(make_opt(tmp_path, total_iter=4, pretrain=1, amp='bf16',
                                 distill_pattern=['student', 'teacher']))
    seen = _input_dtypes(model)
    model.feed_data(batch())
    before_t, before_g = params(model.net_t), params(model.net_g)
    for it in (1, 2, 3):  # pretrain, student, teacher
        model.optimize_parameters(it)
        for key, value in model._last_log.items():  # the loss terms as computed (tensors)
            assert value.dtype == torch.float32 and torch.isfinite(value), key
    assert seen == {'t': torch.bfloat16, 'g': torch.bfloat16, 'seg': torch.bfloat16, 'sam': torch.bfloat16}
    log = model.get_current_log()
    assert log['l_g_total'] > 0 and log['l_t_fb_cs_vis'] > 0 and log['l_t_seg'] > 0
    # parameters and optimizer state stay float32 (autocast casts per op)
    assert all(p.dtype == torch.float32 for p in model.net_t.parameters())
    assert any(not torch.equal(before_t[k], v) for k, v in model.net_t.state_dict().items())
    assert any(not torch.equal(before_g[k], v) for k, v in model.net_g.state_dict().items())
    assert model.scalers == {}  # bf16 needs no loss scaling


def test_amp_bf16_losses_close_to_fp32(tmp_path):
    """Same weights, same batch: the first losses of a bf16 run agree with fp32's to ~1%."""
    logs = {}
    for amp in ('none', 'bf16'):
        torch.manual_seed(0)
        model = build_model(make_opt(tmp_path / amp, total_iter=4, pretrain=0, seg=False, amp=amp))
        model.feed_data(batch())
        model.optimize_parameters(1)  # student step
        logs[amp] = model.get_current_log()
    for key in ('l_g_int_vis', 'l_g_grad_src', 'l_g_feature', 'l_g_total'):
        assert logs['bf16'][key] == pytest.approx(logs['none'][key], rel=0.03), key


def test_channels_last_training(tmp_path):
    model = build_model(make_opt(tmp_path, total_iter=4, pretrain=1, amp='bf16', channels_last=True))
    for net in (model.net_t, model.net_g, model.net_seg):
        weights = [p for p in net.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    model.feed_data(batch())
    assert model.vis_patches.is_contiguous(memory_format=torch.channels_last)
    for it in (1, 2, 3):
        model.optimize_parameters(it)
    assert all(np.isfinite(v) for v in model.log_dict.values())


def _train(model, iters, data):
    for it in iters:
        model.feed_data(data)
        model.optimize_parameters(it)


def test_amp_fp16_grad_scaler_saved_and_resumed_exactly(tmp_path):
    """fp16 + GradScaler (CPU autocast fp16 exists in torch 2.x): a run saved after 2 iterations
    and resumed ends bitwise equal to the same run continued, scaler state included."""
    data = batch()
    for sub in ('models', 'states'):
        (tmp_path / sub).mkdir(parents=True)
    opt = make_opt(tmp_path, total_iter=4, pretrain=1, seg=False, amp='fp16')
    torch.manual_seed(0)
    first = build_model(copy.deepcopy(opt))
    assert set(first.scalers) == {'t', 'g'}
    initial = {net: params(getattr(first, net)) for net in ('net_t', 'net_g')}
    for scaler in first.scalers.values():  # torch's initial 65536 overflows the first steps of tiny nets
        scaler.load_state_dict({**scaler.state_dict(), 'scale': 256.0})
    _train(first, range(1, 3), data)
    first.scalers['g'].update(new_scale=1234.0)  # a distinctive value to find after the resume
    first.save(0, 2)
    state = torch.load(tmp_path / 'states' / '2.state', weights_only=False)
    assert state['amp']['mode'] == 'fp16' and state['amp']['scalers']['g']['scale'] == 1234.0

    opt_resumed = copy.deepcopy(opt)
    opt_resumed['path'].update(pretrain_network_t=str(tmp_path / 'models' / 'net_t_2.pth'),
                               pretrain_network_g=str(tmp_path / 'models' / 'net_g_2.pth'))
    torch.manual_seed(1)  # the weights come from the checkpoint, not from the seed
    resumed = build_model(opt_resumed)
    resumed.resume_training(state)
    assert resumed.scalers['g'].get_scale() == 1234.0
    assert resumed.scalers['t'].state_dict() == first.scalers['t'].state_dict()
    _train(first, range(3, 5), data)
    _train(resumed, range(3, 5), data)
    for net in ('net_t', 'net_g'):
        a, b = getattr(first, net).state_dict(), getattr(resumed, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), net
    assert resumed.scalers['g'].state_dict() == first.scalers['g'].state_dict()
    assert resumed.scalers['t'].state_dict() == first.scalers['t'].state_dict()
    assert resumed.steps == first.steps
    for net in ('net_t', 'net_g'):  # not every step was skipped by the scaler
        assert any(not torch.equal(initial[net][k], v) for k, v in getattr(first, net).state_dict().items()
                   if 'running' not in k and 'num_batches' not in k), net


def test_resume_into_fp16_without_saved_scalers_starts_fresh(tmp_path):
    for sub in ('models', 'states'):
        (tmp_path / sub).mkdir(parents=True)
    model = build_model(make_opt(tmp_path, total_iter=4, pretrain=1, seg=False))
    _train(model, [1], batch())
    model.save(0, 1)
    state = torch.load(tmp_path / 'states' / '1.state', weights_only=False)
    assert state['amp'] == {'mode': 'none', 'scalers': {}}
    resumed = build_model(make_opt(tmp_path, total_iter=4, pretrain=1, seg=False, amp='fp16'))
    resumed.resume_training(state)
    assert resumed.scalers['t'].get_scale() == 65536.0  # torch's initial scale


def _student_weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.net_g.named_parameters()}


def _ema_state(model) -> dict:
    return params(model.net_g_ema)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _set_scale(model, key: str, scale: float) -> None:
    scaler = model.scalers[key]
    scaler.load_state_dict({**scaler.state_dict(), 'scale': scale})


def test_amp_fp16_skipped_steps_leave_the_ema_alone_and_overflows_back_off(tmp_path):
    """fp16 on the CPU (autocast runs there), the model built directly (option validation may refuse
    fp16 on a CPU): a step the GradScaler skips moves neither the student nor its EMA; a forward
    that overflows fp16 (injected: the student's output x 1e6) lowers the scale instead of raising
    under ``nonfinite_loss: raise``, until the scale would fall below ``train.fp16_min_scale``."""
    model = build_model(make_opt(tmp_path, total_iter=8, pretrain=0, seg=False, amp='fp16', ema_decay=0.5,
                                 distill_pattern=['student']))
    assert model.nonfinite == 'raise'
    data = batch()
    model.feed_data(data)
    _set_scale(model, 'g', 256.0)
    before = _student_weights(model)
    model.optimize_parameters(1)  # an ordinary step: student and EMA move
    assert model.scalers['g'].get_scale() == 256.0 and not _same(before, _student_weights(model))
    # gradients that overflow (finite loss, a scale far too large): the scaler skips the step
    _set_scale(model, 'g', 2.0 ** 100)
    student, ema = _student_weights(model), _ema_state(model)
    model.feed_data(data)
    model.optimize_parameters(2)
    assert model.scalers['g'].get_scale() == 2.0 ** 99  # backed off
    assert _same(student, _student_weights(model))
    assert _same(ema, _ema_state(model)), 'the EMA moved although the scaler skipped the step'
    # a forward that overflows fp16: no FloatingPointError, the scaler backs off, nothing moves
    handle = model.net_g.register_forward_hook(lambda m, inp, out: (out[0] * 1e6, *out[1:]))
    _set_scale(model, 'g', 256.0)
    model.feed_data(data)
    model.optimize_parameters(3)
    assert not math.isfinite(model._last_log['l_g_total'])
    assert model.scalers['g'].get_scale() == 128.0
    assert _same(student, _student_weights(model)) and _same(ema, _ema_state(model))
    # the overflow repeats with no range left (the scale would fall below fp16_min_scale 1): raise
    _set_scale(model, 'g', 1.0)
    model.feed_data(data)
    with pytest.raises(FloatingPointError, match='loss scaling cannot fix'):
        model.optimize_parameters(4)
    handle.remove()
    assert model.steps['g'] == 3


def test_a_nonfinite_fp32_or_bf16_loss_still_raises(tmp_path):
    for amp in ('none', 'bf16'):
        model = build_model(make_opt(tmp_path / amp, total_iter=4, pretrain=0, seg=False, amp=amp))
        model.net_g.register_forward_hook(lambda m, inp, out: (out[0] * float('inf'), *out[1:]))
        model.feed_data(batch())
        with pytest.raises(FloatingPointError, match='non-finite student loss'):
            model.optimize_parameters(1)
