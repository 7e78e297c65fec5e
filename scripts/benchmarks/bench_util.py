"""What every benchmark shares: the repository on ``sys.path``, timing (CUDA events on GPU,
``perf_counter`` on CPU, alternating between the compared variants), statistics, FLOPs, the
machine description that goes into every JSON report, and writing that report.

Import it first in a benchmark script (``from bench_util import ...``): it puts the repository
root on ``sys.path`` so ``import fusion`` works from any folder.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple


ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from tqdm import tqdm  # noqa: E402


SAMPLE_PAIR = (osp.join(ROOT, 'datasets', 'M3FD', 'vi', '00000.png'),
               osp.join(ROOT, 'datasets', 'M3FD', 'ir', '00000.png'))


# ---------------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------------
def parse_size(text: str) -> Tuple[int, int]:
    """argparse type for 'HxW' sizes, e.g. 480x640."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 480x640 (H x W), got {text!r}') from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f'size {text} too small (>= 16x16)')
    return h, w


def size_str(size: Sequence[int]) -> str:
    return f'{size[0]}x{size[1]}'


def load_sample_pair(size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The bundled M3FD pair (visible Y, IR) resized to ``size`` as 1 x 1 x H x W tensors: real
    content, so equality checks between variants mean something."""
    import cv2

    from fusion.utils.img_util import read_ir, read_vis_ycrcb
    vis = read_vis_ycrcb(SAMPLE_PAIR[0])[0][..., 0]
    ir = read_ir(SAMPLE_PAIR[1])
    h, w = size
    vis = cv2.resize(vis, (w, h), interpolation=cv2.INTER_AREA)
    ir = cv2.resize(ir, (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(vis)[None, None], torch.from_numpy(ir)[None, None]


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call: CUDA events on GPU, perf_counter on CPU."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int,
                     desc: str) -> Dict[str, List[float]]:
    """Times each fn ``repeats`` times after ``warmup`` runs, alternating between them, so that
    load from other processes on a shared machine hits every variant alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in tqdm(range(repeats), desc=desc, leave=False, file=sys.stderr):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def time_wall_and_cpu(fn: Callable[[], object], repeat: int) -> Dict[str, object]:
    """Runs ``fn`` ``repeat`` times; median / min wall seconds, median CPU seconds of this process
    (CPU time is what a loaded machine disturbs least) and the last value ``fn`` returned."""
    walls: List[float] = []
    cpus: List[float] = []
    value: object = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return {'median_s': statistics.median(walls), 'min_s': min(walls), 'cpu_median_s': statistics.median(cpus),
            'runs': repeat, 'value': value}


def ms_stats(seconds: List[float], per: int = 1) -> Dict[str, float]:
    """Median / min / max milliseconds (per item when ``per`` items ran in each call)."""
    ms = [s * 1000.0 / per for s in seconds]
    return {'median_ms': statistics.median(ms), 'min_ms': min(ms), 'max_ms': max(ms), 'n': len(ms)}


def seconds_stats(seconds: List[float]) -> Dict[str, object]:
    """Min, median and every value, in seconds (rounded to 0.1 ms)."""
    return {'min': round(min(seconds), 4), 'median': round(statistics.median(seconds), 4),
            'all': [round(t, 4) for t in seconds]}


def matmul_gflops(device: torch.device, repeats: int = 3) -> Dict[str, float]:
    """Best fp32 (IEEE, no TF32) matmul throughput on the device, GFLOP/s (best over sizes and
    repeats: the least disturbed measurement on a shared machine)."""
    sizes = (8192,) if device.type == 'cuda' else (2048, 4096)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    best = {'n': 0, 'gflops': 0.0}
    try:
        for n in sizes:
            a = torch.randn(n, n, device=device)
            b = torch.randn(n, n, device=device)
            a @ b
            sync(device)
            seconds = min(time_once(lambda: a @ b, device) for _ in range(repeats))
            gflops = 2 * n ** 3 / seconds / 1e9
            if gflops > best['gflops']:
                best = {'n': n, 'gflops': gflops}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return best


def count_flops(build: Callable[[], torch.nn.Module], inputs_shapes: Sequence[Tuple[int, ...]],
                call: Callable[[torch.nn.Module, List[torch.Tensor]], object]) -> int:
    """FLOPs of one forward pass, counted on the meta device (no memory, no compute)."""
    model = build().to('meta').eval()
    inputs = [torch.empty(s, device='meta') for s in inputs_shapes]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call(model, inputs)
    return int(counter.get_total_flops())


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _proc_status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f'{field} not found in /proc/self/status')


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    return _proc_status_bytes('VmRSS')


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux ``VmHWM``; not ``ru_maxrss``, which Linux carries
    over from a forking parent across exec)."""
    return _proc_status_bytes('VmHWM')


def run_measuring_child(cmd: List[str]) -> Dict[str, object]:
    """Runs a benchmark's child process (``cmd``) that measures one call and prints a JSON line
    last; returns that JSON, or ``{'error': ...}``. ``MALLOC_MMAP_THRESHOLD_`` makes glibc return
    freed tensor memory at once, so the child's RSS follows its live tensors."""
    import subprocess
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {'error': f'child failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}'}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the machine, and the report
# ---------------------------------------------------------------------------------------------
def cpu_info() -> Dict[str, object]:
    """CPU model and the flags that decide whether low-precision math has hardware behind it."""
    name, flags = platform.processor(), set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    name = line.split(':', 1)[1].strip()
                elif line.startswith('flags'):
                    flags = set(line.split(':', 1)[1].split())
                if name and flags:
                    break
    except OSError:
        pass
    wanted = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile', 'avx512_fp16')
    return {'name': name, 'flags': [f for f in wanted if f in flags]}


def machine_meta(**extra: object) -> Dict[str, object]:
    """Date, software and machine facts for a JSON report (``extra`` is merged in)."""
    meta: Dict[str, object] = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'torch': torch.__version__, 'python': platform.python_version(), 'machine': platform.machine(),
        'cpu': cpu_info(), 'cpu_threads': torch.get_num_threads(), 'load_avg': os.getloadavg(),
    }
    if torch.cuda.is_available():
        meta['gpu'] = torch.cuda.get_device_name(0)
    meta.update(extra)
    return meta


def emit_json(report: dict, path: Optional[str] = None) -> None:
    """Prints the report as JSON and, with ``path``, also writes it there atomically."""
    from fusion.utils.file_util import atomic_write_bytes
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        atomic_write_bytes(text.encode() + b'\n', path)
