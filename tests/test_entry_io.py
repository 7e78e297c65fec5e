"""Issue 21: no entry point writes over one of its inputs or accepts a meaningless number.

Every entry point is found automatically (a ``.py`` under ``scripts/`` or ``fusion/`` with an
``if __name__ == '__main__'`` block): a new script is covered with no edit here. Each exposes
``build_parser()``; its path arguments declare their role and its numbers their range through
fusion.utils.entry_io (docs/options.md, "Inputs and outputs"). The walk then runs every entry
point in-process (``runpy`` in two runner processes) with each output pointed at each input
(the same path; inside an input folder; a folder holding the input), and each output below a
file or (a file output) ending in ``/``, and checks: non-zero exit, exactly one ``error:`` line
naming the options, no traceback, every input byte-identical and nothing created.
fusion/train.py and fusion/test.py read their paths from the option file: their inputs and
outputs come from ``option_paths`` (fusion.utils.options_util) and are walked the same way.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, STUDENT_CKPT
from entry_runner import digest, parse_results

from fusion.utils.entry_io import (PathConflictError, check_output_path, declared, input_arg, number_arg, output_arg,
                                   parse_checked)


DOC = 'docs/options.md#inputs-and-outputs'
# words that make an argument path-like (dest, metavar or help)
PATH_WORDS = re.compile(r'\b(dirs?|folders?|paths?|files?|out|outputs?|json|csv|ya?ml|checkpoints?|ckpt|models?|'
                        r'weights|transforms?|lists?|cache|lmdb|root|save|keep|prefix)\b')
FLAG_ACTIONS = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
                argparse._StoreConstAction, argparse._CountAction, argparse._AppendConstAction,
                argparse._VersionAction)


def _entry_points():
    found = []
    for base in ('scripts', 'fusion'):
        for path in sorted(glob.glob(osp.join(ROOT, base, '**', '*.py'), recursive=True)):
            with open(path) as f:
                if re.search(r"^if __name__ == ['\"]__main__['\"]", f.read(), re.M):
                    found.append(osp.relpath(path, ROOT))
    return found


ENTRY_POINTS = _entry_points()
_MODULES = {}


def _module(rel: str) -> dict:
    """The entry point's globals, as ``python <script>`` would import it (its folder on sys.path)."""
    if rel not in _MODULES:
        folder = osp.dirname(osp.join(ROOT, rel))
        if folder not in sys.path:
            sys.path.insert(0, folder)
        _MODULES[rel] = runpy.run_path(osp.join(ROOT, rel), run_name='entry_io_walk')
    return _MODULES[rel]


def _parser(rel: str) -> argparse.ArgumentParser:
    module = _module(rel)
    assert callable(module.get('build_parser')), \
        f'{rel}: expose build_parser() returning its argparse parser, with paths and numbers declared ({DOC})'
    return module['build_parser']()


def test_entry_points_are_found():
    assert {'scripts/evaluate.py', 'scripts/export_onnx.py', 'scripts/benchmarks/benchmark_training.py',
            'fusion/train.py', 'fusion/test.py'} <= set(ENTRY_POINTS)


def _undeclared(parser: argparse.ArgumentParser) -> list:
    problems = []
    for action in parser._actions:
        if isinstance(action, FLAG_ACTIONS) or action.help == argparse.SUPPRESS or getattr(action, 'io_role', None):
            continue
        name = '/'.join(action.option_strings) or action.dest
        if action.type in (int, float):
            problems.append(f'{name}: a number; declare it with number_arg(..., min=, max=) ({DOC})')
            continue
        if action.choices:
            continue
        words = ' '.join(str(w) for w in (action.dest, action.metavar or '', action.help or '')).lower()
        words = words.replace('_', ' ').replace('-', ' ')
        if PATH_WORDS.search(words):
            problems.append(f'{name}: path-like; declare it with input_arg / output_arg (or plain_arg if it '
                            f'names no file) ({DOC})')
    return problems


@pytest.mark.parametrize('rel', ENTRY_POINTS)
def test_every_path_and_number_is_declared(rel):
    problems = _undeclared(_parser(rel))
    assert not problems, f'{rel}:\n  ' + '\n  '.join(problems)
    if 'option_paths' in _module(rel):  # YAML entry points: the option file is an input
        assert [a.dest for a in declared(_parser(rel), 'input')] == ['opt']


def test_numbers_are_checked_at_parse_time(capsys):
    parser = argparse.ArgumentParser(prog='x')
    number_arg(parser, '--peak', float, min=0, open_min=True, help='PSNR peak')
    number_arg(parser, '--batch', int, min=1, max=8, default=4)
    number_arg(parser, '--size', int, min=1, nargs=2, default=[2, 3])
    assert 'PSNR peak [valid: > 0]' in parser.format_help()
    assert parse_checked(parser, ['--peak', '2.5', '--size', '4', '5']).size == [4, 5]
    for argv, message in ((['--peak', '-1'], 'argument --peak: must be > 0, got -1'),
                          (['--peak', '0'], 'must be > 0'), (['--peak', 'nan'], 'finite'),
                          (['--batch', '9'], 'must be 1 .. 8, got 9'), (['--batch', '2.5'], 'expected int'),
                          (['--size', '3', '0'], 'argument --size: must be >= 1')):
        with pytest.raises(SystemExit) as exit_:
            parse_checked(parser, argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and [line for line in err.splitlines() if line.startswith('error:')] == \
            [line for line in err.splitlines() if message in line], (argv, err)


def test_path_rules(tmp_path):
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'a.png').write_bytes(b'x')
    (tmp_path / 'ckpt_1.pth').write_bytes(b'x')
    os.symlink(tmp_path / 'in', tmp_path / 'link')
    parser = argparse.ArgumentParser()
    input_arg(parser, '--ir', kind='dir')
    input_arg(parser, '--images', kind='files')
    input_arg(parser, '--ckpt', kind='prefix')
    output_arg(parser, '--out', kind='dir', also=('{}.shards',))
    output_arg(parser, '--json', kind='file', default_in=('out', 'm.json'))
    base = ['--ir', str(tmp_path / 'in'), '--ckpt', str(tmp_path / 'ckpt_')]
    cases = [(['--out', str(tmp_path / 'link' / 'x')], '--out .* is inside the input --ir'),  # through the link
             (['--out', str(tmp_path / 'link')], '--out .* is the input --ir'),
             (['--out', str(tmp_path)], '--out .* holds the input --ir'),
             (['--out', str(tmp_path / 'o'), '--json', str(tmp_path / 'ckpt_2.pth')],
              '--json .* would be one of the input files --ckpt'),
             (['--out', str(tmp_path / 'o'), '--images', str(tmp_path / 'q.png'), str(tmp_path / 'in' / 'a.png'),
               '--json', str(tmp_path / 'q.png')], '--json .* is the input --images'),
             (['--out', str(tmp_path / 'o'), '--json', str(tmp_path / 'o') + '/'], 'is a folder, expected a file'),
             (['--out', str(tmp_path / 'ckpt_1.pth' / 'o')], 'would be one of the input files --ckpt'),
             (['--ckpt', str(tmp_path / 'c_'), '--out', str(tmp_path / 'ckpt_1.pth' / 'o')],
              'ckpt_1.pth is a file, so the folder cannot be created')]
    for extra, message in cases:
        with pytest.raises(PathConflictError, match=message):
            parse_checked(parser, base + extra)
    # a derived output: OUT.shards beside OUT
    with pytest.raises(PathConflictError, match=r'--out \(OUT.shards\) .* is the input --ir'):
        parse_checked(parser, ['--ir', str(tmp_path / 'o.shards'), '--out', str(tmp_path / 'o')])
    # the default --json inside --out is checked too
    (tmp_path / 'o2').mkdir()
    os.symlink(tmp_path / 'in' / 'a.png', tmp_path / 'o2' / 'm.json')
    with pytest.raises(PathConflictError, match=r'--json \(default: --out/m.json\) .* is the input --images'):
        parse_checked(parser, ['--images', str(tmp_path / 'in' / 'a.png'), '--out', str(tmp_path / 'o2')])
    args = parse_checked(parser, base + ['--out', str(tmp_path / 'o'), '--json', str(tmp_path / 'r.json')])
    assert args.out == str(tmp_path / 'o')
    assert sorted(os.listdir(tmp_path)) == ['ckpt_1.pth', 'in', 'link', 'o2']  # nothing created
    with pytest.raises(PathConflictError, match='exists and is not a folder'):
        check_output_path('--out', str(tmp_path / 'ckpt_1.pth'), 'dir')


def test_meaningless_values_of_evaluate_end_in_one_line(tmp_path, capsys):
    """The issue's examples: a negative PSNR peak and a selection that leaves no metric."""
    evaluate = _module('scripts/evaluate.py')
    (tmp_path / 'ir').mkdir()
    (tmp_path / 'vi').mkdir()
    base = ['--ir', str(tmp_path / 'ir'), '--vis', str(tmp_path / 'vi'), '--baseline', 'mean', '--out',
            str(tmp_path / 'out'), '--quiet']
    with pytest.raises(SystemExit) as exit_:
        evaluate['main'](base + ['--psnr-peak', '-1'])
    assert exit_.value.code == 2 and 'error: argument --psnr-peak: must be > 0, got -1' in capsys.readouterr().err
    assert evaluate['main'](base + ['--metrics', 'en', '--skip', 'EN']) == 2
    assert 'error: --metrics / --skip: no metric left to compute' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['ir', 'vi']


def test_fp16_on_a_cpu_is_refused_at_option_validation():
    """train.amp / val.precision fp16 with the networks on the CPU: one error naming the option and
    bf16, before anything is built (fp16 ran minutes per iteration there, docs/mixed_precision.md)."""
    from test_training import _train_options

    import fusion.training  # noqa: F401  (declares the options of the training loop)
    import fusion.utils.option_parser  # noqa: F401  (and basicsr's)
    from fusion.utils.option_schema import OptionError, validate_options
    opt = _train_options('fp16_cpu')
    opt['train']['amp'] = 'fp16'
    for num_gpu in (0, 'auto') if not torch.cuda.is_available() else (0,):
        opt['num_gpu'] = num_gpu
        with pytest.raises(OptionError, match=r'my.yml: train.amp: fp16 on a CPU device .* use train.amp: bf16'):
            validate_options(json.loads(json.dumps(opt)), True, source='my.yml')
    opt['train']['amp'] = 'bf16'
    validate_options(json.loads(json.dumps(opt)), True, source='my.yml')
    opt['val']['precision'] = 'fp16'
    with pytest.raises(OptionError, match='val.precision: fp16 needs a CUDA device; on the CPU use bf16'):
        validate_options(opt, True, source='my.yml')


def test_numeric_options_of_the_option_file_have_ranges():
    from test_training import _train_options

    import fusion.training  # noqa: F401  (declares the options of the training loop)
    import fusion.utils.option_parser  # noqa: F401  (and basicsr's)
    from fusion.utils.option_schema import OptionError, validate_options
    for dotted, value, message in (('train.total_iter', 0, 'train.total_iter: must be >= 1, got 0'),
                                   ('manual_seed', -3, 'manual_seed: must be >= 0, got -3'),
                                   ('datasets.train.batch_size_per_gpu', '0', 'batch_size_per_gpu: must be >= 1'),
                                   ('datasets.train.num_worker_per_gpu', -1, 'num_worker_per_gpu: must be >= 0'),
                                   ('datasets.train.dataset_enlarge_ratio', 0, 'must be > 0'),
                                   ('logger.print_freq', 0, 'logger.print_freq: must be >= 1'),
                                   ('val.val_freq', -5, 'val.val_freq: must be >= 1')):
        opt = _train_options('ranges')
        _set_key(opt, dotted, value)
        with pytest.raises(OptionError, match=message):
            validate_options(opt, True, source='my.yml')
    opt = _train_options('ranges')
    _set_key(opt, 'train.total_iter', '5e3')  # a YAML string number: converted, in range
    validate_options(opt, True, source='my.yml')
    assert opt['train']['total_iter'] == 5000


# ------------------------------------------------------------------------------------------------
# the walk

RUNNER = osp.join(ROOT, 'tests', 'entry_runner.py')  # runs many cases in one process, hashing WORLD


def _number_value(action) -> str:
    low, high, open_low, _ = action.io_range
    if low is None:
        value = 1 if high is None else high
    else:
        value = low + (1 if open_low else 0)
        if high is not None and value > high:
            value = (low + high) / 2
    if action.io_number_type is float:
        value = float(value)
    return str(value)


def _make_input(action, folder: str) -> list:
    """Creates a real input of the action's kind under ``folder``; returns its argument values."""
    os.makedirs(folder)
    kind = action.io_kind
    if kind in ('dir', 'named_dirs'):
        os.makedirs(osp.join(folder, 'd'))
        with open(osp.join(folder, 'd', 'a.png'), 'wb') as f:
            f.write(b'input image bytes')
        return [f'm={folder}/d'] if kind == 'named_dirs' else [f'{folder}/d']
    names = ['p_1', 'p_2'] if kind == 'prefix' else ['f.yml', 'g.yml'] if kind == 'files' else ['f.yml']
    for name in names:
        with open(osp.join(folder, name), 'w') as f:
            f.write('name: input file\n')
    return [f'{folder}/p_'] if kind == 'prefix' else [f'{folder}/{n}' for n in names]


def _input_path(action, values: list) -> str:
    """The one real path an input value stands for (the folder of NAME=DIR, a file of a prefix)."""
    value = values[0]
    if action.io_kind == 'named_dirs':
        return value.partition('=')[2]
    return value + '1' if action.io_kind == 'prefix' else value


def _required_args(rel: str, parser, world: str, skip: set) -> list:
    """Values for every required argument (inputs created under ``world``, outputs beside them)."""
    walk_args = _module(rel).get('WALK_ARGS', {})
    args = []
    for action in parser._actions:
        if not action.required or action.dest in skip:
            continue
        flag = action.option_strings[0] if action.option_strings else None
        role = getattr(action, 'io_role', None)
        if flag in walk_args:
            values = list(walk_args[flag])
        elif role == 'input':
            values = _make_input(action, osp.join(world, f'req_{action.dest}'))
        elif role == 'output':
            values = [osp.join(world, f'out_{action.dest}')]
        elif role == 'number':
            n = action.nargs if isinstance(action.nargs, int) else 1
            values = [_number_value(action)] * n
        elif action.choices:
            values = [str(list(action.choices)[0])]
        else:
            pytest.fail(f'{rel}: the walk cannot invent a value for the required {flag or action.dest}: declare '
                        f'its role (entry_io) or give WALK_ARGS = {{{flag!r}: [...]}} in the script ({DOC})')
        args += ([flag] if flag else []) + values
    return args


def _script_cases(rel: str, world: str) -> list:
    parser = _parser(rel)
    cases = []
    for out in declared(parser, 'output'):
        out_flag = out.option_strings[0]
        for inp in declared(parser, 'input'):
            in_flag = inp.option_strings[0]
            tag = f'{len(cases)}'
            base = osp.join(world, f'{osp.basename(rel)[:-3]}_{tag}')
            values = _make_input(inp, osp.join(base, 'in'))
            target = _input_path(inp, values)
            relations = [('equal', target)]
            if inp.io_kind in ('dir', 'named_dirs'):
                relations.append(('inside', osp.join(target, 'sub' if out.io_kind == 'dir' else 'x.json')))
            if out.io_kind == 'dir':
                relations.append(('holds', osp.join(base, 'in')))
            for relation, path in relations:
                args = _required_args(rel, parser, osp.join(base, relation), {out.dest, inp.dest})
                args += [in_flag, *values, out_flag, path]
                cases.append({'id': f'{rel} {out_flag}={relation} {in_flag}', 'script': osp.join(ROOT, rel),
                              'args': args, 'flags': [out_flag, in_flag]})
        # Errno 20 before the work: a file output given as a folder, any output below a file
        base = osp.join(world, f'{osp.basename(rel)[:-3]}_{out.dest}_os')
        os.makedirs(base)
        with open(osp.join(base, 'a_file'), 'w') as f:
            f.write('a file')
        bad = [('under_file', osp.join(base, 'a_file', 'x'))]
        if out.io_kind == 'file':
            bad.append(('trailing_slash', osp.join(base, 'new_folder') + '/'))
        for relation, path in bad:
            args = _required_args(rel, parser, osp.join(base, relation), {out.dest}) + [out_flag, path]
            cases.append({'id': f'{rel} {out_flag}={relation}', 'script': osp.join(ROOT, rel), 'args': args,
                          'flags': [out_flag]})
    return cases


def _set_key(opt: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split('.')
    for key in parents:
        opt = opt[key]
    opt[leaf] = value


def _yaml_cases(rel: str, world: str):
    """Cases of fusion/test.py and fusion/train.py over the inputs their option file declares
    (``option_paths``), and the copies of real inputs they need: test.py's ``path.results_root``
    is set at / inside / to a folder holding each input (copies under ``world``); train.py's run
    folder is fixed (``experiments/<name>``), so each input is copied to it or inside it."""
    from test_training import DATA, _train_options

    from fusion.utils.options_util import option_paths
    train = rel.endswith('train.py')
    data = osp.join(world, 'yaml_data')
    if not osp.isdir(data):
        for sub in ('ir', 'vi', 'label'):  # each input alone in its folder: a folder holding it holds no other
            shutil.copytree(osp.join(DATA, sub), osp.join(data, sub, sub))
        os.makedirs(osp.join(data, 'ckpt'))
        shutil.copy(STUDENT_CKPT, osp.join(data, 'ckpt', 'net_g.pth'))
    if train:
        opt = _train_options('walk')
        for ds in opt['datasets'].values():
            for key in [k for k in ds if k.startswith('dataroot_')]:
                ds[key] = osp.join(data, osp.basename(ds[key]), osp.basename(ds[key]))
        opt['path'] = {'pretrain_network_g': osp.join(data, 'ckpt', 'net_g.pth'), 'strict_load_g': False}
    else:
        opt = {'name': 'walk', 'model_type': 'FusionModel', 'num_gpu': 0, 'manual_seed': 0,
               'datasets': {'test_1': {'name': 'pairs', 'type': 'FusionPairDataset',
                                       'dataroot_ir': osp.join(data, 'ir', 'ir'),
                                       'dataroot_vis': osp.join(data, 'vi', 'vi')}},
               'network_g': {'type': 'SAGEStudent', 'dim': 32},
               'path': {'pretrain_network_g': osp.join(data, 'ckpt', 'net_g.pth'),
                        'results_root': osp.join(world, 'res')},
               'val': {'save_img': True, 'pbar': False}}
    inputs, _ = option_paths(opt, 'OPTION_FILE')
    names = [n for n, _, _ in inputs]
    assert '-opt' in names and any(n.startswith('datasets.') for n in names) and 'path.pretrain_network_g' in names
    cases, copies, run_dirs = [], [], []
    for index, (in_name, in_path, in_kind) in enumerate(inputs):
        for relation in ('equal', 'inside', 'holds'):
            case_opt = json.loads(json.dumps(opt))
            base = osp.join(world, f'{"train" if train else "test"}_{index}_{relation}')
            opt_file = osp.join(base, 'walk.yml')
            if train:  # the run folder is fixed: put the input there
                if relation == 'holds' or (in_name == '-opt' and relation == 'equal'):
                    continue
                case_opt['name'] = f'entry_io_walk_{os.getpid()}_{index}_{relation}'
                run_dir = osp.join(ROOT, 'experiments', case_opt['name'])
                run_dirs.append(run_dir)
                target = run_dir if relation == 'equal' else osp.join(run_dir, 'sub', osp.basename(in_path))
                if in_name == '-opt':
                    opt_file = target
                else:
                    _set_key(case_opt, in_name, target)
                    copies.append((in_path, target))
                flags = ['path.experiments_root', in_name]
            else:
                if in_kind == 'file' and relation == 'inside':
                    continue
                target = opt_file if in_name == '-opt' else in_path
                out = {'equal': target, 'inside': osp.join(target, 'sub'), 'holds': osp.dirname(target)}[relation]
                case_opt['path']['results_root'] = out
                flags = ['path.results_root', in_name]
            cases.append({'id': f'{rel} {relation} {in_name}', 'script': osp.join(ROOT, rel),
                          'args': ['-opt', opt_file], 'flags': flags, 'opt': case_opt, 'opt_file': opt_file})
    return cases, copies, run_dirs


@pytest.mark.slow
def test_no_output_may_be_an_input(tmp_path):
    world = str(tmp_path / 'world')
    os.makedirs(osp.join(world, 'cwd'))
    cases, copies, run_dirs = [], [], []
    for rel in ENTRY_POINTS:
        if 'option_paths' in _module(rel):
            more, more_copies, more_dirs = _yaml_cases(rel, world)
            cases, copies, run_dirs = cases + more, copies + more_copies, run_dirs + more_dirs
        else:
            cases += _script_cases(rel, world)
    assert len(cases) > 60
    try:
        for source, target in copies:  # training inputs placed in their run folder
            if osp.isdir(source):
                shutil.copytree(source, target)
            else:
                os.makedirs(osp.dirname(target), exist_ok=True)
                shutil.copy(source, target)
        for case in cases:
            if 'opt' in case:
                os.makedirs(osp.dirname(case['opt_file']), exist_ok=True)
                with open(case.pop('opt_file'), 'w') as f:
                    yaml.safe_dump(case.pop('opt'), f)
        repo_before = {d: digest(d) for d in run_dirs}
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', FUSION_DEBUG='')
        procs = []
        for part in range(2):  # two runners side by side, each importing about half of the entry points
            case_file = tmp_path / f'cases{part}.json'
            case_file.write_text(json.dumps([c for c in cases if hash(c['script']) % 2 == part]))
            procs.append(subprocess.Popen([sys.executable, RUNNER, str(case_file), world],
                                          cwd=osp.join(world, 'cwd'), env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            found = parse_results(out)
            assert found is not None, out[-3000:]
            results += found
        assert len(results) == len(cases)
        repo_after = {d: digest(d) for d in run_dirs}
    finally:
        for folder in run_dirs:  # a run "folder" may be an input file put there
            if osp.isfile(folder):
                os.remove(folder)
            shutil.rmtree(folder, ignore_errors=True)
    problems = []
    flags = {c['id']: c['flags'] for c in cases}
    for r in results:
        errors = [line for line in r['stderr'].splitlines() if line.startswith('error:')]
        if r['code'] == 0 or len(errors) != 1 or 'Traceback' in r['stderr'] or \
                not all(flag in errors[0] for flag in flags[r['id']]) or r['changed']:
            problems.append(f"{r['id']}: exit {r['code']}, error lines {errors}, changed {r['changed'][:5]}\n"
                            f"{r['stderr'][-800:]}")
    assert not problems, f'{len(problems)} of {len(results)} cases:\n\n' + '\n\n'.join(problems)
    assert repo_after == repo_before
    assert os.listdir(osp.join(world, 'cwd')) == []
