"""End-to-end inference: the released student reproduces the official SAGE outputs, through
``fusion/test.py`` (YAML) and ``scripts/inference.py`` (no YAML); bad input fails clearly."""
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import DATASETS, ROOT


pytestmark = pytest.mark.slow  # subprocesses through the real entry points


M3FD = osp.join(DATASETS, 'M3FD')


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float('inf') if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _run(args, cwd=ROOT):
    return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True, timeout=600)


def _check_official(folder: str) -> None:
    for name in ('00000', '00001'):
        ours = cv2.imread(osp.join(folder, f'{name}.png'))
        official = cv2.imread(osp.join(M3FD, 'expected_official', f'{name}.png'))
        assert ours is not None and ours.shape == official.shape
        value = psnr(ours, official)
        print(f'{name}: {value:.2f} dB vs the official output')
        assert value >= 45.0


def test_test_py_reproduces_official_outputs(tmp_path):
    opt = tmp_path / 'test.yml'
    text = open(osp.join(ROOT, 'options', 'test_sage.yml')).read()
    text = text.replace('path:\n', f'path:\n  results_root: {tmp_path / "results"}\n', 1)
    opt.write_text(text)
    # run from another folder: relative paths in the options resolve against the repository
    result = _run([osp.join(ROOT, 'fusion', 'test.py'), '-opt', str(opt)], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    _check_official(str(tmp_path / 'results' / 'visualization' / 'M3FD'))
    assert any(f.name.startswith('test_') and f.name.endswith('.log') for f in (tmp_path / 'results').iterdir())


def test_inference_script_reproduces_official_outputs(tmp_path):
    out = tmp_path / 'out'
    result = _run(['scripts/inference.py', '--ir', osp.join(M3FD, 'ir'), '--vis', osp.join(M3FD, 'vi'),
                   '--output', str(out), '--device', 'cpu'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ['00000.png', '00001.png']
    _check_official(str(out))


@pytest.fixture
def odd_inputs(tmp_path):
    """Odd-sized crops: 16-bit single-channel IR TIFF, grey JPEG visible, and a colour pair."""
    ir_dir, vis_dir = tmp_path / 'ir', tmp_path / 'vi'
    ir_dir.mkdir()
    vis_dir.mkdir()
    ir = cv2.imread(osp.join(DATASETS, 'MFNet', 'ir', '00101D.png'), cv2.IMREAD_UNCHANGED)[:101, :131]
    vis = cv2.imread(osp.join(DATASETS, 'MFNet', 'vi', '00101D.png'))[:101, :131]
    cv2.imwrite(str(ir_dir / 'a.tif'), ir.astype(np.uint16) * 257)
    cv2.imwrite(str(vis_dir / 'a.jpg'), cv2.cvtColor(vis, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(ir_dir / 'b.png'), np.repeat(ir[..., None], 3, axis=2))
    cv2.imwrite(str(vis_dir / 'b.png'), vis)
    return tmp_path


def test_inference_odd_sizes_bit_depths_and_grey(odd_inputs):
    from fusion.inference import fuse_folders, load_student
    net = load_student(device='cpu')
    written = fuse_folders(str(odd_inputs / 'ir'), str(odd_inputs / 'vi'), str(odd_inputs / 'out'), net,
                           progress=False)
    assert [osp.basename(p) for p in written] == ['a.png', 'b.png']
    a = cv2.imread(written[0], cv2.IMREAD_UNCHANGED)
    b = cv2.imread(written[1], cv2.IMREAD_UNCHANGED)
    assert a.shape == (101, 131)  # grey visible -> grey result
    assert b.shape == (101, 131, 3)


def test_inference_errors_name_the_file(odd_inputs):
    bad = odd_inputs / 'vi' / 'b.png'
    cv2.imwrite(str(bad), np.zeros((50, 60, 3), np.uint8))
    result = _run(['scripts/inference.py', '--ir', str(odd_inputs / 'ir'), '--vis', str(odd_inputs / 'vi'),
                   '--output', str(odd_inputs / 'out'), '--device', 'cpu'])
    assert result.returncode == 1
    assert 'size mismatch' in result.stderr and 'b.png' in result.stderr and 'Traceback' not in result.stderr
    (odd_inputs / 'vi' / 'a.jpg').unlink()
    result = _run(['scripts/inference.py', '--ir', str(odd_inputs / 'ir'), '--vis', str(odd_inputs / 'vi'),
                   '--output', str(odd_inputs / 'out2')])
    assert result.returncode == 1 and 'a.tif has no vis partner' in result.stderr
    assert not (odd_inputs / 'out2').exists()  # nothing written when the pairing is wrong
    result = _run(['scripts/inference.py', '--ir', str(odd_inputs / 'ir'), '--vis', str(odd_inputs / 'ir'),
                   '--output', str(odd_inputs / 'out3'), '--model', str(odd_inputs / 'missing.pth')])
    assert result.returncode == 1 and 'missing.pth' in result.stderr


def test_train_and_test_fail_clearly_before_touching_experiments(tmp_path):
    """A wrong path in the options stops the run with one line naming it, before basicsr would
    archive an existing experiment folder."""
    result = _run(['fusion/train.py', '-opt', 'options/train_sage_quick_cpu.yml', '--force_yml',
                   f'datasets:train:dataroot_ir={tmp_path / "no_ir"}', f'name={tmp_path.name}_never'])
    assert result.returncode == 2
    assert 'datasets.train.dataroot_ir' in result.stderr and 'no_ir' in result.stderr
    assert 'Traceback' not in result.stderr
    assert not osp.exists(osp.join(ROOT, 'experiments', f'{tmp_path.name}_never'))
    result = _run(['fusion/test.py', '-opt', 'options/test_sage.yml', '--force_yml',
                   f'path:pretrain_network_g={tmp_path / "missing.pth"}'])
    assert result.returncode == 2 and 'missing.pth' in result.stderr and 'Traceback' not in result.stderr
