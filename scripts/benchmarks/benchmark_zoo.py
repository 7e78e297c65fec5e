#!/usr/bin/env python
"""Each zoo method's fast path against its authors' eval-mode forward, side by side in one run.

For every method (default: all entries of options/zoo/) at ``--size`` (default 480x640) on the CPU:

* ``plain``: the method as its authors run it: the network in eval mode under ``torch.no_grad()``,
  NCHW float32, inside the zoo wrapper (conventions applied);
* ``fast``: :class:`fusion.inferencer.FusionInferencer` on the method (its ``fuse_for_inference()``:
  e.g. BN folded, shared layers batched; channels_last, inference_mode).

They run alternately, repeat by repeat (load from other processes hits both alike); ``speedup`` is
the ratio of the medians, ``max_abs_diff`` the largest difference of the outputs (held to <= 1e-5)
on the bundled M3FD pair resized to the size. Random weights by default (speed and equality do not
depend on them); ``--weights-dir`` loads the published ones where present. Also parameters and FLOPs.

    python scripts/benchmarks/benchmark_zoo.py --json bench_zoo.json
    python scripts/benchmarks/benchmark_zoo.py --methods seafusion ifcnn --size 480x640 --repeats 10
"""
from __future__ import annotations

import argparse
import sys

import torch
from bench_util import (emit_json, load_sample_pair, machine_meta, ms_stats, n_params, parse_size, size_str,
                        time_interleaved)

from fusion.inferencer import FusionInferencer  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg  # noqa: E402
from fusion.zoo import build_zoo_method, list_zoo_methods, load_zoo_entry, weights_path  # noqa: E402
from fusion.zoo.profiling import count_flops  # noqa: E402


TOLERANCE = 1e-5


def bench_method(name: str, size, repeats: int, warmup: int, weights_dir) -> dict:
    entry = load_zoo_entry(name)
    weights = weights_path(entry, weights_dir) if weights_dir else None
    net = build_zoo_method(name, weights, 'cpu')
    vis, ir = load_sample_pair(size)
    runner = FusionInferencer(net, 'cpu', max_batch=1)

    def plain():
        with torch.no_grad():
            return net(vis, ir)

    def fast():
        return runner.fuse(vis, ir)

    diff = float((plain() - fast()).abs().max())
    times = time_interleaved({'plain': plain, 'fast': fast}, torch.device('cpu'), warmup, repeats, name)
    plain_ms, fast_ms = ms_stats(times['plain']), ms_stats(times['fast'])
    return {'method': name, 'title': entry.title, 'weights': 'published' if weights else 'random',
            'has_fast_form': runner.fast, 'params': n_params(net), 'flops': count_flops(net, size),
            'plain': plain_ms, 'fast': fast_ms, 'speedup': round(plain_ms['median_ms'] / fast_ms['median_ms'], 3),
            'max_abs_diff': diff, 'within_tolerance': diff <= TOLERANCE}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plain_arg(parser, '--methods', nargs='*', default=None, help='zoo methods (default: all entries)')
    parser.add_argument('--size', type=parse_size, default=(480, 640), help='H x W (default 480x640)')
    number_arg(parser, '--repeats', int, min=1, default=5)
    number_arg(parser, '--warmup', int, min=0, default=1)
    input_arg(parser, '--weights-dir', kind='dir', default=None, help='load published weights from here where present')
    number_arg(parser, '--threads', int, min=1, default=None, help='torch CPU threads (default: torch\'s)')
    output_arg(parser, '--json', kind='file', default=None, help='also write the JSON report here')
    return parser


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or list_zoo_methods()[1:]
    results = [bench_method(m, args.size, args.repeats, args.warmup, args.weights_dir) for m in methods]
    for r in results:
        print(f'{r["method"]:>10}: plain {r["plain"]["median_ms"]:.1f} ms, fast {r["fast"]["median_ms"]:.1f} ms, '
              f'x{r["speedup"]:.2f}, max |diff| {r["max_abs_diff"]:.1e}', file=sys.stderr)
    emit_json({'meta': machine_meta(size=size_str(args.size), repeats=args.repeats), 'tolerance': TOLERANCE,
               'methods': results}, args.json)
    return 0 if all(r['within_tolerance'] for r in results) else 1


if __name__ == '__main__':
    run_cli(main)
