"""Metric conventions (fusion.metrics.conventions, tang_metrics, vifb_metrics, matlab_util): the
toolboxes' own values on bundled images (tests/data/toolbox_conventions), the MATLAB semantics they
rest on, the registry entries, and scripts/evaluate.py / scripts/verify_conventions.py."""
import csv
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY
from scipy.signal import convolve2d, correlate2d

from fusion.metrics import matlab_util as mu
from fusion.metrics import tang_metrics, vifb_metrics
from fusion.metrics.convention_check import check_convention, read_reference_values, within_target
from fusion.metrics.conventions import CONVENTIONS, get_convention
from fusion.metrics.evaluation import evaluate_folders
from fusion.metrics.fusion_metrics import DEFAULT_METRICS, compute_all_metrics
from fusion.utils.img_util import read_gray


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.join(ROOT, 'tests', 'data', 'toolbox_conventions')
TNO = osp.join(DATA, 'tno')
VIFB = osp.join(DATA, 'vifb')


def _script(name):
    spec = importlib.util.spec_from_file_location(name.replace('/', '_'), osp.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# the toolboxes' own values
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, root, csv_name', [('tang', TNO, 'tang_toolbox_values.csv'),
                                                  ('vifb', VIFB, 'vifb_toolbox_values.csv')])
def test_bundled_toolbox_values_are_reproduced(name, root, csv_name):
    """Every published value of the bundled images within 1e-3 relative, through the evaluation path."""
    report = check_convention(root, osp.join(root, csv_name), name, progress=False)
    conv = get_convention(name)
    assert list(report['metrics']) == conv.default_metrics  # all 11 / 13 metrics, in the toolbox's order
    assert report['outside_target'] == [] and report['images_left_out'] == []
    for metric, row in report['metrics'].items():
        assert row['n'] == 2 and row['fraction'] == 1.0, (metric, row)


def test_tang_values_are_exact_where_the_toolbox_is_deterministic():
    """Tang's values carry full double precision: our numbers agree to ~1e-9 (VIF: 1e-8), which only
    the quirks give (plain SD is 4x larger, Qabf in another summation order is off by ~1e-3)."""
    ref = read_reference_values(osp.join(TNO, 'tang_toolbox_values.csv'))
    conv = get_convention('tang')
    read = conv.reader
    ir, vis = read(osp.join(TNO, 'ir', '05.png')), read(osp.join(TNO, 'vi', '05.png'))
    for method in ('DenseFuse', 'SeAFusion'):
        fused = read(osp.join(TNO, 'fused', method, '05.png'))
        ours = conv.compute(fused, ir, vis)
        for metric, value in ref[('05', method)].items():
            assert ours[metric] == pytest.approx(value, rel=1e-8 if metric == 'VIF' else 1e-9), (method, metric)
    assert fused.ndim == 3  # SeAFusion's file is RGB: rgb2gray happened inside the convention
    plain_sd = float(np.std(mu.rgb2gray(fused).astype(np.float64)))
    assert plain_sd > 2 * ref[('05', 'SeAFusion')]['SD']


def test_within_target():
    assert within_target(1.0005, 1.0) and not within_target(1.002, 1.0)
    assert within_target(5e-7, 0.0) and not within_target(1e-5, 0.0)
    assert not within_target(float('nan'), 1.0)


# ----------------------------------------------------------------------------------------------
# MATLAB semantics
# ----------------------------------------------------------------------------------------------

def test_uint8_arithmetic_and_rgb2gray():
    # round half away from zero, saturate
    assert mu.to_uint8_saturate(np.array([-3.0, 2.5, 3.5, 254.6, 300.0])).tolist() == [0, 3, 4, 255, 255]
    rgb = np.array([[[10, 200, 30], [255, 255, 255]]], dtype=np.uint8)
    w = mu.RGB2GRAY_WEIGHTS
    assert mu.rgb2gray(rgb).tolist() == [[round(w[0] * 10 + w[1] * 200 + w[2] * 30), 255]]
    assert mu.rgb2gray(rgb).dtype == np.uint8
    as_double = mu.rgb2gray(rgb.astype(np.float64))
    assert as_double[0, 0] == pytest.approx(w[0] * 10 + w[1] * 200 + w[2] * 30, rel=1e-15)  # not rounded
    assert mu.im2double(np.array([255], np.uint8))[0] == 1.0 and mu.im2double(np.array([7.0]))[0] == 7.0


def test_filters_match_matlab_definitions():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (23, 31)).astype(np.float64)
    kernel = rng.normal(size=(3, 3))
    np.testing.assert_allclose(mu.conv2_same(img, kernel), convolve2d(img, kernel, mode='same'), atol=1e-10)
    big = mu.fspecial_gaussian(11, 1.5)
    np.testing.assert_allclose(mu.filter2(big, img, 'valid'), correlate2d(img, big, mode='valid'), atol=1e-10)
    np.testing.assert_allclose(mu.filter2(kernel, img, 'same'), correlate2d(img, kernel, mode='same'), atol=1e-10)
    g = np.exp(-np.arange(-5, 6) ** 2 / 4.5)
    np.testing.assert_allclose(mu.filter2_separable(g, g, img, 'same'),
                               correlate2d(img, np.outer(g, g), mode='same'), atol=1e-9)
    sobel = np.array([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
    padded = np.pad(img, 1, mode='edge')
    np.testing.assert_allclose(mu.imfilter_replicate(img, sobel), correlate2d(padded, sobel, mode='valid'),
                               atol=1e-10)


def test_conv2_summation_order_keeps_exact_zeros_of_unit_data():
    """x/255 values whose Sobel sum is 0 in exact arithmetic: MATLAB's tap order gives exactly the
    result of accumulating column by column, which a regrouped sum need not."""
    img = mu.im2double(np.array([[3, 0, 1], [1, 0, 2], [2, 0, 0]], dtype=np.uint8))
    h3 = np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    out = mu.conv2_same(img, h3)
    p = np.pad(img, 1)
    expected = 0.0
    for j in range(3):
        for i in range(3):
            if h3[i, j]:
                expected = expected + h3[i, j] * p[2 - i + 1, 2 - j + 1]
    assert out[1, 1] == expected


def test_entropy_blkproc_freqspace():
    img = np.array([[0, 0, 255, 255]], dtype=np.uint8)
    assert mu.entropy_uint8(img) == pytest.approx(1.0)
    sums = mu.blkproc_sum(np.ones((5, 7)), 4)  # zero-padded to 8 x 8: partial blocks sum their pixels
    assert sums.tolist() == [[16, 12], [4, 3]]
    r = mu.freqspace_radius(4, 5, 1.0, 1.0)
    np.testing.assert_allclose(r[2, :], np.abs(np.array([-0.8, -0.4, 0.0, 0.4, 0.8])))  # odd: symmetric
    np.testing.assert_allclose(r[:, 2], np.abs(np.array([-1.0, -0.5, 0.0, 0.5])))  # even: -1 .. 1 - 2/n


def test_tang_quirks_on_small_arrays():
    flat = np.full((8, 8), 100, dtype=np.uint8)
    flat[0, 0] = 140  # 39.4 above the mean: its uint8 square saturates at 255
    mean = flat.mean()
    assert tang_metrics.tang_sd(flat) == pytest.approx(np.sqrt((255 + 0 * 63) / 64))
    assert mean == pytest.approx(100.625)
    a = np.array([[0, 255], [254, 10]], dtype=np.uint8)
    # joint bins of 254 and 255 merge (uint8 255 + 1 saturates): H(F,A) of F = A is below H(A)
    assert tang_metrics._joint_entropy_saturated(a, a) < mu.entropy_uint8(a)
    f = np.array([[1, 2], [3, 4]], dtype=np.float64) * 40
    assert tang_metrics.tang_gray(f).dtype == np.uint8  # validation floats are read as 8-bit files
    ir = np.arange(64, dtype=np.uint8).reshape(8, 8)
    vis = ir[::-1].copy()
    fused = ((ir.astype(int) + vis) // 2).astype(np.uint8)
    mse = tang_metrics.tang_mse(fused, ir, vis)
    assert tang_metrics.tang_psnr(fused, ir, vis) == pytest.approx(20 * np.log10(255 / np.sqrt(mse)))
    expected = np.mean((fused / 255 - ir / 255) ** 2) / 2 + np.mean((fused / 255 - vis / 255) ** 2) / 2
    assert mse == pytest.approx(expected)


def test_vifb_colour_handling():
    rng = np.random.default_rng(1)
    vis = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
    ir = np.repeat(rng.integers(0, 256, (20, 24, 1)), 3, axis=2).astype(np.uint8)
    fused = ((vis.astype(int) + ir) // 2).astype(np.uint8)
    per_channel = np.mean([vifb_metrics.vifb_variance(fused[..., k]) for k in range(3)])
    assert vifb_metrics.vifb_variance(fused) == pytest.approx(per_channel)
    # Spatial_frequency reads H x W x 3 as one H x 3W image (size() of a 3-D array)
    side_by_side = np.concatenate([fused[..., k] for k in range(3)], axis=1)
    assert vifb_metrics.vifb_spatial_frequency(fused) == pytest.approx(
        vifb_metrics.vifb_spatial_frequency(side_by_side))
    per_channel_sf = np.mean([vifb_metrics.vifb_spatial_frequency(fused[..., k]) for k in range(3)])
    assert vifb_metrics.vifb_spatial_frequency(fused) != pytest.approx(per_channel_sf)
    # Rmse: sqrt(sum of squares) / pixels
    grey = fused[..., 0]
    expected = (np.sqrt(np.sum((mu.rgb2gray(vis.astype(float)) - grey) ** 2))
                + np.sqrt(np.sum((mu.rgb2gray(ir.astype(float)) - grey) ** 2))) / 2 / grey.size
    assert vifb_metrics.vifb_rmse(grey, ir, vis) == pytest.approx(expected)
    with pytest.raises(ValueError, match='grey visible'):
        vifb_metrics.vifb_qabf(fused, ir, vis[..., 0])


# ----------------------------------------------------------------------------------------------
# registry, conventions table, command lines
# ----------------------------------------------------------------------------------------------

def test_registry_entries_work_as_validation_metrics():
    read = get_convention('tang').reader
    ir, vis = read(osp.join(TNO, 'ir', '05.png')), read(osp.join(TNO, 'vi', '05.png'))
    fused = read(osp.join(TNO, 'fused', 'DenseFuse', '05.png'))
    ref = read_reference_values(osp.join(TNO, 'tang_toolbox_values.csv'))[('05', 'DenseFuse')]
    grey = mu.rgb2gray(ir).astype(np.float32), mu.rgb2gray(vis).astype(np.float32)
    data = {'img': fused.astype(np.float32), 'img_ir': grey[0], 'img_vis': grey[1]}  # validation: 0-255 floats
    names = set()
    for conv in CONVENTIONS.values():
        for metric in conv.metrics:
            assert metric.registry_name in METRIC_REGISTRY, metric.registry_name
            names.add(metric.registry_name)
    assert len(names) == 11 + 13
    assert calculate_metric(data, {'type': 'calculate_tang_qabf'}) == pytest.approx(ref['Qabf'], rel=1e-9)
    assert calculate_metric(data, {'type': 'calculate_tang_sd'}) == pytest.approx(ref['SD'], rel=1e-12)
    assert calculate_metric(data, {'type': 'calculate_vifb_variance'}) > 0
    with pytest.raises(ValueError, match='img_ir'):
        calculate_metric({'img': data['img']}, {'type': 'calculate_vifb_qcb'})


def test_convention_names_and_default():
    assert get_convention(None).name == 'cddfuse' and get_convention('TANG').name == 'tang'
    assert get_convention('tang').resolve(['qabf', 'en']) == ['Qabf', 'EN']
    assert get_convention('cddfuse').resolve(None) == list(DEFAULT_METRICS)
    with pytest.raises(ValueError, match='unknown metric convention'):
        get_convention('matlab')
    with pytest.raises(ValueError, match='for convention vifb'):
        get_convention('vifb').resolve(['EN'])


def test_default_convention_is_the_cddfuse_path(tmp_path):
    """Without --convention the values are those of compute_all_metrics on read_gray images."""
    fused_dir = osp.join(TNO, 'fused', 'DenseFuse')
    result = evaluate_folders(osp.join(TNO, 'ir'), osp.join(TNO, 'vi'), {'dense': fused_dir},
                              metrics=['en', 'sd', 'qabf', 'psnr'], progress=False)
    assert result.convention == 'cddfuse'
    direct = compute_all_metrics(read_gray(osp.join(fused_dir, '05.png')), read_gray(osp.join(TNO, 'ir', '05.png')),
                                 read_gray(osp.join(TNO, 'vi', '05.png')), ['en', 'sd', 'qabf', 'psnr'])
    assert result.per_image['dense']['05'] == direct


def test_evaluate_script_with_convention(tmp_path, capsys):
    evaluate = _script('evaluate')
    out = tmp_path / 'eval'
    rc = evaluate.main(['--ir', f'{VIFB}/ir', '--vis', f'{VIFB}/vi', '--fused', f'ADF={VIFB}/fused/ADF',
                        '--baseline', 'max', '--convention', 'vifb', '--metrics', 'Psnr', 'Qcv', 'Ssim',
                        '--out', str(out), '--quiet', '--grid-images', '1'])
    printed = capsys.readouterr().out
    assert rc == 0 and 'convention vifb' in printed and 'Qcv↓' in printed
    result = json.loads((out / 'metrics.json').read_text())
    ref = read_reference_values(osp.join(VIFB, 'vifb_toolbox_values.csv'))[('manCar', 'ADF')]
    assert result['ADF']['convention'] == 'vifb'
    assert list(result['ADF']['per_image']['manCar']) == ['Psnr', 'Qcv', 'Ssim']
    for key, value in result['ADF']['per_image']['manCar'].items():
        assert within_target(value, ref[key]), key
    with open(out / 'metrics.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['method', 'Psnr', 'Qcv', 'Ssim', 'convention'] and rows[1][-1] == 'vifb'
    assert 'convention vifb' in (out / 'metrics.md').read_text()
    assert evaluate.main(['--ir', f'{VIFB}/ir', '--vis', f'{VIFB}/vi', '--convention', 'tang', '--baseline',
                          'mean', '--psnr-peak', '255', '--out', str(tmp_path / 'x'), '--quiet']) == 2
    assert 'cddfuse only' in capsys.readouterr().err


def test_verify_script_needs_the_peers_collection(tmp_path, capsys):
    verify = _script('verify_conventions')
    with pytest.raises(ValueError, match='--peers .*no such folder'):
        verify.main(['--peers', str(tmp_path / 'absent'), '--out', str(tmp_path / 'out')])


@pytest.mark.slow
def test_verify_script_on_the_bundled_subset(tmp_path, capsys):
    verify = _script('verify_conventions')
    assert verify.main(['--peers', DATA, '--out', str(tmp_path / 'out'), '--quiet']) == 0
    report = json.loads((tmp_path / 'out' / 'verify_conventions.json').read_text())
    assert set(report) == {'tang', 'vifb'}
    assert all(row['fraction'] == 1.0 for r in report.values() for row in r['metrics'].values())
    markdown = (tmp_path / 'out' / 'verify_conventions.md').read_text()
    assert '## tang' in markdown and '| Qcb | 2 | 2 (100.0 %)' in markdown
