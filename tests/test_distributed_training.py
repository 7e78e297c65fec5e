"""DDP training under real torchrun (2 processes, gloo on CPU) on the tiny SAGE recipe of
tests/test_training.py: 2 ranks x batch 2 match 1 process x batch 4 (sync_bn: true makes the
BatchNorm statistics those of the global batch), a 2-rank run killed with -9 and resumed with
--auto_resume ends bitwise equal to an uninterrupted one, only rank 0 writes, and a 2-rank
state resumes in 1 process (another world size, same global batch) as documented in
docs/distributed.md. SGD in these runs: see ``_options``."""
import glob
import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import ROOT
from test_training import _losses_by_iter, _read_logs, _state, _train_options


pytestmark = pytest.mark.slow  # torchrun subprocesses

# Runs a pipeline with an arbitrary root path. With FUSION_TEST_AUDIT set, an audit hook records
# every file this process opens for writing, renames into place or creates as a folder, and
# dumps the list to $FUSION_TEST_AUDIT/rank<RANK>.json at exit (which rank wrote what).
RUNNER = """
import atexit, json, os, sys
audit_dir = os.environ.get('FUSION_TEST_AUDIT')
if audit_dir:
    written = []
    def hook(event, args):
        if event == 'open' and isinstance(args[0], str):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in 'wax+')) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR)):
                written.append(args[0])
        elif event in ('os.rename', 'os.replace') and isinstance(args[1], str):
            written.append(args[1])
        elif event == 'os.mkdir' and isinstance(args[0], str):
            written.append(args[0])
    def dump():
        with open(os.path.join(audit_dir, f"rank{os.environ.get('RANK', '0')}.json"), 'w') as f:
            json.dump({'pid': os.getpid(), 'written': written}, f)
    atexit.register(dump)
    sys.addaudithook(hook)
root, *args = sys.argv[1:]
sys.argv = ['fusion'] + args
import fusion
from fusion.pipeline import train_pipeline
train_pipeline(root)
"""

GLOBAL_BATCH = 4
TOTAL_ITER = 7


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', **extra)


def _options(name: str, world_size: int) -> dict:
    opt = _train_options(name)
    opt['sync_bn'] = True
    opt['find_unused_parameters'] = True  # stage 1: the teacher's feature heads are idle
    train_set = opt['datasets']['train']
    train_set['batch_size_per_gpu'] = GLOBAL_BATCH // world_size
    train_set['dataset_enlarge_ratio'] = 4  # 8 samples: 2 iterations per epoch, a resume lands mid-epoch
    # whole-image crops (flips stay random): every sample has both label patches, so the
    # contrastive loss's mean over "the samples that have the patch" is a plain mean over
    # samples, which splits over ranks (docs/distributed.md: losses that do not)
    train_set['gt_size'] = [64, 80]
    opt['train']['total_iter'] = TOTAL_ITER
    # SGD, not Adam: Adam divides each gradient by its own magnitude, so a parameter whose true
    # gradient is zero (a conv bias right before BatchNorm) moves by +-lr in whatever direction
    # float rounding gives, differently for any change of summation order (1 vs 2 processes)
    for name in ('t', 'g', 'seg'):
        opt['train'][f'optim_{name}'] = {'type': 'SGD', 'lr': 0.001, 'momentum': 0.9}
    return opt


def _start(root: str, opt: dict, world_size: int, *args: str, audit: str = None) -> subprocess.Popen:
    runner = osp.join(root, 'runner.py')
    if not osp.isfile(runner):
        with open(runner, 'w') as f:
            f.write(RUNNER)
    opt_path = osp.join(root, f'{opt["name"]}.yml')
    yaml.safe_dump(opt, open(opt_path, 'w'), sort_keys=False)
    if world_size == 1:
        cmd = [sys.executable, runner, root, '-opt', opt_path, *args]
    else:  # --standalone: a free local rendezvous port, no clash with parallel runs
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={world_size}',
               runner, root, '-opt', opt_path, '--launcher', 'pytorch', *args]
    env = _env(FUSION_TEST_AUDIT=audit) if audit else _env()
    # own session: a kill -9 of the group takes torchrun and its workers, like a lost node
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill_all(pid: int) -> None:
    """SIGKILL to torchrun and its workers at once, like a lost node (torchrun starts each
    worker in its own session, so killing torchrun's process group alone leaves them running)."""
    children = []
    for task in glob.glob(f'/proc/{pid}/task/*/children'):
        with open(task) as f:
            children += [int(c) for c in f.read().split()]
    for p in [pid] + children:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-6000:]
    return out


def _numbers(line: str) -> dict:
    return {k: float(v) for k, v in re.findall(r'(l_\w+): ([-+\d.e]+)', line)}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ddp_root'))
    audit = osp.join(root, 'audit')
    os.makedirs(audit)
    one = _start(root, _options('one', 1), 1)
    two = _start(root, _options('two', 2), 2, audit=audit)
    killed = _start(root, _options('killed', 2), 2)
    killed_states = osp.join(root, 'experiments', 'killed', 'training_states')
    deadline = time.time() + 400
    while not osp.isfile(osp.join(killed_states, '3.state')) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    _kill_all(killed.pid)  # mid-run, just after the checkpoint of iteration 3
    killed_out, _ = killed.communicate(timeout=60)
    killed_left = sorted(os.listdir(killed_states))
    # the same killed experiment, resumed by 1 process with the same global batch (4 = 2 x 2)
    shutil.copytree(osp.join(root, 'experiments', 'killed'), osp.join(root, 'experiments', 'ws1'))
    outs = {'one': _finish(one), 'two': _finish(two)}
    resumed = _start(root, _options('killed', 2), 2, '--auto_resume')
    ws1 = _start(root, _options('ws1', 1), 1, '--auto_resume')
    outs.update(resumed=_finish(resumed), ws1=_finish(ws1))
    return {'root': root, 'exp': lambda name: osp.join(root, 'experiments', name), 'audit': audit,
            'killed_rc': killed.returncode, 'killed_left': killed_left, 'killed_out': killed_out, 'outs': outs}


def _assert_close_weights(a_dir: str, b_dir: str, it: int, atol_student: float = 1e-5) -> None:
    for net in ('net_t', 'net_g', 'net_seg'):
        atol = atol_student if net == 'net_g' else 1e-5
        a = _state(osp.join(a_dir, 'models', f'{net}_{it}.pth'))
        b = _state(osp.join(b_dir, 'models', f'{net}_{it}.pth'))
        for key in a:
            for name, tensor in a[key].items():
                if tensor.is_floating_point():
                    torch.testing.assert_close(b[key][name], tensor, rtol=1e-3, atol=atol, msg=f'{net} {key} {name}')
                else:
                    assert torch.equal(b[key][name], tensor), f'{net} {key} {name}'


def _student_drift(a_dir: str, b_dir: str, it: int, since: int = 3) -> float:
    """How far run ``b``'s student is from run ``a``'s at checkpoint ``it``, as a fraction of how
    far ``a``'s student moved from checkpoint ``since`` (parameter norms). Two equal trainings
    drift apart only by amplified rounding (measured: 0.01-0.06); a student gradient twice too
    large (a sum over two ranks instead of the mean) gave 0.31 at iteration 7, 0.47 at 6."""
    a0 = _state(osp.join(a_dir, 'models', f'net_g_{since}.pth'))['params']
    a = _state(osp.join(a_dir, 'models', f'net_g_{it}.pth'))['params']
    b = _state(osp.join(b_dir, 'models', f'net_g_{it}.pth'))['params']

    def norm(tensors) -> float:
        return float(sum((t.double() ** 2).sum() for t in tensors)) ** 0.5
    names = [k for k, t in a.items() if t.is_floating_point()]
    return norm(b[k] - a[k] for k in names) / norm(a[k] - a0[k] for k in names)


def test_two_ranks_match_one_process_with_the_global_batch(runs):
    one, two = runs['exp']('one'), runs['exp']('two')
    log_two = _read_logs(two)[0]
    assert 'World size (gpu number): 2' in log_two and 'Batch size per gpu: 2' in log_two
    assert 'synchronised across processes' in log_two  # sync_bn converted the student's and seg net's BN
    losses_one, losses_two = _losses_by_iter(_read_logs(one)[0]), _losses_by_iter(log_two)
    assert sorted(losses_two) == list(range(1, TOTAL_ITER + 1))
    for it in range(1, TOTAL_ITER + 1):
        a, b = _numbers(losses_one[it]), _numbers(losses_two[it])
        assert a.keys() == b.keys()
        for key in a:  # logged: the mean over ranks of each rank's batch mean
            # the student's losses after its second step (iteration 5) carry its amplified rounding
            rel = 2e-2 if key.startswith('l_g_') and it > 6 else 2e-3
            assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-6), f'iteration {it} {key}'
    # same samples and crops, gradients averaged by DDP = the gradient of the mean over 4,
    # BatchNorm statistics over the global batch: equal weights up to float rounding. Teacher and
    # segmentation net agree to ~1e-7 throughout. The student amplifies rounding, by how much
    # depends on the CPU's kernels (docs/distributed.md): after its first step 5e-7 (AVX-512) to
    # 5e-5 (AVX2 only); after its third, 1.5e-4 to 2e-3, 6% of its update since the first
    _assert_close_weights(one, two, 3, atol_student=2e-4)  # after the student's first step
    for it in (6, 7):
        _assert_close_weights(one, two, it, atol_student=float('inf'))  # teacher and seg net: 1e-5
        assert _student_drift(one, two, it) < 0.15, it
    s1 = torch.load(osp.join(one, 'training_states', '7.state'), map_location='cpu', weights_only=False)
    s2 = torch.load(osp.join(two, 'training_states', '7.state'), map_location='cpu', weights_only=False)
    assert s1['sage']['steps'] == s2['sage']['steps']
    assert s2['loop']['world_size'] == 2 and len(s2['rng_per_rank']) == 2


def test_killed_with_sigkill_and_resumed_ends_bitwise_equal(runs):
    assert runs['killed_rc'] == -signal.SIGKILL
    assert '3.state' in runs['killed_left'] and '7.state' not in runs['killed_left'], runs['killed_out'][-3000:]
    killed, two = runs['exp']('killed'), runs['exp']('two')
    logs = _read_logs(killed)
    resumed_log = logs[-1]
    start = int(re.search(r'Resuming training from iter (\d+)', resumed_log).group(1))
    assert start in (3, 6)  # the latest complete checkpoint before the kill
    full = _losses_by_iter(_read_logs(two)[0])
    resumed = _losses_by_iter(resumed_log)
    assert sorted(resumed) == list(range(start + 1, TOTAL_ITER + 1))
    for it in resumed:
        assert resumed[it] == full[it], f'iteration {it} differs after resume'
    for net in ('net_t', 'net_g', 'net_seg'):
        a = _state(osp.join(two, 'models', f'{net}_{TOTAL_ITER}.pth'))
        b = _state(osp.join(killed, 'models', f'{net}_{TOTAL_ITER}.pth'))
        for key in a:
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), f'{net} {key} {name}'


def test_only_rank_zero_writes(runs):
    root = runs['root']
    with open(osp.join(runs['audit'], 'rank0.json')) as f:
        audit0 = json.load(f)
    with open(osp.join(runs['audit'], 'rank1.json')) as f:
        rank1 = json.load(f)['written']
    rank0 = audit0['written']
    exp, tb = runs['exp']('two'), osp.join(root, 'tb_logger', 'two')
    ours = [p for p in rank1 if p.startswith((exp, tb, osp.join(root, 'experiments')))]
    assert ours == [], f'rank 1 wrote {ours[:10]}'
    # the hook sees rank 0's writes of every kind, so the empty list above means something
    rank0 = [osp.relpath(p, root) for p in rank0]
    for pattern in (r'experiments/two/models/net_g_3\.pth$', r'experiments/two/training_states/3\.state$',
                    r'experiments/two/train_two_.*\.log$', r'tb_logger/two$',
                    r'experiments/two/visualization/tiny_val/00106D_3\.png$'):
        assert any(re.search(pattern, p) for p in rank0), pattern
    assert len(glob.glob(osp.join(exp, 'train_*.log'))) == 1
    # tensorboard writes outside python's file API, but its file name ends with the writer's pid
    events = glob.glob(osp.join(tb, 'events.out.tfevents.*'))
    assert len(events) == 1 and events[0].endswith(f'.{audit0["pid"]}.0'), events


def test_resume_with_another_world_size_continues_with_the_same_global_batch(runs):
    log = _read_logs(runs['exp']('ws1'))[-1]
    assert 'the state was saved by 2 process(es), this run has 1: global batch 4 then, 4 now' in log
    start = int(re.search(r'Resuming training from iter (\d+)', log).group(1))
    assert 'iterations per epoch now' not in log  # same global batch: the data order continues
    # 2 ranks x 2 up to the checkpoint, then 1 process x 4: the uninterrupted 1-process run,
    # up to float rounding
    _assert_close_weights(runs['exp']('one'), runs['exp']('ws1'), TOTAL_ITER, atol_student=float('inf'))
    assert _student_drift(runs['exp']('one'), runs['exp']('ws1'), TOTAL_ITER) < 0.15
    assert start in (3, 6)
