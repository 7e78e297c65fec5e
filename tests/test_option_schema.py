"""The option validator and its neighbours, in process: unknown keys with "did you mean", keys from
registered signatures, numeric strings, YAML / --force_yml errors, output locations, stale
temporary files, folders of failed runs, --auto_resume over corrupt states, explicit param keys."""
import copy
import json
import os
import os.path as osp

import pytest
import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import ROOT
from torch import nn

import fusion.training  # noqa: F401  (declares the training loop's keys, as train.py's import does)
from fusion.utils.checkpoint_util import extract_state_dict
from fusion.utils.compat import load_resume_state
from fusion.utils.file_util import atomic_write_bytes, check_output_location, remove_stale_temporaries
from fusion.utils.img_util import list_images
from fusion.utils.option_parser import apply_force_yml, read_option_file
from fusion.utils.option_schema import OptionError, declare_options, validate_options
from fusion.utils.run_dirs import NewRunFolders


def _load(name: str) -> dict:
    return read_option_file(osp.join(ROOT, 'options', name))


@pytest.fixture(scope='module')
def train_opt():
    return _load('train_sage.yml')


def _errors(opt: dict, is_train: bool = True) -> str:
    with pytest.raises(OptionError) as info:
        validate_options(opt, is_train, source='my.yml')
    return str(info.value)


@pytest.mark.parametrize('name,is_train', [('train_sage.yml', True), ('train_sage_quick_cpu.yml', True),
                                           ('test_sage.yml', False), ('seg_mfnet.yml', True)])
def test_shipped_option_files_are_valid(name, is_train):
    validate_options(_load(name), is_train, source=name)


def test_unknown_keys_name_section_and_closest_key(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['train']['ema_dacay'] = 0.999
    opt['network_g']['dimm'] = 16                      # arch: from SAGEStudent's signature
    opt['train']['context_opt']['w_int_vsi'] = 1.0     # loss: from SAGEContextLoss's signature
    opt['val']['metrics']['en']['betterr'] = 'higher'  # metric: named parameters + better
    opt['datasets']['train']['mask_nmu'] = 4           # dataset: SAGEFusionDataset.OPTIONS
    opt['logger']['print_frq'] = 10                    # framework: the training loop's declaration
    msg = _errors(opt)
    assert msg.startswith('my.yml: ')
    for expected in ('train.ema_dacay: unknown option (did you mean ema_decay?)',
                     'network_g.dimm: unknown option (did you mean dim?)',
                     'train.context_opt.w_int_vsi: unknown option (did you mean w_int_vis?)',
                     'val.metrics.en.betterr: unknown option (did you mean better?)',
                     'datasets.train.mask_nmu: unknown option (did you mean mask_num?)',
                     'logger.print_frq: unknown option (did you mean print_freq?)'):
        assert expected in msg
    test_opt = _load('test_sage.yml')
    test_opt['val']['sufix'] = '_x'
    assert 'val.sufix: unknown option (did you mean suffix?)' in _errors(test_opt, is_train=False)


def test_unregistered_types_list_the_closest_names(train_opt):
    cases = [(('network_g', 'type'), 'SAGEStudnet', 'network_g.type: no arch named', 'SAGEStudent'),
             (('datasets', 'train', 'type'), 'SAGEFusionDatset', 'datasets.train.type: no dataset named',
              'SAGEFusionDataset'),
             (('train', 'context_opt', 'type'), 'SAGEContextLos', 'train.context_opt.type: no loss named',
              'SAGEContextLoss'),
             (('val', 'metrics', 'en', 'type'), 'calculate_enn', 'val.metrics.en.type: no metric named',
              'calculate_en'),
             (('train', 'optim_g', 'type'), 'Adamm', 'train.optim_g.type: no optimizer named', 'Adam'),
             (('model_type', ), 'SAGEModle', 'model_type: no model named', 'SAGEModel')]
    for keys, value, expected, close in cases:
        opt = copy.deepcopy(train_opt)
        node = opt
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        msg = _errors(opt)
        assert expected in msg and f'did you mean {close}' in msg, msg


def test_run_folder_may_not_hold_inputs(tmp_path):
    from fusion.utils.options_util import check_run_folders
    run = tmp_path / 'results' / 'x'
    opt = {'datasets': {'test_1': {'dataroot_ir': str(tmp_path / 'ir')}},
           'path': {'results_root': str(run), 'pretrain_network_g': str(run / 'net_g.pth')}}
    with pytest.raises(ValueError, match='path.results_root .* holds the input path.pretrain_network_g'):
        check_run_folders(opt)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'net_g.pth')
    check_run_folders(opt)
    opt['datasets']['test_1']['dataroot_ir'] = str(run / 'visualization')
    with pytest.raises(ValueError, match='holds the input datasets.test_1.dataroot_ir'):
        check_run_folders(opt)


def test_training_dataset_phases(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['datasets']['vall'] = opt['datasets'].pop('val')
    assert 'datasets.vall: unknown dataset phase' in _errors(opt)


def test_missing_required_keys(train_opt):
    opt = copy.deepcopy(train_opt)
    del opt['network_t']['type']
    del opt['train']['total_iter']
    del opt['datasets']['val']['name']
    msg = _errors(opt)
    assert 'network_t.type: required option is missing' in msg
    assert 'train.total_iter: required option is missing' in msg
    assert 'datasets.val.name: required option is missing' in msg


def test_numbers_written_as_strings_are_converted_and_words_are_errors(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['train']['optim_g']['lr'] = '2e-3'  # what PyYAML makes of `lr: 2e-3`
    opt['train']['scheduler']['eta_min'] = '1e-5'
    opt['train']['total_iter'] = '100000'
    validate_options(opt, True)
    assert opt['train']['optim_g']['lr'] == 0.002 and isinstance(opt['train']['optim_g']['lr'], float)
    assert opt['train']['scheduler']['eta_min'] == 1e-5 and opt['train']['total_iter'] == 100000
    assert yaml.safe_load('lr: 2e-3')['lr'] == '2e-3'  # the reason for the conversion
    opt['train']['optim_g']['lr'] = 'abc'
    opt['train']['ema_decay'] = 'high'
    opt['val']['save_img'] = 'yes please'
    msg = _errors(opt)
    assert "train.optim_g.lr: expected a number, got 'abc'" in msg
    assert "train.ema_decay: expected a number, got 'high'" in msg
    assert "val.save_img: expected true/false, got 'yes please'" in msg
    opt = copy.deepcopy(train_opt)
    opt['num_gpu'] = 'autoo'
    assert "num_gpu: expected auto or a number of GPUs (0: CPU), got 'autoo'" in _errors(opt)
    opt = copy.deepcopy(train_opt)
    opt['train']['nonfinite_loss'] = 'skp'
    assert "train.nonfinite_loss: must be one of 'raise' | 'skip', got 'skp' (did you mean skip?)" in _errors(opt)


def test_a_new_arch_gets_the_check_for_free_and_kwargs_accept_anything(train_opt):
    @ARCH_REGISTRY.register()
    class OptionSchemaTestNet(nn.Module):
        def __init__(self, width: int = 4, depth: int = 2) -> None:
            super().__init__()

    @ARCH_REGISTRY.register()
    class OptionSchemaTestKwargsNet(nn.Module):
        def __init__(self, **kwargs) -> None:
            super().__init__()

    opt = copy.deepcopy(train_opt)
    opt['network_seg'] = {'type': 'OptionSchemaTestNet', 'width': '8', 'dept': 3}
    msg = _errors(opt)
    assert 'network_seg.dept: unknown option (did you mean depth?)' in msg
    opt['network_seg'] = {'type': 'OptionSchemaTestKwargsNet', 'anything': 1}
    validate_options(opt, True)


def test_components_declare_their_keys_with_declare_options(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['train']['option_schema_test_key'] = 3
    assert 'train.option_schema_test_key: unknown option' in _errors(opt)
    declare_options({'train': {'option_schema_test_key': 'int'}}, phase='train')
    validate_options(opt, True)
    opt['train']['option_schema_test_key'] = 'three'
    assert "train.option_schema_test_key: expected an integer, got 'three'" in _errors(opt)


def test_patch_modes_of_dataset_and_teacher_must_agree(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['network_t']['patch_mode'] = 'binary'
    msg = _errors(opt)
    assert 'datasets.train.patch_mode (masked_intensity) and network_t.patch_mode (binary) must agree' in msg
    opt['datasets']['train']['patch_mode'] = 'binary'
    validate_options(opt, True)


def test_yaml_and_force_yml_errors_name_the_file_and_entry(tmp_path, train_opt):
    bad = tmp_path / 'bad.yml'
    bad.write_text('name: x\ntrain:\n  lr: [1, 2\n')
    with pytest.raises(OptionError, match=r'bad.yml: line \d+, column \d+: YAML syntax error'):
        read_option_file(str(bad))
    with pytest.raises(OptionError, match='no such option file'):
        read_option_file(str(tmp_path / 'missing.yml'))
    opt = copy.deepcopy(train_opt)
    for entry, expected in [('train:total_iter', 'expected section:key=value'),
                            ('nosuch:key=1', 'the options have no section nosuch'),
                            ('train::x=1', 'empty key'),
                            ('train:ema_decay=!!float abc', 'is not a number')]:
        with pytest.raises(OptionError, match=expected):
            apply_force_yml(opt, [entry])
    apply_force_yml(opt, ['train:ema_decay=0.999', 'train:distill_ablations=[no_feature]', 'path:resume_state=~'])
    assert opt['train']['ema_decay'] == 0.999 and opt['train']['distill_ablations'] == ['no_feature']
    apply_force_yml(opt, ['train:ema_dacay=0.9'])  # a new key: the validator names it
    assert 'train.ema_dacay: unknown option (did you mean ema_decay?)' in _errors(opt)


def test_outputs_never_inside_inputs(tmp_path):
    ir, vis = tmp_path / 'ir', tmp_path / 'vis'
    ir.mkdir()
    vis.mkdir()
    inputs = [('--ir', str(ir)), ('--vis', str(vis))]
    with pytest.raises(ValueError, match='--output .* is the input --ir'):
        check_output_location(str(ir), inputs)
    with pytest.raises(ValueError, match='is inside the input --vis'):
        check_output_location(str(vis / 'fused'), inputs)
    os.symlink(vis, tmp_path / 'link')
    with pytest.raises(ValueError, match='is the input --vis'):
        check_output_location(str(tmp_path / 'link'), inputs)
    with pytest.raises(ValueError, match='holds the input'):
        check_output_location(str(tmp_path), inputs, nested_inputs=True)
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='exists and is not a folder'):
        check_output_location(str(tmp_path / 'file'), inputs)
    with pytest.raises(ValueError, match='is a file, so the folder cannot be created'):
        check_output_location(str(tmp_path / 'file' / 'out'), inputs)
    check_output_location(str(tmp_path / 'out'), inputs)
    check_output_location(str(tmp_path), inputs)  # outputs beside the inputs are fine
    assert not osp.exists(tmp_path / 'out')  # nothing created


def test_read_only_output_is_refused(tmp_path, monkeypatch):
    # a read-only file system makes access(W_OK) fail with EROFS; the check asks access()
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: False if str(p).startswith(str(tmp_path)) else
                        real_access(p, mode))
    with pytest.raises(ValueError, match='cannot write in .* read-only file system'):
        check_output_location(str(tmp_path / 'out'), [])


def test_stale_temporaries_are_ignored_and_removed(tmp_path):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    (folder / 'a.png').write_bytes(b'x')
    (folder / '.tmp_abc.png').write_bytes(b'partial')        # an older name without a pid
    (folder / '.tmp_999999999_x.png').write_bytes(b'partial')  # its writer is gone
    (folder / f'.tmp_{os.getpid()}_y.png').write_bytes(b'in flight')  # a live writer's: kept
    assert list_images(str(folder)) == ['a.png']
    atomic_write_bytes(b'new', str(folder / 'b.png'))  # the first write into the folder cleans up
    assert sorted(os.listdir(folder)) == [f'.tmp_{os.getpid()}_y.png', 'a.png', 'b.png']
    assert remove_stale_temporaries(str(folder)) == 0


def test_new_run_folders_are_discarded_and_archives_restored(tmp_path):
    fresh, old = tmp_path / 'experiments' / 'fresh', tmp_path / 'experiments' / 'old'
    old.mkdir(parents=True)
    (old / 'keep.txt').write_text('previous run')
    guard = NewRunFolders([str(fresh), str(old)])
    fresh.mkdir()
    os.rename(old, str(old) + '_archived_20260101_000000')  # what basicsr's mkdir_and_rename does
    old.mkdir()
    guard.discard()
    assert not fresh.exists() and (old / 'keep.txt').read_text() == 'previous run'
    assert os.listdir(tmp_path / 'experiments') == ['old']
    tb = tmp_path / 'tb_logger' / 'fresh'
    guard = NewRunFolders([str(tb)])
    tb.mkdir(parents=True)
    guard.discard()
    assert not (tmp_path / 'tb_logger').exists()  # the parent this run created goes too
    kept = NewRunFolders([str(fresh)])
    fresh.mkdir()
    kept.keep()
    kept.discard()
    assert fresh.exists()


def test_auto_resume_skips_a_truncated_newest_state(tmp_path, capsys):
    states = tmp_path / 'training_states'
    states.mkdir()
    torch.save({'iter': 4, 'epoch': 0}, states / '4.state')
    torch.save({'iter': 8, 'epoch': 1}, states / '8.state')
    (states / '8.state').write_bytes((states / '8.state').read_bytes()[:40])  # killed while saving
    opt = {'name': 'x', 'auto_resume': True, 'path': {'training_states': str(states), 'models': str(tmp_path)}}
    state = load_resume_state(opt)
    assert state['iter'] == 4 and opt['path']['resume_state'] == str(states / '4.state')
    assert f'skipping {states / "8.state"}' in capsys.readouterr().err
    (states / '4.state').write_bytes(b'')
    with pytest.raises(ValueError, match='no training state in .* can be read; the newest: .*8.state'):
        load_resume_state({'name': 'x', 'auto_resume': True, 'path': {'training_states': str(states)}})
    with pytest.raises(ValueError, match='4.state: cannot read the training state'):
        load_resume_state({'name': 'x', 'path': {'resume_state': str(states / '4.state')}})


def test_explicit_param_key_must_exist():
    ours = {'params': {'w': torch.zeros(1)}}
    plain = {'w': torch.zeros(1)}
    with pytest.raises(ValueError, match='no "params_ema" weights in this checkpoint; it has params'):
        extract_state_dict(ours, 'params_ema', 'x.pth', required=True)
    with pytest.raises(ValueError, match='plain state dict'):
        extract_state_dict(plain, 'params_ema', 'x.pth', required=True)
    assert extract_state_dict(plain, 'params', 'x.pth', required=True) is plain  # released checkpoints
    assert extract_state_dict(ours, 'params_ema', 'x.pth') is ours['params']  # a default still falls back


def test_an_int_option_refuses_a_fraction_and_a_bool_choice_refuses_numbers(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['train']['total_iter'] = '0.5'  # once silently truncated to 0
    opt['logger']['print_freq'] = 2.5
    msg = _errors(opt)
    assert "train.total_iter: expected an integer, got '0.5'" in msg and 'logger.print_freq: expected an integer' in msg
    opt = copy.deepcopy(train_opt)
    opt['train']['amp'] = 0  # 0 == False in Python: once passed, then failed in the model
    assert "train.amp: must be one of 'none' | 'bf16' | 'fp16' | False, got 0" in _errors(opt)
    for ok in (False, 'bf16'):
        opt['train']['amp'] = ok
        validate_options(copy.deepcopy(opt), True)


def test_names_are_labels_a_number_is_read_as_its_text(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['datasets']['train']['name'] = 2023
    opt['name'] = 42
    validate_options(opt, True)
    assert opt['datasets']['train']['name'] == '2023' and opt['name'] == '42'
    opt['datasets']['train']['name'] = ['a']
    assert 'datasets.train.name: expected a name, got' in _errors(opt)


def test_val_precision_is_checked_with_the_options_before_any_work(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['num_gpu'] = 0
    opt['val']['precision'] = 'fp16'  # once found at the first validation, hours in
    assert 'val.precision: fp16 needs a CUDA device' in _errors(opt)
    opt['val']['precision'] = 'bf16'
    validate_options(opt, True)
    test_opt = _load('test_sage.yml')
    test_opt['num_gpu'] = 0
    test_opt.setdefault('val', {})['precision'] = 'fp16'
    assert 'val.precision: fp16 needs a CUDA device' in _errors(test_opt, is_train=False)


def test_sage_schedule_lists_are_checked_by_the_validator(train_opt):
    opt = copy.deepcopy(train_opt)
    opt['train']['distill_pattern'] = ['student', 'techer']
    assert 'train.distill_pattern: must be a non-empty list of "student"/"teacher"' in _errors(opt)
    opt = copy.deepcopy(train_opt)
    opt['train']['teacher_pretrain_iter'] = opt['train']['total_iter'] + 1
    assert 'train.teacher_pretrain_iter: must be in [0, total_iter=' in _errors(opt)


def test_dist_params_set_the_process_group_under_the_pytorch_launcher(tmp_path, train_opt, monkeypatch):
    """``dist_params.backend`` and ``timeout`` reach ``init_process_group`` (torchrun sets address
    and port, so ``port`` is no option any more)."""
    import datetime

    import torch.distributed as dist
    import torch.multiprocessing as mp

    from fusion.utils.option_parser import parse_options
    opt = copy.deepcopy(train_opt)
    opt['dist_params'] = {'port': 29500}
    assert 'dist_params.port: unknown option' in _errors(opt)
    opt['dist_params'] = {'backend': 'gloo', 'timeout': 123, 'validation_timeout': 4567}
    path = tmp_path / 'dist.yml'
    yaml.safe_dump(json.loads(json.dumps(opt)), open(path, 'w'), sort_keys=False)  # plain dicts for safe_dump
    calls = []
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setattr(mp, 'get_start_method', lambda allow_none=False: 'fork')
    monkeypatch.setattr(dist, 'init_process_group', lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(dist, 'get_rank', lambda group=None: 0)
    monkeypatch.setattr(dist, 'get_world_size', lambda group=None: 1)
    parsed, _ = parse_options(str(tmp_path), True, ['-opt', str(path), '--launcher', 'pytorch'])
    assert calls == [{'backend': 'gloo', 'timeout': datetime.timedelta(seconds=123)}]
    assert parsed['dist'] is True and parsed['dist_params']['validation_timeout'] == 4567


def test_sage_required_losses_and_optimizers_are_declared(train_opt):
    opt = copy.deepcopy(train_opt)
    del opt['train']['context_opt'], opt['train']['optim_g']
    msg = _errors(opt)
    assert 'train.context_opt: required option is missing' in msg and 'train.optim_g: required option is missing' in msg
