"""Fusion metrics against the independent reference values (tests/data/metrics, a subset of the
project's metric reference set), input conversion, the basicsr registry entries and the baselines."""
import json
import math
import os.path as osp
import warnings

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY
from conftest import ROOT

from fusion.metrics import ALL_METRICS, DEFAULT_METRICS, METRICS, compute_all_metrics
from fusion.metrics import fusion_metrics as fm
from fusion.metrics.baselines import pixel_max_fusion, pixel_mean_fusion
from fusion.metrics.fmi import feature_mutual_information
from fusion.metrics.metric_util import prepare_triple, to_metric_gray
from fusion.utils.img_util import read_gray


DATA = osp.join(ROOT, 'tests', 'data', 'metrics')
TNO = osp.join(ROOT, 'datasets', 'TNO')

with open(osp.join(DATA, 'reference_values.json')) as _f:
    REFERENCE = json.load(_f)
CASES = {c['id']: c for c in REFERENCE['cases'] + REFERENCE['crop_cases']}

# our metric name -> key in the CDDFuse blocks of the reference JSON
CDD_KEYS = {'en': 'EN', 'sd': 'SD', 'sf': 'SF', 'ag': 'AG', 'mi': 'MI', 'scd': 'SCD', 'vif': 'VIFF', 'qabf': 'Qabf',
            'ssim': 'SSIM', 'psnr': 'PSNR', 'cc': 'CC'}
# METRICS.md "suggested tolerances" against the float32 Evaluator (the main reference)
F32_TOL = {'en': 1e-9, 'mi': 1e-9, 'vif': 1e-9, 'ssim': 1e-4}


def _local_png(rel: str) -> str:
    return osp.join(DATA, rel) if rel.startswith('crops/') else osp.join(DATA, osp.basename(rel))


def _load_case(case_id: str):
    """(fused, ir, vis) float64 0-255 arrays of a reference case; TNO_01_* are rebuilt from datasets/TNO."""
    if case_id.startswith('TNO_01_') and not case_id.endswith('c64'):
        ir = read_gray(osp.join(TNO, 'ir', '001.png'))
        vis = read_gray(osp.join(TNO, 'vi', '001.png'))
        fused = pixel_mean_fusion(ir, vis) if case_id.endswith('mean') else pixel_max_fusion(ir, vis)
        return fused.astype(np.float64), ir.astype(np.float64), vis.astype(np.float64)
    paths = CASES[case_id]['gray_png']
    return tuple(cv2.imread(_local_png(paths[k]), cv2.IMREAD_UNCHANGED).astype(np.float64)
                 for k in ('fused', 'ir', 'vi'))


FULL_CASES = ['SAGE_00000', 'TNO_01_mean', 'TNO_01_max', 'TNO_07_mean', 'TNO_07_max', 'TNO_10_mean', 'TNO_10_max']
CROP_CASES = ['SAGE_00000_c64', 'TNO_01_max_c64', 'TNO_07_mean_c64', 'TNO_10_max_c64']
ALL_CASES = FULL_CASES + CROP_CASES


@pytest.fixture(scope='module')
def computed():
    """Our 13 fast metrics (FMI separately) on every local reference case, computed once."""
    names = [m for m in DEFAULT_METRICS if m != 'fmi'] + ['mef_ssim']
    return {cid: compute_all_metrics(*_load_case(cid), metrics=names) for cid in ALL_CASES}


def _rel(value: float, ref: float) -> float:
    return abs(value - ref) / abs(ref) if ref != 0 else abs(value)  # Nabf is 0 when F equals a source


def test_local_reference_files_exist_and_match_json():
    for cid in ALL_CASES:
        if cid.startswith('TNO_01_') and not cid.endswith('c64'):
            continue
        for rel in CASES[cid]['gray_png'].values():
            assert osp.isfile(_local_png(rel)), rel
    # the TNO_01 pair of datasets/ is the reference's pair (sizes and values)
    f, a, b = _load_case('TNO_01_max')
    assert f.shape == tuple(CASES['TNO_01_max']['shape_hw'])


@pytest.mark.parametrize('case_id', ALL_CASES)
def test_cddfuse_metrics_match_float64_reference(computed, case_id):
    """Same numbers as the CDDFuse Evaluator fed float64 copies (rounding-level agreement)."""
    ref = CASES[case_id]['cddfuse_evaluator_float64_input']
    for name, key in CDD_KEYS.items():
        ours = computed[case_id][name]
        if ref[key] is None:  # SCD of TNO_10_max_c64: F - A is constant
            assert math.isnan(ours), name
            continue
        tol = 1e-9 if name != 'ssim' else 1e-10
        assert _rel(ours, ref[key]) < tol, (name, ours, ref[key])


@pytest.mark.parametrize('case_id', ALL_CASES)
def test_cddfuse_metrics_match_main_reference(computed, case_id):
    """Against the main reference (the unmodified float32 Evaluator) with METRICS.md's tolerances."""
    ref = CASES[case_id]['cddfuse_evaluator']
    for name, key in CDD_KEYS.items():
        if ref[key] is None:
            continue
        assert _rel(computed[case_id][name], ref[key]) < F32_TOL.get(name, 1e-6), (name, case_id)


@pytest.mark.parametrize('case_id', ALL_CASES)
def test_tang_suite_metrics_match_reference(computed, case_id):
    """Nabf (literature form on 0-255), MEF-SSIM and MEF-MS-SSIM against the validated NumPy ports and,
    where they were run, the original MATLAB code in Octave."""
    port = CASES[case_id]['tang_python_port']
    octave = CASES[case_id].get('tang_matlab_v1_seafusion_octave', {})
    ours = computed[case_id]
    assert _rel(ours['nabf'], port['Nabf_0_255']) < 1e-9
    assert _rel(ours['ms_ssim'], port['MEF_MS_SSIM']) < 1e-9
    assert _rel(ours['mef_ssim'], port['MEF_SSIM']) < 1e-9
    if 'MEF_MS_SSIM' in octave:
        assert _rel(ours['ms_ssim'], octave['MEF_MS_SSIM']) < 1e-9
        assert _rel(ours['mef_ssim'], octave['MEF_SSIM']) < 1e-9


def test_nabf_algorithm_matches_octave_run_of_original_code():
    """The Octave runs of analysis_nabf exist only as SeAFusion calls it ([0,1] data). Where no gradient
    tie is decided by float rounding, our function on the same [0,1] data gives the same number."""
    for cid in ('TNO_01_max_c64', 'TNO_10_max_c64'):
        f, a, b = _load_case(cid)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # [0,1] input on purpose
            v1 = fm.nabf(f / 255.0, a / 255.0, b / 255.0)
        assert _rel(v1, CASES[cid]['tang_matlab_v1_seafusion_octave']['Nabf']) < 1e-9
    # the 2023 revision passes the IR image as the fused one: reproduced by argument order
    f, a, b = _load_case('TNO_07_mean')
    assert _rel(fm.nabf(a, b, f), CASES['TNO_07_mean']['tang_python_port']['Nabf_v2_as_called_ir_as_fused']) < 1e-9


@pytest.mark.parametrize('case_id', CROP_CASES + ['TNO_07_mean'])
def test_fmi_matches_reference(case_id):
    f, a, b = _load_case(case_id)
    port = CASES[case_id]['tang_python_port']
    octave = CASES[case_id].get('tang_matlab_v1_seafusion_octave', {})
    features = ('none', 'dct') if case_id in CROP_CASES else ('none',)
    for feature in features:
        key = f'FMI_{feature}'
        ours = feature_mutual_information(f, a, b, feature=feature)
        assert _rel(ours, port[key]) < 1e-9, feature
        if key in octave:  # original MATLAB code run in Octave (3 crops)
            assert _rel(ours, octave[key]) < 1e-9, feature
    assert _rel(METRICS['fmi'](f, a, b), port['FMI_none']) < 1e-9


def test_documented_conversions_to_the_tang_suite(computed):
    """Where the references disagree we follow CDDFuse; these are the documented conversions."""
    case = CASES['TNO_10_mean']
    ours = computed['TNO_10_mean']
    h, w = case['shape_hw']
    v2 = case['tang_matlab_v2_octave']
    assert _rel(ours['ag'] * h * w / ((h - 1) * (w - 1)), v2['AG']) < 1e-9  # AG: /(HW) vs /((H-1)(W-1))
    for name, key in (('sd', 'SD'), ('sf', 'SF'), ('vif', 'VIF'), ('qabf', 'Qabf'), ('scd', 'SCD'), ('cc', 'CC')):
        assert _rel(ours[name], v2[key]) < 1e-9, name  # the 2023 MATLAB revision equals CDDFuse here
    mi_bits = ours['mi'] / math.log(2)  # nats -> bits; MATLAB merges grey levels 254/255 in the joint histogram
    assert 0 <= v2['MI'] / mi_bits - 1 < 1.5e-2


# ----------------------------------------------------------------------------------------------
# Behaviour on constructed inputs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def triple():
    return _load_case('SAGE_00000_c64')


def test_identical_images_give_the_ideal_scores():
    img = _load_case('TNO_07_mean_c64')[1]
    scores = compute_all_metrics(img, img, img)
    assert scores['ssim'] == pytest.approx(2.0, abs=1e-12)  # a sum of two SSIMs
    assert scores['cc'] == pytest.approx(1.0, abs=1e-12)
    assert scores['fmi'] == 1.0
    assert scores['nabf'] == 0.0
    assert scores['vif'] == pytest.approx(2.0, abs=1e-9)
    assert scores['ms_ssim'] == pytest.approx(1.0, abs=1e-6)
    assert math.isinf(scores['psnr'])
    assert math.isnan(scores['scd'])  # F - A is constant: correlation undefined
    mi_self = 2 * scores['en'] * math.log(2)  # MI(X, X) = H(X), here twice and in nats
    assert scores['mi'] == pytest.approx(mi_self, rel=1e-9)


def test_compute_all_metrics_returns_plain_floats_with_readme_names(triple):
    scores = compute_all_metrics(*triple)
    assert list(scores) == ['en', 'sd', 'sf', 'ag', 'mi', 'scd', 'vif', 'qabf', 'nabf', 'ssim', 'ms_ssim', 'psnr',
                            'cc', 'fmi']
    assert all(type(v) is float for v in scores.values())
    assert compute_all_metrics(*triple, metrics=['PSNR', 'en']) == {'psnr': scores['psnr'], 'en': scores['en']}
    with pytest.raises(ValueError, match='unknown metric'):
        compute_all_metrics(*triple, metrics=['en', 'qcb'])


def test_metric_options(triple):
    f, a, b = triple
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    assert compute_all_metrics(f, a, b, ['psnr'], {'psnr': {'peak': 255}})['psnr'] == pytest.approx(
        10 * math.log10(255 ** 2 / mse), rel=1e-12)
    conventional = compute_all_metrics(f, a, b, ['ssim'], {'ssim': {'data_range': 255}})['ssim']
    assert conventional > compute_all_metrics(f, a, b, ['ssim'])['ssim'] + 0.1  # much higher, as METRICS.md says
    assert METRICS['fmi'](f, a, b, feature='dct') != METRICS['fmi'](f, a, b)
    with pytest.raises(ValueError, match='unknown FMI feature'):
        METRICS['fmi'](f, a, b, feature='edge')


def test_input_forms_give_identical_values(triple):
    f, a, b = triple
    ref = compute_all_metrics(f, a, b, ['en', 'mi', 'qabf', 'ssim'])
    as_uint8 = [x.astype(np.uint8) for x in (f, a, b)]
    assert compute_all_metrics(*as_uint8, ['en', 'mi', 'qabf', 'ssim']) == ref
    as_float32 = [x.astype(np.float32) for x in (f, a, b)]
    assert compute_all_metrics(*as_float32, ['en', 'mi', 'qabf', 'ssim']) == ref
    as_tensors = [torch.from_numpy(x)[None, None] for x in (f, a, b)]  # 1 x 1 x H x W
    assert compute_all_metrics(*as_tensors, ['en', 'mi', 'qabf', 'ssim']) == ref
    as_uint16 = [(x.astype(np.uint16) * 257) for x in (f, a, b)]  # 8-bit values stored as 16-bit
    assert compute_all_metrics(*as_uint16, ['en', 'mi', 'qabf']) == pytest.approx(
        {k: ref[k] for k in ('en', 'mi', 'qabf')}, rel=1e-12)


def test_colour_input_matches_read_gray_of_the_same_file(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = str(tmp_path / 'colour.png')
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(to_metric_gray(rgb), read_gray(path))
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.abs(to_metric_gray(rgb) - expected).max() <= 0.5 + 1e-4  # rounded grey
    as_float = to_metric_gray(rgb.astype(np.float64))  # float colour: not rounded
    np.testing.assert_allclose(as_float, expected, atol=1e-9)
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_metric_gray(rgba), to_metric_gray(rgb))


def test_bad_inputs_raise_clear_errors(triple):
    f, a, b = triple
    with pytest.raises(ValueError, match='size mismatch: fused 64x64, infrared 63x64'):
        prepare_triple(f, a[:, :63], b)
    bad = f.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match='fused image: the image contains NaN'):
        compute_all_metrics(bad, a, b, ['en'])
    with pytest.raises(ValueError, match='boolean'):
        to_metric_gray(f > 100)
    with pytest.raises(ValueError, match='shape'):
        to_metric_gray(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match='None'):
        to_metric_gray(None)
    with pytest.warns(UserWarning, match='expect 0-255'):
        to_metric_gray(f / 255.0, 'fused image')
    with pytest.raises(ValueError, match='VIF needs images of at least 41x41'):
        METRICS['vif'](f[:40, :40], a[:40, :40], b[:40, :40])
    with pytest.raises(ValueError, match='MS-SSIM needs images of at least 44x44'):
        METRICS['ms_ssim'](f[:43], a[:43], b[:43])


# ----------------------------------------------------------------------------------------------
# basicsr registry (validation calls calculate_metric(metric_data, opt))
# ----------------------------------------------------------------------------------------------

def test_registry_names_are_ours_and_basicsr_builtins_untouched():
    for spec in ALL_METRICS.values():
        assert METRIC_REGISTRY.get(spec.registry_name).__module__ == 'fusion.metrics.fusion_metrics'
    assert METRIC_REGISTRY.get('calculate_psnr').__module__.startswith('basicsr.')
    assert METRIC_REGISTRY.get('calculate_ssim').__module__.startswith('basicsr.')
    assert len({s.registry_name for s in ALL_METRICS.values()}) == len(ALL_METRICS)


def test_calculate_metric_as_validation_calls_it(triple):
    f, a, b = triple
    data = {'img': f.astype(np.float32), 'img2': b, 'img_ir': a.astype(np.float32), 'img_vis': b.astype(np.float32)}
    direct = compute_all_metrics(f, a, b)
    for name, spec in METRICS.items():
        opt = {'type': spec.registry_name, 'better': spec.better, 'crop_border': 0}
        value = calculate_metric(data, opt)
        assert type(value) is float
        assert value == pytest.approx(direct[name], rel=1e-12, nan_ok=True), name
    assert calculate_metric(data, {'type': 'calculate_fusion_psnr', 'peak': 255}) > direct['psnr']
    with pytest.raises(ValueError, match='calculate_qabf needs the source images'):
        calculate_metric({'img': f}, {'type': 'calculate_qabf'})
    assert calculate_metric({'img': f}, {'type': 'calculate_en'}) == direct['en']  # EN needs only F


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------

def test_baselines_are_integer_mean_and_max():
    ir = np.array([[0, 255, 3]], np.float32)
    vis = np.array([[1, 254, 200]], np.float32)
    mean = pixel_mean_fusion(ir, vis)
    assert mean.dtype == np.uint8 and mean.tolist() == [[0, 254, 101]]  # floor((A + B) / 2), no overflow
    assert pixel_max_fusion(ir, vis).tolist() == [[1, 255, 200]]
    with pytest.raises(ValueError, match='size mismatch'):
        pixel_mean_fusion(ir, vis[:, :2])
