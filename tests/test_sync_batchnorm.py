"""SyncBatchNorm2d (``sync_bn: true``): conversion keeps every weight and the deploy-time folding,
it is plain BatchNorm2d without a process group, and under torchrun with 2 gloo processes it
gives what one BatchNorm2d computes on the concatenated batch (outputs, running statistics,
gradients), where plain per-process BatchNorm does not."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, torch_threads
from torch import nn

from fusion.archs.sage_student_arch import SAGEStudent
from fusion.utils.sync_batchnorm import SyncBatchNorm2d, convert_sync_batchnorm


def test_conversion_keeps_weights_and_is_plain_batchnorm_without_a_process_group():
    torch.manual_seed(0)
    ref = SAGEStudent(dim=8)
    for m in ref.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net = convert_sync_batchnorm(SAGEStudent(dim=8))
    net.load_state_dict(ref.state_dict())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in ref.modules())
    assert n_bn > 0 and sum(isinstance(m, SyncBatchNorm2d) for m in net.modules()) == n_bn
    assert list(net.state_dict()) == list(ref.state_dict())  # checkpoints interchangeable
    vis, ir = torch.rand(2, 1, 24, 32), torch.rand(2, 1, 24, 32)
    with torch_threads(1):
        for train in (True, False):
            ref.train(train)
            net.train(train)
            a, b = ref(vis, ir)[0], net(vis, ir)[0]
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        for x, y in zip(ref.state_dict().values(), net.state_dict().values()):  # same running-stat update
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
        # the deploy-time form (BN folded) still builds: SyncBatchNorm2d is a BatchNorm2d
        net.eval()
        fast = net.fuse_for_inference()
        torch.testing.assert_close(fast(vis, ir), net(vis, ir)[0], rtol=1e-4, atol=1e-5)


SCRIPT = """
import json, os, torch
import torch.distributed as dist
from torch import nn
from fusion.utils.dist_util import init_dist
from fusion.utils.sync_batchnorm import SyncBatchNorm2d
torch.set_num_threads(1)
rank, world = init_dist()
g = torch.Generator().manual_seed(0)
x_all = torch.randn(4, 3, 5, 6, generator=g) * 2 + 1
probe = torch.randn(4, 3, 5, 6, generator=g)
w0, b0 = torch.rand(3, generator=g) + 0.5, torch.rand(3, generator=g)

def bn(cls):
    m = cls(3)
    m.weight.data.copy_(w0)
    m.bias.data.copy_(b0)
    return m

full = bn(nn.BatchNorm2d)  # one process, the whole batch
x_full = x_all.clone().requires_grad_(True)
(full(x_full) * probe).sum().backward()
part = slice(2 * rank, 2 * rank + 2)
out = {}
for name, cls in (('sync', SyncBatchNorm2d), ('plain', nn.BatchNorm2d)):
    m = bn(cls)
    x = x_all[part].clone().requires_grad_(True)
    y = m(x)
    (y * probe[part]).sum().backward()  # the sum over ranks is the full loss
    wg = m.weight.grad.clone()
    dist.all_reduce(wg)
    out[name] = {
                 'x_grad': (x.grad - x_full.grad[part]).abs().max().item(),
                 'w_grad': (wg - full.weight.grad).abs().max().item(),
                 'running_var': (m.running_var - full.running_var).abs().max().item()}
    with torch.no_grad():
        ref = nn.functional.batch_norm(x_all, None, None, w0, b0, True)[part]
        out[name]['y'] = (y - ref).abs().max().item()
with open(os.path.join(os.environ['RESULT_DIR'], f'rank{rank}.json'), 'w') as f:  # not stdout: ranks interleave
    json.dump(out, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_sync_batchnorm_under_torchrun_matches_one_batchnorm_on_the_global_batch(tmp_path):
    script = tmp_path / 'sync_bn.py'
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', RESULT_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    for res in results:
        for key, diff in res['sync'].items():
            assert diff < 1e-5, (key, res)
        # per-process statistics: a different function of the inputs, not a rounding error
        assert res['plain']['y'] > 1e-2 and res['plain']['running_var'] > 1e-3, res
