#!/usr/bin/env python
"""Time every fusion metric on one 640x480 triple and print JSON.

    python scripts/benchmarks/benchmark_metrics.py            # TNO_10 (480x640) + its pixel-mean fusion
    python scripts/benchmarks/benchmark_metrics.py --ir a.png --vis b.png --fused f.png --repeat 7

For each metric: our implementation (median / min wall time of --repeat runs and CPU time) and,
side by side in the same run, a direct formulation as the reference code computes it where one can
be run here (scikit-image SSIM as CDDFuse calls it, VIF with direct 2-D convolutions, Qabf with
float32 scipy convolutions, MI with a sorted contingency table as scikit-learn builds it), with
the ratio and the difference of the values. The timings recorded with the reference values
(the project's metric reference set, CDDFuse Evaluator and NumPy ports of the MATLAB code, quiet machine) are
listed too when the reference JSON is available; they come from another run, so compare them with
care. The CPU is shared: the load average at start and end is part of the output.

``conventions`` in the JSON: every metric of every metric convention (cddfuse, tang, vifb; see
docs/metrics.md) timed on one 768x576 triple (--convention-size): the bundled TNO_10 triple (grey)
for cddfuse and tang, the bundled VIFB manCar pair with ADF's fusion (colour JPEG, so the vifb
metrics run per channel) for vifb, both resized to that size.
"""
import argparse
import json
import math
import os
import os.path as osp
import platform
from typing import Callable, Dict, Optional

import numpy as np
from bench_util import ROOT, parse_size, size_str, time_wall_and_cpu  # noqa: E402  (also puts the repo on sys.path)

from fusion.metrics.conventions import CONVENTIONS, get_convention  # noqa: E402
from fusion.metrics.fusion_metrics import ALL_METRICS, DEFAULT_METRICS  # noqa: E402
from fusion.metrics.metric_util import keep_freed_memory  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, parse_checked  # noqa: E402
from fusion.utils.img_util import read_gray  # noqa: E402


DATA = osp.join(ROOT, 'tests', 'data', 'metrics')
VIFB_DATA = osp.join(ROOT, 'tests', 'data', 'toolbox_conventions', 'vifb')
# convention -> (ir, vis, fused) files timed for it
CONVENTION_TRIPLES = {
    'cddfuse': (osp.join(DATA, 'TNO_10_ir.png'), osp.join(DATA, 'TNO_10_vi.png'), osp.join(DATA, 'TNO_10_mean.png')),
    'tang': (osp.join(DATA, 'TNO_10_ir.png'), osp.join(DATA, 'TNO_10_vi.png'), osp.join(DATA, 'TNO_10_mean.png')),
    'vifb': (osp.join(VIFB_DATA, 'ir', 'manCar.jpg'), osp.join(VIFB_DATA, 'vi', 'manCar.jpg'),
             osp.join(VIFB_DATA, 'fused', 'ADF', 'manCar.jpg')),
}
RECORDED_KEYS = {  # our name -> (section of meta.timing, key)
    'en': ('cddfuse_evaluator_640x480', 'EN'), 'sd': ('cddfuse_evaluator_640x480', 'SD'),
    'sf': ('cddfuse_evaluator_640x480', 'SF'), 'ag': ('cddfuse_evaluator_640x480', 'AG'),
    'mi': ('cddfuse_evaluator_640x480', 'MI'), 'scd': ('cddfuse_evaluator_640x480', 'SCD'),
    'vif': ('cddfuse_evaluator_640x480', 'VIFF'), 'qabf': ('cddfuse_evaluator_640x480', 'Qabf'),
    'ssim': ('cddfuse_evaluator_640x480', 'SSIM'), 'psnr': ('cddfuse_evaluator_640x480', 'PSNR'),
    'cc': ('cddfuse_evaluator_640x480', 'CC'), 'nabf': ('tang_python_port_640x480', 'Nabf'),
    'mef_ssim': ('tang_python_port_640x480', 'MEF_SSIM'), 'ms_ssim': ('tang_python_port_640x480', 'MEF_MS_SSIM'),
    'fmi': ('tang_python_port_640x480', 'FMI_none'),
}


# --- direct formulations (the reference code's approach, written here for timing) -------------

def _direct_ssim(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity
    f32, a32, b32 = (x.astype(np.float32) for x in (f, a, b))
    # CDDFuse passes float32 without data_range: scikit-image 0.19.2 used 2.0 (the float range)
    return float(structural_similarity(f32, a32, data_range=2.0) + structural_similarity(f32, b32, data_range=2.0))


def _direct_mi(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    def mi(x: np.ndarray, y: np.ndarray) -> float:
        # contingency table over the distinct values, built by sorting (as scikit-learn does)
        xv, xi = np.unique(x.ravel(), return_inverse=True)
        yv, yi = np.unique(y.ravel(), return_inverse=True)
        pairs, counts = np.unique(xi * len(yv) + yi, return_counts=True)
        n = x.size
        px = np.bincount(xi) / n
        py = np.bincount(yi) / n
        pxy = counts / n
        return float(np.sum(pxy * np.log(pxy / (px[pairs // len(yv)] * py[pairs % len(yv)]))))
    return mi(f, a) + mi(f, b)


def _direct_vif(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    from scipy.signal import convolve2d

    def vif(ref: np.ndarray, dist: np.ndarray) -> float:
        num = den = 0.0
        for scale in range(1, 5):
            n = 2 ** (5 - scale) + 1
            x = np.arange(n) - (n - 1) / 2
            win = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (n / 5.0) ** 2))
            win /= win.sum()
            if scale > 1:
                ref = convolve2d(ref, win, mode='valid')[::2, ::2]
                dist = convolve2d(dist, win, mode='valid')[::2, ::2]
            mu1, mu2 = convolve2d(ref, win, mode='valid'), convolve2d(dist, win, mode='valid')
            s1 = np.maximum(convolve2d(ref * ref, win, mode='valid') - mu1 * mu1, 0)
            s2 = np.maximum(convolve2d(dist * dist, win, mode='valid') - mu2 * mu2, 0)
            s12 = convolve2d(ref * dist, win, mode='valid') - mu1 * mu2
            g = s12 / (s1 + 1e-10)
            sv = s2 - g * s12
            g[s1 < 1e-10] = 0
            sv[s1 < 1e-10] = s2[s1 < 1e-10]
            s1[s1 < 1e-10] = 0
            g[s2 < 1e-10] = 0
            sv[s2 < 1e-10] = 0
            sv[g < 0] = s2[g < 0]
            g[g < 0] = 0
            sv[sv <= 1e-10] = 1e-10
            num += np.sum(np.log10(1 + g * g * s1 / (sv + 2)))
            den += np.sum(np.log10(1 + s1 / 2))
        return float(num / den)
    return vif(a, f) + vif(b, f)


def _direct_qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    from scipy.signal import convolve2d
    sx_k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    sy_k = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)

    def edges(img: np.ndarray):
        img = img.astype(np.float32)
        sx, sy = convolve2d(img, sx_k, mode='same'), convolve2d(img, sy_k, mode='same')
        g = np.sqrt(sx * sx + sy * sy)
        ang = np.full_like(img, math.pi / 2)
        nz = sx != 0
        ang[nz] = np.arctan(sy[nz] / sx[nz])
        return g, ang

    def q(ga, aa, gf, af):
        rel = np.zeros_like(ga)
        rel[ga > gf] = gf[ga > gf] / ga[ga > gf]
        rel[ga == gf] = gf[ga == gf]
        rel[ga < gf] = ga[ga < gf] / gf[ga < gf]
        orient = 1 - np.abs(aa - af) / (math.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (rel - 0.5))) * 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))
    (ga, aa), (gb, ab), (gf, af) = edges(a), edges(b), edges(f)
    return float(np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb))


DIRECT: Dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    'ssim': _direct_ssim, 'mi': _direct_mi, 'vif': _direct_vif, 'qabf': _direct_qabf,
}
DIRECT_LABEL = {
    'ssim': 'skimage structural_similarity x2, float32, data_range=2 (the CDDFuse call)',
    'mi': 'np.unique contingency table (scikit-learn mutual_info_score approach)',
    'vif': 'direct 2-D scipy.signal.convolve2d, 5 filterings per pair and scale (CDDFuse approach)',
    'qabf': 'scipy.signal.convolve2d float32 (CDDFuse approach)',
}
HEAVY_REPEATS = 2


def _recorded(path: Optional[str]) -> Dict[str, dict]:
    if not path or not osp.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f).get('meta', {}).get('timing', {})


def time_conventions(names, size, repeat: int) -> Dict[str, dict]:
    """Each metric of each convention on its triple resized to ``size`` (H, W), arrays as the
    convention's reader gives them (resized with INTER_AREA/LINEAR, uint8 kept)."""
    import cv2
    out: Dict[str, dict] = {}
    for name in names:
        conv = get_convention(name)
        paths = CONVENTION_TRIPLES[name]
        ir, vis, fused = (cv2.resize(conv.reader(p), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                          for p in paths)
        if name == 'cddfuse':  # read_gray gives float32: keep that type after resizing
            ir, vis, fused = (np.round(x) for x in (ir, vis, fused))
        timings = {}
        for metric in conv.default_metrics:
            heavy = name == 'cddfuse' and ALL_METRICS[metric].heavy
            timings[metric] = time_wall_and_cpu(lambda: conv.compute(fused, ir, vis, [metric])[metric],
                                                min(repeat, HEAVY_REPEATS) if heavy else repeat)
        out[name] = {'size_hw': list(size), 'files': [osp.relpath(p, ROOT) for p in paths],
                     'channels': 1 if fused.ndim == 2 else fused.shape[2],
                     'total_median_s': sum(t['median_s'] for t in timings.values()), 'metrics': timings}
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    input_arg(parser, '--ir', kind='file', default=osp.join(DATA, 'TNO_10_ir.png'))
    input_arg(parser, '--vis', kind='file', default=osp.join(DATA, 'TNO_10_vi.png'))
    input_arg(parser, '--fused', kind='file', default=osp.join(DATA, 'TNO_10_mean.png'))
    number_arg(parser, '--repeat', int, min=1, default=5, help='runs per metric (heavy ones: at most 2)')
    parser.add_argument('--metrics', nargs='+', default=list(ALL_METRICS), choices=list(ALL_METRICS))
    parser.add_argument('--no-direct', action='store_true', help='skip the direct formulations (VIF takes ~2 s)')
    input_arg(parser, '--reference-json', kind='file', default=osp.join(DATA, 'reference_values.json'),
              help='reference values JSON whose meta.timing holds the recorded timings')
    parser.add_argument('--conventions', nargs='*', default=list(CONVENTIONS), choices=list(CONVENTIONS),
                        help='conventions whose metrics are timed on a --convention-size triple (default: all; '
                             'none: skip)')
    parser.add_argument('--convention-size', type=parse_size, default=(576, 768), help='H x W (default 576x768)')
    number_arg(parser, '--convention-repeat', int, min=1, default=3, help='runs per convention metric')
    parser.add_argument('--default-allocator', action='store_true',
                        help='do not call keep_freed_memory() (evaluate.py calls it), to see its effect')
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_checked(parser, argv)
    allocator_tuned = False if args.default_allocator else keep_freed_memory()

    f, a, b = (read_gray(p) for p in (args.fused, args.ir, args.vis))
    recorded = _recorded(args.reference_json)
    load_start = os.getloadavg()
    report: Dict[str, dict] = {}
    for name in args.metrics:
        spec = ALL_METRICS[name]
        heavy = spec.heavy or name in ('ms_ssim', 'mef_ssim')
        ours = time_wall_and_cpu(lambda: spec(f, a, b), min(args.repeat, HEAVY_REPEATS) if heavy else args.repeat)
        entry = {'ours': ours}
        if name in DIRECT and not args.no_direct:
            reps = 1 if name == 'vif' else args.repeat
            direct = time_wall_and_cpu(lambda: DIRECT[name](f, a, b), reps)
            entry['direct'] = dict(direct, what=DIRECT_LABEL[name])
            entry['direct_over_ours'] = direct['median_s'] / ours['median_s']
            entry['value_rel_diff'] = abs(direct['value'] - ours['value']) / max(abs(direct['value']), 1e-300)
        if name in RECORDED_KEYS:
            section, key = RECORDED_KEYS[name]
            rec = recorded.get(section, {}).get(key)
            if rec:
                entry['recorded_reference_median_s'] = rec['median_s']
                entry['recorded_source'] = section
                entry['recorded_over_ours'] = rec['median_s'] / ours['median_s']
        report[name] = entry
    suite = [m for m in DEFAULT_METRICS if m in report]
    light = [m for m in suite if not ALL_METRICS[m].heavy]
    out = {
        'image': {'ir': osp.relpath(args.ir, ROOT), 'vis': osp.relpath(args.vis, ROOT),
                  'fused': osp.relpath(args.fused, ROOT), 'shape_hw': list(f.shape)},
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'python': platform.python_version(),
                    'numpy': np.__version__, 'keep_freed_memory': allocator_tuned,
                    'load_average_start': load_start, 'load_average_end': os.getloadavg()},
        'suite_median_s': sum(report[m]['ours']['median_s'] for m in suite),
        'suite_without_heavy_median_s': sum(report[m]['ours']['median_s'] for m in light),
        'heavy_metrics': [m for m in suite if ALL_METRICS[m].heavy],
        'metrics': report,
    }
    if args.conventions:
        out['conventions'] = time_conventions(args.conventions, args.convention_size, args.convention_repeat)
        out['conventions_size'] = size_str(args.convention_size)
        out['machine']['load_average_end'] = os.getloadavg()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == '__main__':
    run_cli(main)
