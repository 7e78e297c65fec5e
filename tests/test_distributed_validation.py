"""DDP validation under real torchrun (2 gloo ranks, CPU): every rank waits for rank 0's
validation for up to ``dist_params.validation_timeout``, however short the process group's own
``dist_params.timeout``; a failure inside rank 0's validation ends every rank promptly, non-zero,
with rank 0's error named on each (docs/distributed.md, "Validation under DDP"). The slow
validation and the failure are injected into rank 0 by the runner below."""
import os
import os.path as osp
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT
from test_training import _train_options


pytestmark = pytest.mark.slow  # torchrun subprocesses

# the pipeline with rank 0's first validation slowed down or failing (the other ranks never validate)
RUNNER = """
import os, sys, time
root, *args = sys.argv[1:]
sys.argv = ['fusion'] + args
import fusion
from fusion.models.sage_model import SAGEModel
from fusion.pipeline import train_pipeline
original, calls = SAGEModel.nondist_validation, []
def validation(self, *a, **k):
    calls.append(1)
    if len(calls) == 1:
        if os.environ.get('FUSION_TEST_VAL_RAISE'):
            print(f'INJECTED AT {time.time()}', flush=True)
            raise RuntimeError('injected validation failure')
        time.sleep(float(os.environ.get('FUSION_TEST_VAL_SLEEP', 0)))
    return original(self, *a, **k)
SAGEModel.nondist_validation = validation
train_pipeline(root)
"""

GROUP_TIMEOUT = 15  # seconds: the process group's own timeout in the slow run
SLOW_VALIDATION = 2 * GROUP_TIMEOUT


def _options(name: str, timeout: float, validation_timeout: float) -> dict:
    opt = _train_options(name)
    opt['find_unused_parameters'] = True  # stage 1: the teacher's feature heads are idle
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    opt['train']['total_iter'] = 3
    opt['val']['val_freq'] = 2
    opt['logger'].update(save_checkpoint_freq=100, use_tb_logger=False)
    opt['dist_params'] = {'backend': 'gloo', 'timeout': timeout, 'validation_timeout': validation_timeout}
    return opt


def _start(root: str, opt: dict, **env) -> subprocess.Popen:
    runner = osp.join(root, 'runner.py')
    with open(runner, 'w') as f:
        f.write(RUNNER)
    opt_path = osp.join(root, f'{opt["name"]}.yml')
    yaml.safe_dump(opt, open(opt_path, 'w'), sort_keys=False)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', runner, root,
           '-opt', opt_path, '--launcher', 'pytorch']
    full_env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', **env)
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ddp_val'))
    slow = _start(root, _options('slow', GROUP_TIMEOUT, 600), FUSION_TEST_VAL_SLEEP=str(SLOW_VALIDATION))
    failing = _start(root, _options('failing', 600, 600), FUSION_TEST_VAL_RAISE='1')
    out_failing, _ = failing.communicate(timeout=500)
    failing_end = time.time()
    out_slow, _ = slow.communicate(timeout=500)
    return {'root': root, 'slow': (slow.returncode, out_slow), 'failing': (failing.returncode, out_failing),
            'failing_end': failing_end}


def test_a_validation_longer_than_the_group_timeout_is_waited_for(runs):
    rc, out = runs['slow']
    assert rc == 0, out[-6000:]
    exp = osp.join(runs['root'], 'experiments', 'slow')
    assert osp.isfile(osp.join(exp, 'training_states', '3.state'))  # trained to the end after the wait
    log = open(next(osp.join(exp, f) for f in os.listdir(exp) if f.startswith('train_'))).read()
    assert 'End of training after 3 iterations' in log and 'Validation tiny_val' in log


def test_a_failure_in_rank_0s_validation_ends_every_rank_with_its_error(runs):
    rc, out = runs['failing']
    assert rc != 0, out[-6000:]
    injected = float(re.search(r'INJECTED AT ([\d.]+)', out).group(1))
    # promptly: far below both timeouts (600 s), torchrun's shutdown included
    assert runs['failing_end'] - injected < 60, out[-6000:]
    assert 'RuntimeError: injected validation failure' in out  # rank 0's own error
    # rank 1 ends with rank 0's error named, instead of waiting in the next collective
    assert 'rank 1: training ends at iter 2: RankFailure: validation failed on rank 0: RuntimeError: injected ' \
           'validation failure' in out, out[-6000:]
    assert not osp.exists(osp.join(runs['root'], 'experiments', 'failing', 'training_states', '3.state'))
