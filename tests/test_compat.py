"""Each basicsr fix in fusion/utils/compat.py, shown to be needed (the unpatched basicsr code
fails) and to work."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT

from fusion.utils import compat


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES='')
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_import_basicsr_needs_functional_tensor_alias():
    plain = _run('import basicsr')
    assert plain.returncode != 0 and 'functional_tensor' in plain.stderr
    fixed = _run("""
        from fusion.utils import compat
        compat.apply_pre_import()
        import basicsr
        print('ok')
    """)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.strip().endswith('ok')


def _training_state(tmp_path, opt_name='exp'):
    state_dir = tmp_path / 'experiments' / opt_name / 'training_states'
    state_dir.mkdir(parents=True)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    torch.save({'epoch': 1, 'iter': 4, 'optimizers': [optimizer.state_dict()], 'schedulers': []},
               state_dir / '4.state')
    (state_dir / '.tmp_123.state').write_bytes(b'')  # leftover of an interrupted atomic save
    return {'name': opt_name, 'auto_resume': True, 'root_path': str(tmp_path), 'num_gpu': 0, 'is_train': True,
            'path': {'training_states': str(state_dir), 'models': str(tmp_path / 'm')}}


@pytest.mark.skipif(torch.cuda.is_available(), reason='the unpatched failure only shows without a GPU')
def test_load_resume_state_on_cpu(tmp_path, monkeypatch):
    import basicsr.train as btrain
    opt = _training_state(tmp_path)
    monkeypatch.chdir(tmp_path)
    # the original resolves the folder against the CWD and then needs CUDA
    original = compat._ORIGINALS['basicsr.train.load_resume_state']
    with pytest.raises((RuntimeError, AssertionError, ValueError)):
        original(dict(opt, path=dict(opt['path'])))
    assert btrain.load_resume_state is compat.load_resume_state
    state = btrain.load_resume_state(opt)
    assert state['iter'] == 4
    assert opt['path']['resume_state'].endswith('4.state')


@pytest.mark.slow
def test_init_dist_without_gpu_uses_gloo():
    code = """
        import os
        os.environ.update(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT='{port}')
        import fusion
        from fusion.utils import compat
        import torch.distributed as dist
        {call}
        print('backend', dist.get_backend())
    """
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    original = _run(code.format(port=port, call="compat._ORIGINALS['basicsr.utils.dist_util.init_dist']('pytorch')"))
    assert original.returncode != 0
    assert 'ZeroDivisionError' in original.stderr or 'NVIDIA' in original.stderr or 'CUDA' in original.stderr
    fixed = _run(code.format(port=port, call="import basicsr.utils.options as o; o.init_dist('pytorch')"))
    assert fixed.returncode == 0, fixed.stderr
    assert 'backend gloo' in fixed.stdout


def test_fixes_are_idempotent():
    import basicsr.utils.options as options
    compat.apply_post_import()
    compat.apply_post_import()
    assert options.init_dist is compat.init_dist
    assert compat._ORIGINALS['basicsr.utils.options.init_dist'] is not compat.init_dist


def test_message_logger_eta_is_not_negative_at_the_last_iteration():
    from types import SimpleNamespace

    from basicsr.utils.logger import MessageLogger
    opt = {'name': 'eta', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': 4}}

    def last_line(call):
        msg_logger = MessageLogger(opt, start_iter=0)
        msg_logger.start_time -= 10.0  # about two seconds per iteration
        lines = []
        msg_logger.logger = SimpleNamespace(info=lines.append)
        call(msg_logger, {'epoch': 0, 'iter': 4, 'lrs': [1e-3], 'time': 1.0, 'data_time': 0.0})
        return lines[-1]

    assert '-1 day' in last_line(compat._ORIGINALS['basicsr.utils.logger.MessageLogger.__call__'])
    fixed = last_line(MessageLogger.__call__)
    assert 'eta: 0:00:00' in fixed and '-1 day' not in fixed
