"""What an entry point reads, writes and accepts, declared on its argparse arguments and checked
before any work (docs/options.md, "Inputs and outputs").

Every path argument says its role::

    input_arg(parser, '--ir', kind='dir', help='folder of infrared images')
    input_arg(parser, '--checkpoint', kind='file', help='student weights')
    output_arg(parser, '--out', kind='dir', help='output folder')
    output_arg(parser, '--json', kind='file', default_in=('out', 'metrics.json'), help='...')
    number_arg(parser, '--batch-size', int, min=1, default=4, help='pairs fused together')
    plain_arg(parser, '--model-type', help='vit_b | vit_l')   # a name, not a path

and ``args = parse_checked(parser, argv)`` parses, checks every number against its range (one
``error: argument --x: ...`` line, exit status 2) and refuses, before anything is created, every
output that is, lies inside or holds one of the inputs (real paths: symbolic links resolved), an
output file given as a folder (a trailing ``/``) or whose parent cannot be a folder, and a
location that cannot be written (read-only file system, no permission): one ``error:`` line
(through ``fusion.utils.cli.run_cli``) naming the output option and the input option.

Input kinds: ``file``, ``dir``, ``files`` (several files), ``prefix`` (the files whose names start
with the value), ``named_dirs`` (``NAME=DIR`` items, e.g. ``--fused``). Output kinds: ``dir``,
``file``; ``also=('{}.shards',)`` names further outputs derived from the value (a side folder),
``default_in=(dest, name)`` the file an unset output becomes inside another output (default
``--json`` = ``OUT/metrics.json``). Temporary files go beside their output (fusion.utils.file_util),
so the writability check covers them.

``tests/test_entry_io.py`` walks every script and asserts each path-like argument has a role,
each number a range, and that each output pointed at each input is refused with one line.
"""
from __future__ import annotations

import argparse
import math
import os
import os.path as osp
import sys
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple


INPUT_KINDS = ('file', 'dir', 'files', 'prefix', 'named_dirs')
OUTPUT_KINDS = ('file', 'dir')
# (option name, path, kind)
PathSpec = Tuple[str, str, str]


class PathConflictError(ValueError):
    """An output that would overwrite or mix with an input, or that cannot be written."""


def _record(action: argparse.Action, role: str, kind: Optional[str] = None, **extra: Any) -> argparse.Action:
    action.io_role = role
    action.io_kind = kind
    for key, value in extra.items():
        setattr(action, 'io_' + key, value)
    return action


def input_arg(parser, *flags: str, kind: str = 'file', **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` for a path the entry point reads (``kind``: see the module doc)."""
    if kind not in INPUT_KINDS:
        raise ValueError(f'input_arg {flags}: kind must be one of {INPUT_KINDS}, got {kind!r}')
    if kind in ('files', 'named_dirs'):
        kwargs.setdefault('nargs', '+')
    return _record(parser.add_argument(*flags, **kwargs), 'input', kind)


def output_arg(parser, *flags: str, kind: str = 'dir', also: Sequence[str] = (),
               default_in: Optional[Tuple[str, str]] = None, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` for a path the entry point writes. ``also``: format strings of
    further outputs derived from the value (``'{}.shards'``); ``default_in=(dest, name)``: when
    unset, the output is ``<value of dest>/name``."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f'output_arg {flags}: kind must be one of {OUTPUT_KINDS}, got {kind!r}')
    return _record(parser.add_argument(*flags, **kwargs), 'output', kind, also=tuple(also), default_in=default_in)


def plain_arg(parser, *flags: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` for an argument whose name sounds like a path but that names none
    (a model type, a key): declared so that the walking test does not ask for a role."""
    return _record(parser.add_argument(*flags, **kwargs), 'plain')


def describe_range(min: Optional[float] = None, max: Optional[float] = None, open_min: bool = False,
                   open_max: bool = False) -> str:
    """``>= 1``, ``> 0``, ``0 .. 1``, ``(0, 1)``: the valid range in words."""
    if min is not None and max is not None:
        if not open_min and not open_max:
            return f'{min:g} .. {max:g}'
        return f'{"(" if open_min else "["}{min:g}, {max:g}{")" if open_max else "]"}'
    if min is not None:
        return f'{">" if open_min else ">="} {min:g}'
    if max is not None:
        return f'{"<" if open_max else "<="} {max:g}'
    return 'any finite number'


def range_checker(type_: Callable[[str], Any], min: Optional[float] = None, max: Optional[float] = None,
                  open_min: bool = False, open_max: bool = False, what: str = 'value') -> Callable[[Any], Any]:
    """A function converting with ``type_`` and raising ``ArgumentTypeError`` (argparse's one-line
    error naming the option) for values outside the range, NaN and infinities."""
    words = describe_range(min, max, open_min, open_max)

    def convert(text: Any) -> Any:
        try:
            value = type_(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f'expected {getattr(type_, "__name__", "a number")}, got {text!r}')
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f'must be a finite number ({words}), got {text}')
        if (min is not None and (value <= min if open_min else value < min)) or \
                (max is not None and (value >= max if open_max else value > max)):
            raise argparse.ArgumentTypeError(f'must be {words}, got {text}')
        return value
    convert.__name__ = getattr(type_, '__name__', 'number')
    return convert


def number_arg(parser, *flags: Any, type: Optional[Callable[[str], Any]] = None, min: Optional[float] = None,
               max: Optional[float] = None, open_min: bool = False, open_max: bool = False,
               **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` for a number (or several, with ``nargs``) of ``type`` (``int``,
    ``float``; also accepted as the last positional argument: ``number_arg(p, '--seed', int)``)
    valid in ``min .. max`` (``open_min`` / ``open_max``: the bound itself excluded); the range is
    appended to the help text and checked at parse time (``None``, the unset default, is left alone)."""
    if flags and not isinstance(flags[-1], str):
        flags, type = flags[:-1], flags[-1]
    type = int if type is None else type
    words = describe_range(min, max, open_min, open_max)
    help_text = kwargs.get('help')
    if help_text is not argparse.SUPPRESS:
        kwargs['help'] = f'{help_text} ' if help_text else ''
        kwargs['help'] += f'[valid: {words}]'
    kwargs['type'] = range_checker(type, min, max, open_min, open_max)
    action = parser.add_argument(*flags, **kwargs)
    return _record(action, 'number', None, range=(min, max, open_min, open_max), number_type=type)


# ------------------------------------------------------------------------------------------------
# path checks

def _real(path: str) -> str:
    return osp.realpath(osp.abspath(osp.expanduser(path)))


def inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies inside it (real paths: symbolic links resolved)."""
    path, folder = _real(path), _real(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def expand_input(name: str, value: Any, kind: str) -> List[Tuple[str, str, str]]:
    """``(name, path, kind)`` of every path an input value stands for (``files`` and
    ``named_dirs`` give several)."""
    if value is None or value == '' or value == []:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in values:
        item = str(item)
        if kind == 'named_dirs':
            label, sep, folder = item.partition('=')
            if sep and folder:
                out.append((f'{name} {label.strip()}', folder, 'dir'))
            continue
        out.append((name, item, 'file' if kind == 'files' else kind))
    return out


def _conflict(out_name: str, out_path: str, out_kind: str, in_name: str, in_path: str, in_kind: str) -> Optional[str]:
    if in_kind == 'prefix':
        prefix = _real(in_path)
        if _real(out_path).startswith(prefix):
            return f'{out_name} {out_path} would be one of the input files {in_name} {in_path}*'
        if out_kind == 'dir' and inside(osp.dirname(prefix), out_path):
            return f'{out_name} {out_path} holds the input {in_name} {in_path}*'
        return None
    if inside(out_path, in_path):
        same = _real(out_path) == _real(in_path)
        return (f'{out_name} {out_path} is {"the" if same else "inside the"} input {in_name} {in_path}: '
                'the outputs would overwrite or mix with the inputs; choose another output location')
    if out_kind == 'dir' and inside(in_path, out_path):
        return (f'{out_name} {out_path} holds the input {in_name} {in_path}: the outputs would overwrite or '
                'mix with it; choose another name or location')
    return None


def check_output_path(name: str, path: str, kind: str = 'dir', inputs: Iterable[Tuple] = (),
                      holds: bool = True) -> None:
    """Raises :class:`PathConflictError` (one line naming ``name``) when the output ``path`` (a
    ``file`` or a ``dir``) is or lies inside one of the ``inputs`` (``(name, path)`` or ``(name,
    path, kind)``), when ``holds`` and it is a folder holding an input, when its kind does not match
    what exists, when a parent is a file, or when it cannot be written. Creates nothing."""
    if not path:
        return
    for item in inputs:
        in_name, in_value = item[0], item[1]
        in_kind = item[2] if len(item) > 2 else 'dir'
        for in_name_i, in_path, in_kind_i in expand_input(in_name, in_value, in_kind):
            message = _conflict(name, path, kind if holds else 'file', in_name_i, in_path, in_kind_i)
            if message:
                raise PathConflictError(message)
    absolute = osp.abspath(osp.expanduser(path))
    if kind == 'file':
        if path.endswith(('/', os.sep)) or osp.isdir(absolute):
            raise PathConflictError(f'{name} {path} is a folder, expected a file path')
    elif osp.exists(absolute) and not osp.isdir(absolute):
        raise PathConflictError(f'{name} {path} exists and is not a folder')
    probe = absolute
    while not osp.lexists(probe):
        parent = osp.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if osp.exists(probe) and probe != absolute and not osp.isdir(probe):
        raise PathConflictError(f'{name} {path}: {probe} is a file, so the folder cannot be created')
    target = probe if osp.isdir(probe) else osp.dirname(probe)
    if not os.access(target, os.W_OK | os.X_OK):
        raise PathConflictError(f'{name} {path}: cannot write in {target} '
                                '(permission denied or read-only file system)')


def check_paths(outputs: Iterable[PathSpec], inputs: Iterable[Tuple]) -> None:
    """:func:`check_output_path` for every ``(name, path, kind)`` output against every input."""
    inputs = list(inputs)
    for name, path, kind in outputs:
        check_output_path(name, path, kind, inputs)


# ------------------------------------------------------------------------------------------------
# parsers

def _option_name(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith('--')]
    return (longs or action.option_strings or [action.dest])[0]


def declared(parser: argparse.ArgumentParser, role: Optional[str] = None) -> List[argparse.Action]:
    """The parser's actions with a declared role (all, or only ``role``)."""
    return [a for a in parser._actions if getattr(a, 'io_role', None) and (role is None or a.io_role == role)]


def declared_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tuple[List[Tuple], List[PathSpec]]:
    """``(inputs, outputs)`` of parsed ``args``: ``(option, value, kind)`` each; derived outputs
    (``also``, ``default_in``) included."""
    inputs = [(_option_name(a), getattr(args, a.dest, None), a.io_kind) for a in declared(parser, 'input')]
    outputs: List[PathSpec] = []
    by_dest = {a.dest: a for a in parser._actions}
    for action in declared(parser, 'output'):
        name, value = _option_name(action), getattr(args, action.dest, None)
        if not value and action.io_default_in:
            dest, file_name = action.io_default_in
            base = getattr(args, dest, None)
            if base:
                value = osp.join(base, file_name)
                name = f'{name} (default: {_option_name(by_dest[dest])}/{file_name})'
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if not item:
                continue
            outputs.append((name, str(item), action.io_kind))
            outputs.extend((f'{name} ({pattern.format("OUT")})', pattern.format(str(item).rstrip('/')), 'dir')
                           for pattern in action.io_also)
    return inputs, outputs


def _one_line_error(parser: argparse.ArgumentParser) -> Callable[[str], None]:
    def error(message: str) -> None:
        parser.print_usage(sys.stderr)
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)
    return error


def parse_checked(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                  inputs: Iterable[Tuple] = (), outputs: Iterable[PathSpec] = ()) -> argparse.Namespace:
    """Parses ``argv`` (numbers checked against their ranges: ``error: argument ...`` and exit
    status 2), then checks every declared output (and ``outputs``) against every declared input
    (and ``inputs``); raises :class:`PathConflictError` before any work."""
    parser.error = _one_line_error(parser)  # 'error: ...' at the start of the line, as run_cli prints
    args = parser.parse_args(argv)
    declared_in, declared_out = declared_paths(parser, args)
    check_paths(list(declared_out) + list(outputs), list(declared_in) + list(inputs))
    return args
