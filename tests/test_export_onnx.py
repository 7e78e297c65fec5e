"""ONNX export of the student (scripts/export_onnx.py, fusion/onnx_export.py)."""
import json
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import DATASETS, ROOT, STUDENT_CKPT

from fusion.onnx_export import export_student_onnx, rgb8_to_ycrcb8
from fusion.utils.img_util import read_ir, read_vis_ycrcb


sys.path.insert(0, osp.join(ROOT, 'scripts'))
import export_onnx  # noqa: E402


MFNET = osp.join(DATASETS, 'MFNet')


@pytest.fixture(scope='module')
def y_model(tmp_path_factory) -> str:
    """Exported once through the command line (mode y)."""
    path = str(tmp_path_factory.mktemp('onnx') / 'student_y.onnx')
    assert export_onnx.main(['--output', path, '--checkpoint', STUDENT_CKPT]) == 0
    return path


def test_export_writes_a_valid_model_with_dynamic_axes(y_model):
    onnx = pytest.importorskip('onnx')  # a dependency of the export itself
    model = onnx.load(y_model)
    onnx.checker.check_model(model)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs == {'vis_y': ['batch', 1, 'height', 'width'], 'ir': ['batch', 1, 'height', 'width']}
    ops = {n.op_type for n in model.graph.node}
    assert 'BatchNormalization' not in ops and {'Conv', 'Resize', 'Tanh'} <= ops


def test_onnxruntime_matches_pytorch(y_model, student):
    ort = pytest.importorskip('onnxruntime')  # optional extra: pip install -e .[onnx]
    vis = read_vis_ycrcb(osp.join(MFNET, 'vi', '00104D.png'))[0][..., 0]
    ir = read_ir(osp.join(MFNET, 'ir', '00104D.png'))
    # two pairs, odd size different from the export example: batch and H, W are dynamic
    v = np.stack([vis[:97, :131], vis[200:297, 300:431]])[:, None]
    i = np.stack([ir[:97, :131], ir[200:297, 300:431]])[:, None]
    session = ort.InferenceSession(y_model, providers=['CPUExecutionProvider'])
    got = session.run(None, {'vis_y': np.ascontiguousarray(v), 'ir': np.ascontiguousarray(i)})[0]
    with torch.no_grad():
        ref = student(torch.from_numpy(v), torch.from_numpy(i))[0].numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.slow
def test_rgb8_model_reproduces_the_python_pipeline(student, tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    path = str(tmp_path / 'student_rgb8.onnx')
    # the script's own check: onnxruntime vs the Python pipeline on an odd-size real crop
    assert export_onnx.main(['--output', path, '--mode', 'rgb8', '--check']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['check']['ok'] and report['check']['max_abs_diff'] <= 1
    # float rounding differences between runtimes flip at most a handful of .5 boundaries
    assert report['check']['values_differing'] <= 1e-3 * report['check']['values']


def test_opencv_ycrcb_is_reproduced_for_every_rgb_triplet():
    levels = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.broadcast_arrays(levels[:, None, None], levels[None, :, None], levels[None, None, :]), -1)
    rgb = np.ascontiguousarray(rgb.reshape(4096, 4096, 3))  # all 2^24 triplets
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    y, cr, cb = rgb8_to_ycrcb8(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    got = torch.cat([y, cr, cb], 1)[0].permute(1, 2, 0).to(torch.uint8).numpy()
    assert np.array_equal(got, expected)


def test_export_rejects_unknown_mode(student, tmp_path):
    with pytest.raises(ValueError, match='mode'):
        export_student_onnx(student, str(tmp_path / 'x.onnx'), mode='bgr')
    assert not (tmp_path / 'x.onnx').exists()


@pytest.mark.slow
def test_export_script_reports_a_missing_checkpoint(tmp_path, capsys):
    assert export_onnx.main(['--output', str(tmp_path / 'x.onnx'), '--checkpoint', str(tmp_path / 'no.pth')]) == 1
    assert 'no.pth' in capsys.readouterr().err
