"""Registration of infrared/visible pairs (fusion/registration, scripts/register_pairs.py): known
synthetic transforms on real bundled pairs are recovered, resolution mismatch is handled, doubtful
pairs say so, bad input fails with one clear line, outputs never land inside inputs."""
import json
import os
import os.path as osp
import runpy
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import BENCHMARKS, DATASETS, ROOT

from fusion.registration import (RegistrationOptions, RegistrationResult, load_transform, register_arrays,
                                 register_folders)
from fusion.registration import transforms as T
from fusion.registration.blocks import (along_weight, block_shifts, corner_spread, fit_irls, fit_robust,
                                        parallax_direction)
from fusion.registration.folders import fit_once
from fusion.registration.structure import structure_maps
from fusion.utils.img_util import ImageReadError, read_ir


SCRIPT = osp.join(ROOT, 'scripts', 'register_pairs.py')
SIZE = (240, 320)  # small: the tests stay quick


def _pair(ds='TNO', name='001.png', size=SIZE):
    ir = read_ir(osp.join(DATASETS, ds, 'ir', name))
    vis = read_ir(osp.join(DATASETS, ds, 'vi', name))
    return (cv2.resize(ir, (size[1], size[0]), interpolation=cv2.INTER_AREA),
            cv2.resize(vis, (size[1], size[0]), interpolation=cv2.INTER_AREA))


def _known(size, angle=2.5, scale=1.06, shift=(9.0, -6.0)):
    h, w = size
    return T.similarity_about(((w - 1) / 2, (h - 1) / 2), scale, angle, shift)


@pytest.mark.parametrize('ds,name,size', [('TNO', '002.png', SIZE), ('MFNet', '00101D.png', SIZE),
                                          ('M3FD', '00000.png', (360, 480))])
def test_known_transform_is_recovered_within_a_pixel(ds, name, size):
    ir, vis = _pair(ds, name, size)
    tr = _known(ir.shape)
    warped = cv2.warpPerspective(ir, tr, (ir.shape[1], ir.shape[0]), flags=cv2.INTER_LINEAR)
    for refine in ('none', 'homography'):
        # recovery is the point here, not the default threshold
        opt = RegistrationOptions(min_score=5.0, refine_model=refine)
        r0, r = register_arrays(ir, vis, opt), register_arrays(warped, vis, opt)
        assert r.ok and r0.ok, (refine, r0.reason, r.reason)
        # consistency: the estimate on the warped pair equals the original estimate after undoing tr
        assert T.corner_error(r.H, r0.H @ np.linalg.inv(tr), vis.shape, r.k1, r0.k1) < 1.0, refine
    # and the transform is far from the identity, so that was no free pass
    assert T.corner_error(np.eye(3), r0.H @ np.linalg.inv(tr), vis.shape, k_ref=r0.k1) > 10


@pytest.mark.parametrize('ds,name,size', [('TNO', '002.png', SIZE), ('MFNet', '00101D.png', SIZE),
                                          ('M3FD', '00000.png', (360, 480))])
def test_small_perspective_is_recovered_by_the_block_refinement(ds, name, size):
    ir, vis = _pair(ds, name, size)
    h, w = ir.shape
    # a similarity with each corner moved by up to 1% of the size: a perspective no grid cell holds
    c = T.corners(ir.shape)
    moved = T.apply(_known(ir.shape), c) + np.array([[0.01, -0.01], [-0.01, 0.008], [0.01, 0.01],
                                                     [-0.008, -0.01]]) * np.array([w, h])
    tr = cv2.getPerspectiveTransform(c.astype(np.float32), moved.astype(np.float32)).astype(np.float64)
    warped = cv2.warpPerspective(ir, tr, (w, h), flags=cv2.INTER_LINEAR)
    errors = {}
    for refine in ('none', 'homography'):
        opt = RegistrationOptions(min_score=5.0, refine_model=refine)
        r0, r = register_arrays(ir, vis, opt), register_arrays(warped, vis, opt)
        assert r.ok and r0.ok, (refine, r0.reason, r.reason)
        errors[refine] = T.corner_error(r.H, r0.H @ np.linalg.inv(tr), vis.shape, r.k1, r0.k1)
    assert errors['homography'] < 1.0, errors
    # the grid search alone cannot express the perspective: the refinement is what recovers it
    assert errors['none'] > 2 * errors['homography'] and errors['none'] > 1.5, errors


def test_gauss_newton_refinement_stays_available():
    ir, vis = _pair('TNO', '002.png')
    tr = _known(ir.shape)
    warped = cv2.warpPerspective(ir, tr, (ir.shape[1], ir.shape[0]), flags=cv2.INTER_LINEAR)
    opt = RegistrationOptions(min_score=5.0, refine_method='gauss_newton')
    r0, r = register_arrays(ir, vis, opt), register_arrays(warped, vis, opt)
    assert r.ok and 'refine_iterations' in r.details
    assert T.corner_error(r.H, r0.H @ np.linalg.inv(tr), vis.shape, r.k1, r0.k1) < 1.0
    with pytest.raises(ValueError, match='refine-method'):
        RegistrationOptions(refine_method='sift')


def test_block_shifts_measure_a_known_subpixel_shift_across_polarity():
    """Blocks of a real visible image against its own negative moved by (2.25, -1.5) px: every
    distinct block measures that shift (the orientation field ignores polarity)."""
    _, vis = _pair('TNO', '002.png')
    moved = cv2.warpAffine(1 - vis, np.float32([[1, 0, 2.25], [0, 1, -1.5]]), (vis.shape[1], vis.shape[0]),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = np.ones(vis.shape, np.uint8)
    vfield, _, _ = structure_maps(vis, mask)
    ifield, _, _ = structure_maps(moved, mask)
    # the infrared blocks sit where the visible content is: shifted by -(2.25, -1.5)
    src, dst, q = block_shifts(vfield, ifield, mask, 48, 32, 5)
    good = q[:, 1] >= 0.02
    assert good.sum() >= 10
    shift = np.median(dst[good] - src[good], axis=0)
    assert np.allclose(shift, (-2.25, 1.5), atol=0.15), shift


def test_robust_fit_ignores_outliers_and_counts_the_rest():
    rng = np.random.default_rng(0)
    h_true = T.normalize(np.array([[1.02, 0.03, 4.0], [-0.02, 0.99, -3.0], [1e-5, -2e-5, 1.0]]))
    src = rng.uniform(0, 300, (80, 2))
    dst = T.apply(h_true, src) + rng.normal(0, 0.2, (80, 2))
    dst[:20] += rng.uniform(-15, 15, (20, 2))  # a quarter are wrong matches
    h, inliers = fit_robust(src, dst, 'homography', 1.5)
    h, k1 = fit_irls(h, src, dst, 'homography', 1.5)
    assert inliers[20:].mean() > 0.9 and inliers[:20].mean() < 0.3
    assert T.corner_error(h, h_true, (300, 300)) < 0.3 and k1 == 0
    too_few, none = fit_robust(src[:4], dst[:4], 'homography', 1.5)
    assert too_few is None


def test_global_search_keeps_distinct_runner_up_hypotheses():
    from fusion.registration import estimate as E
    ir, vis = _pair('TNO', '002.png')
    pair = E._Pair(ir, vis)
    opt = RegistrationOptions()
    coarse = E.coarse_search(pair, T.grid_scale(pair.ir_size, pair.vis_size), opt)
    cands = coarse['candidates']
    assert len(cands) == opt.coarse_candidates and np.allclose(cands[0]['H'], coarse['H'])
    assert [c['value'] for c in cands] == sorted((c['value'] for c in cands), reverse=True)
    apart = 4.0 * max(vis.shape) / opt.coarse_size  # 4 coarse pixels, in full-resolution pixels
    for i, a in enumerate(cands):
        for b in cands[i + 1:]:
            assert T.corner_error(a['H'], b['H'], vis.shape) > apart


def test_screening_recovers_from_a_wrong_coarse_winner(monkeypatch):
    # a weak pair's coarse winner can be wrong (smoke, fog): the screening at finer levels must
    # prefer the right runner-up, and without runners-up the wrong winner stays
    from fusion.registration import estimate as E
    ir, vis = _pair('TNO', '002.png')
    tr = _known(ir.shape)
    warped = cv2.warpPerspective(ir, tr, (ir.shape[1], ir.shape[0]), flags=cv2.INTER_LINEAR)
    pair = E._Pair(warped, vis)
    prior = T.grid_scale(pair.ir_size, pair.vis_size)
    right = E.coarse_search(pair, prior, RegistrationOptions(coarse_candidates=1))
    wrong = dict(right, H=T.similarity_about(((SIZE[1] - 1) / 2, (SIZE[0] - 1) / 2), 1.1, -4.0, (25.0, 14.0))
                 @ right['H'], value=right['value'] + 1, at_edge=True)
    fake = dict(wrong, candidates=[wrong, right])
    monkeypatch.setattr(E, 'coarse_search', lambda *a: fake)
    truth = register_arrays(warped, vis, RegistrationOptions(min_score=5.0)).H
    chosen, h = E.search(pair, prior, RegistrationOptions())
    assert chosen is right and T.corner_error(h, truth, vis.shape) < 3
    monkeypatch.setattr(E, 'coarse_search', lambda *a: dict(wrong))
    chosen, h = E.search(pair, prior, RegistrationOptions(coarse_candidates=1))
    assert chosen['at_edge'] and T.corner_error(h, truth, vis.shape) > 10


def test_too_few_agreeing_blocks_make_a_pair_unsure():
    ir, vis = _pair('TNO', '002.png')
    r = register_arrays(ir, vis, RegistrationOptions(min_score=5.0, min_block_inliers=10 ** 6))
    assert not r.ok and 'blocks agree' in r.reason and r.details['refine_inliers'] > 0


def test_lens_term_is_measured_and_matters():
    """The visible image re-imaged through a known barrel-free lens term (k1 = 0.05): the estimate's
    k1 grows by that much and its full transform D(H x) lands within a pixel of the composed truth,
    where a plain homography is pixels off."""
    ir, vis = _pair('M3FD', '00000.png', (360, 480))
    size, k_add = vis.shape, 0.05
    lensed = T.warp(vis, np.eye(3), size, k_add, border_mode=cv2.BORDER_REFLECT)  # content at p moves to D(p)
    opt = RegistrationOptions(min_score=5.0)
    r0, r = register_arrays(ir, vis, opt), register_arrays(ir, lensed, opt)
    plain = register_arrays(ir, lensed, RegistrationOptions(min_score=5.0, distortion='none'))
    assert r0.ok and r.ok, (r0.reason, r.reason)
    assert abs(r.k1 - r0.k1 - k_add) < 0.01, (r0.k1, r.k1)
    c = T.corners(size)

    def error(h, k1):  # where the truth, D_add(D_0(H_0 x)), puts the points h maps onto the corners
        x = T.unmap_points(h, c, size, k1)
        return float(np.linalg.norm(T.distort(T.map_points(r0.H, x, size, r0.k1), k_add, size) - c, axis=1).mean())
    errors = error(r.H, r.k1), error(plain.H, 0.0)
    assert errors[0] < 1.0 and plain.k1 == 0 and errors[1] > 2.0, errors


def test_warp_with_a_lens_term_matches_the_exact_map():
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.random((120, 160)).astype(np.float32), (0, 0), 2)
    h = T.similarity_about((80, 60), 1.04, 3.0, (4, -2))
    out = T.warp(img, h, (100, 150), 0.06)
    yy, xx = np.mgrid[0:100, 0:150].astype(np.float64)
    src = T.unmap_points(h, np.stack([xx.ravel(), yy.ravel()], 1), (100, 150), 0.06).astype(np.float32)
    exact = cv2.remap(img, src[:, 0].reshape(100, 150), src[:, 1].reshape(100, 150), cv2.INTER_LINEAR)
    assert np.abs(out - exact).max() < 1e-3
    pts = rng.uniform(0, 150, (20, 2))
    assert np.allclose(T.undistort(T.distort(pts, 0.06, (100, 150)), 0.06, (100, 150)), pts, atol=1e-4)


def test_corner_spread_separates_one_plane_from_parallax():
    """Correspondences of one homography over the frame barely move the corners when a ninth is left
    out. Far structure in a band and a few near points (8 px of parallax) in one place swing them:
    the fit's corners rest on those few points, and such a pair is not trusted."""
    rng = np.random.default_rng(0)
    size = (240, 320)
    h_true = T.normalize(np.array([[1.01, 0.02, 3.0], [-0.01, 0.99, -2.0], [2e-5, -1e-5, 1.0]]))
    grid = np.stack(np.meshgrid(np.arange(20, 300, 24.0), np.arange(20, 220, 24.0)), -1).reshape(-1, 2)
    dst = T.apply(h_true, grid) + rng.normal(0, 0.3, grid.shape)
    one = corner_spread(h_true, 0.0, grid, dst, 'homography', 1.5, size, radial=True)
    band = np.stack(np.meshgrid(np.arange(20, 300, 24.0), np.array([20, 44.0, 68])), -1).reshape(-1, 2)
    src = np.r_[band, [[130, 190.], [150, 200], [170, 190], [190, 205]]]
    dst = T.apply(h_true, src) + rng.normal(0, 0.3, src.shape)
    dst[len(band):, 1] += 8.0
    h_fit, k_fit = fit_irls(h_true, src, dst, 'homography', 1.5, radial_size=size)
    parallax = corner_spread(h_fit, k_fit, src, dst, 'homography', 1.5, size, radial=True)
    assert one < 1.0 and parallax > 5.0, (one, parallax)
    ir, vis = _pair('TNO', '002.png')
    r = register_arrays(ir, vis, RegistrationOptions(min_score=5.0, max_corner_spread=0.0))
    assert not r.ok and 'which part of the image is seen' in r.reason and r.details['refine_corner_spread_px'] > 0


def test_parallax_weighting_keeps_depth_out_of_the_fit():
    """A lens term (k1 = 0.05) and a ground plane that comes nearer towards the bottom (parallax
    along y, up to 6 px). The residuals of the isotropic fit stretch along y; weighing that
    component less keeps the fit of the rest of the scene where it was when a crop removes the
    left third of the blocks (the warped pairs of the benchmark crop like that)."""
    rng = np.random.default_rng(0)
    size = (480, 640)
    h_true = T.normalize(np.array([[1.01, 0.02, 3.0], [-0.01, 0.99, -2.0], [1e-5, -1e-5, 1.0]]))
    src = np.stack(np.meshgrid(np.arange(40, 620, 32.0), np.arange(40, 460, 32.0)), -1).reshape(-1, 2)
    dst = T.map_points(h_true, src, size, 0.05) + rng.normal(0, 0.3, src.shape)
    ground = dst[:, 1] > 240
    dst[ground, 1] += 6.0 * (dst[ground, 1] - 240) / 240
    h0, k0 = fit_irls(h_true, src, dst, 'homography', 1.5, radial_size=size)
    u, anisotropy = parallax_direction(h0, k0, src, dst, size, 1.5)
    assert abs(u[1]) > 0.99 and anisotropy > 1.5, (u, anisotropy)
    keep = src[:, 0] > 213
    moves = []
    for along in (None, (u, 0.1)):
        h, k = fit_irls(h_true, src, dst, 'homography', 1.5, radial_size=size, k1=k0, along=along)
        h_crop, k_crop = fit_irls(h_true, src[keep], dst[keep], 'homography', 1.5, radial_size=size, k1=k0,
                                  along=along)
        moves.append(T.corner_error(h_crop, h, size, k_crop, k))
    assert moves[1] < 0.3 and moves[0] > 3 * moves[1], moves
    # weight 1 is the isotropic fit; the weight follows the anisotropy smoothly
    same = fit_irls(h_true, src, dst, 'homography', 1.5, radial_size=size, along=(u, 1.0))
    assert np.allclose(same[0], h0) and same[1] == pytest.approx(k0)
    assert [along_weight(a, 0.1, (1.2, 4.0)) for a in (1.0, 1.2, 2.6, 4.0, 9.0)] == pytest.approx(
        [1.0, 1.0, 0.55, 0.1, 0.1])
    ir, vis = _pair('M3FD', '00000.png')
    r = register_arrays(ir, vis, RegistrationOptions(min_score=5.0))
    assert 0.1 <= r.details['refine_parallax_weight'] <= 1 and r.details['refine_parallax_anisotropy'] >= 1
    with pytest.raises(ValueError, match='--parallax-weight must be in'):
        RegistrationOptions(parallax_weight=0.0)
    with pytest.raises(ValueError, match='parallax_ramp'):
        RegistrationOptions(parallax_ramp=(3.0, 2.0))


def test_lower_infrared_resolution_and_other_aspect_ratio():
    ir, vis = _pair('TNO', '002.png')
    tr = T.grid_scale(ir.shape, (ir.shape[0] // 2, ir.shape[1] * 2 // 5)) @ _known(ir.shape, -2.0, 0.95, (-7, 5))
    small = (ir.shape[0] // 2, ir.shape[1] * 2 // 5)
    warped = cv2.warpPerspective(ir, tr, (small[1], small[0]), flags=cv2.INTER_AREA)
    r0, r = register_arrays(ir, vis), register_arrays(warped, vis)
    assert warped.shape != vis.shape and r.ok, r.reason
    assert T.corner_error(r.H, r0.H @ np.linalg.inv(tr), vis.shape, r.k1, r0.k1) < 1.5


def test_doubtful_pairs_are_flagged_with_a_reason():
    ir, vis = _pair('TNO', '001.png')
    _, other = _pair('M3FD', '00000.png')
    rng = np.random.default_rng(0)
    h, w = ir.shape
    rotated = cv2.warpAffine(ir, T.similarity_about(((w - 1) / 2, (h - 1) / 2), 1.0, 25.0)[:2], (w, h))
    flat = register_arrays(np.full_like(ir, 0.3), vis)
    assert not flat.ok and 'structure' in flat.reason
    for a, b in [(rng.random(ir.shape).astype(np.float32), vis), (ir, other), (rotated, vis)]:
        r = register_arrays(a, b)
        assert not r.ok and r.reason


def test_fit_once_takes_the_robust_centre():
    size = (100, 120)

    def result(ok, h, k1):
        return RegistrationResult(h, ok, 10.0, k1=k1)
    good = [result(True, _known(size, 1.0 + d, 1.0, (3, 2)), 0.03 + d / 100) for d in (-0.05, 0.0, 0.05)]
    bad = [result(True, _known(size, 4.0, 1.1, (20, 0)), 0.1), result(False, np.eye(3), 0.0)]
    h, k1 = fit_once(good + bad, size, size)
    assert abs(k1 - 0.03) < 0.001
    assert T.corner_error(h, _known(size, 1.0, 1.0, (3, 2)), size, k1, 0.03) < 0.2


def test_transform_file_shapes(tmp_path):
    good = tmp_path / 'h.json'
    good.write_text(json.dumps({'H': [[1, 0, 2], [0, 1, 3], [0, 0, 1]]}))
    h, k1 = load_transform(str(good))
    assert h[0, 2] == 2 and k1 == 0
    rows = tmp_path / 'h.txt'
    rows.write_text('1 0 2\n0 1 3\n0 0 1\n')
    assert load_transform(str(rows))[0][1, 2] == 3
    lens = tmp_path / 'lens.json'
    lens.write_text(json.dumps({'fit_once': {'H': [[1, 0, 2], [0, 1, 3], [0, 0, 1]], 'k1': 0.04}}))
    assert load_transform(str(lens))[1] == 0.04
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'H': [[1, 0], [0, 1]]}))
    with pytest.raises(ValueError, match='3x3'):
        load_transform(str(bad))
    bad.write_text(json.dumps({'H': [[1, 0, 2], [0, 1, 3], [0, 0, 1]], 'k1': 'strong'}))
    with pytest.raises(ValueError, match='k1'):
        load_transform(str(bad))


def _folders(tmp_path, n=2, ds='TNO'):
    ir_dir, vis_dir = tmp_path / 'ir', tmp_path / 'vi'
    ir_dir.mkdir()
    vis_dir.mkdir()
    for name in sorted(os.listdir(osp.join(DATASETS, ds, 'ir')))[:n]:
        ir, vis = _pair(ds, name)
        cv2.imwrite(str(ir_dir / name), (ir * 255).astype(np.uint8))
        cv2.imwrite(str(vis_dir / name), (vis * 255).astype(np.uint8))
    return str(ir_dir), str(vis_dir)


def test_folders_write_fusion_inputs_report_and_pictures(tmp_path):
    ir_dir, vis_dir = _folders(tmp_path)
    out = str(tmp_path / 'out')
    report = register_folders(ir_dir, vis_dir, out, progress=False)
    data = json.load(open(osp.join(out, 'registration.json')))
    assert set(data['pairs']) == {'001', '002'} and data['unsure'] == report['unsure']
    for name, entry in data['pairs'].items():
        assert np.asarray(entry['H']).shape == (3, 3) and {'k1', 'score', 'ok', 'reason'} <= set(entry)
        assert osp.isfile(osp.join(out, 'check', name + '.jpg'))
        assert entry['written'] == osp.isfile(osp.join(out, 'ir', name + '.png')) == entry['ok']
        if entry['ok']:
            assert cv2.imread(osp.join(out, 'ir', name + '.png'), -1).shape == SIZE
            assert osp.isfile(osp.join(out, 'vis', name + '.png'))
    # a saved transform is applied as it is
    tfile = tmp_path / 't.json'
    tfile.write_text(json.dumps({'H': T.to_list(_known(SIZE, 0, 1, (5, 0))), 'k1': 0.02}))
    out2 = str(tmp_path / 'out2')
    rep2 = register_folders(ir_dir, vis_dir, out2, transform=load_transform(str(tfile)), keep_unsure=True,
                            progress=False)
    assert all(np.allclose(e['H'], _known(SIZE, 0, 1, (5, 0))) and e['k1'] == 0.02 and e['written']
               for e in rep2['pairs'].values())
    assert all(not e['ok'] for e in rep2['pairs'].values())  # 5 px off the real alignment: not confident


def test_bad_input_and_outputs_inside_inputs(tmp_path):
    ir_dir, vis_dir = _folders(tmp_path)
    with pytest.raises(ValueError, match='--out'):
        register_folders(ir_dir, vis_dir, osp.join(ir_dir, 'reg'), progress=False)
    with pytest.raises(ValueError, match='--json'):
        register_folders(ir_dir, vis_dir, str(tmp_path / 'o'), json_path=osp.join(vis_dir, 'r.json'), progress=False)
    os.remove(osp.join(vis_dir, '002.png'))
    with pytest.raises(ImageReadError, match='partner'):
        register_folders(ir_dir, vis_dir, str(tmp_path / 'o'), progress=False)
    with open(osp.join(vis_dir, '002.png'), 'wb') as f:
        f.write(b'not an image')
    with pytest.raises(ImageReadError, match='002.png'):
        register_folders(ir_dir, vis_dir, str(tmp_path / 'o'), progress=False)
    with pytest.raises(ValueError, match='--model'):
        RegistrationOptions(model='spline')


@pytest.mark.slow
def test_script_end_to_end_and_one_line_errors(tmp_path):
    ir_dir, vis_dir = _folders(tmp_path)
    out = tmp_path / 'out'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, SCRIPT, '--ir', ir_dir, '--vis', vis_dir, '--out', str(out), '--fit-once'],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.load(open(out / 'registration.json'))
    assert data['fit_once']['pairs_used'] == 2 and 'registered with confidence' in proc.stdout
    bad = tmp_path / 'bad.json'
    bad.write_text('[[1, 0, 0], [0, 1, 0]]')
    proc = subprocess.run([sys.executable, SCRIPT, '--ir', ir_dir, '--vis', vis_dir, '--out', str(tmp_path / 'o2'),
                           '--transform', str(bad)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stderr.strip().startswith('error:') and '3x3' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, SCRIPT, '--ir', ir_dir, '--vis', vis_dir, '--out', str(tmp_path / 'o3'),
                           '--parallax-weight', '0'], capture_output=True, text=True, env=env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith('error: argument --parallax-weight: must be (0, 1]'), last


def test_registration_is_a_generic_data_step():
    """fusion/registration imports nothing from the networks, models, losses or datasets."""
    import ast
    import glob
    for path in glob.glob(osp.join(ROOT, 'fusion', 'registration', '*.py')):
        tree = ast.parse(open(path).read())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        bad = {m for m in mods if m.startswith('fusion') and not m.startswith(('fusion.utils', 'fusion.registration'))}
        assert not bad and 'torch' not in mods, (path, bad)


@pytest.mark.slow
def test_inference_register_fuses_the_registered_pairs(tmp_path):
    ir_dir, vis_dir = _folders(tmp_path)
    reg, fused = tmp_path / 'reg', tmp_path / 'fused'
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'scripts', 'inference.py'), '--ir', ir_dir, '--vis', vis_dir,
                           '--output', str(fused), '--register', '--register-out', str(reg), '--device', 'cpu'],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr
    report = json.load(open(reg / 'registration.json'))
    ok = sorted(n for n, e in report['pairs'].items() if e['ok'])
    assert ok and sorted(f[:-4] for f in os.listdir(fused)) == ok


@pytest.mark.slow
def test_benchmark_reports_errors_baselines_threshold_and_failure_cases(monkeypatch, capsys):
    monkeypatch.syspath_prepend(BENCHMARKS)
    monkeypatch.setattr(sys, 'argv', ['benchmark_registration.py', '--bundled-only', '--max-per-dataset', '1',
                                      '--timing-repeats', '1'])
    try:  # run_cli ends with sys.exit(0)
        runpy.run_path(osp.join(BENCHMARKS, 'benchmark_registration.py'), run_name='__main__')
    except SystemExit as exit_:
        assert not exit_.code
    report = json.loads(capsys.readouterr().out)
    assert set(report['methods']) == {'ours', 'ecc_intensity', 'ecc_gradient'} and report['cases'] == 3
    assert {'median', 'p90', 'success_rate'} <= set(report['methods']['ours']['consistency'])
    assert [f['ok'] for f in report['failure_cases']] == [False] * 4
    assert report['time_640x480']['cpu_s_median'] > 0 and report['meta']['cpu']['name']
