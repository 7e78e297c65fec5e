"""What every command-line script shares: bad input ends with one clear line, not a traceback.

``--debug`` on any entry point (or ``FUSION_DEBUG=1`` in the environment) shows the traceback
instead. fusion/train.py and fusion/test.py keep basicsr's meaning of ``--debug`` as well (debug
run name, frequent logs); the scripts take it out of their arguments before parsing.
"""
from __future__ import annotations

import os
import os.path as osp
import sys
from typing import Callable, Dict, List, Optional, Tuple, Type

from fusion.utils.entry_io import input_arg
from fusion.utils.img_util import ImageReadError


# bad files and options (OptionError, ImageReadError, MaskCacheError ... are ValueErrors; missing,
# unwritable or read-only paths are OSErrors) and non-finite training losses (FloatingPointError)
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (ImageReadError, ValueError, OSError, ArithmeticError)


def debug_requested(argv: Optional[list] = None) -> bool:
    """``--debug`` among the arguments or ``FUSION_DEBUG`` set (not empty, not 0)."""
    argv = sys.argv[1:] if argv is None else argv
    return '--debug' in argv or os.environ.get('FUSION_DEBUG', '') not in ('', '0')


def run_cli(main: Callable[[], Optional[int]], errors: Tuple[Type[BaseException], ...] = INPUT_ERRORS,
            exit_code: int = 2, strip_debug: bool = True) -> None:
    """Runs ``main()`` and exits with its return code; errors of the given types (bad files,
    bad options) print ``error: <message naming the file>`` and exit with ``exit_code``.
    ``strip_debug``: remove ``--debug`` from ``sys.argv`` first (for parsers that do not know it)."""
    debug = debug_requested()
    if strip_debug:
        sys.argv[1:] = [a for a in sys.argv[1:] if a != '--debug']
    try:
        code = main()
    except errors as err:
        if debug:
            raise
        message = str(err) or type(err).__name__
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message = f'{err.filename}: {message}'
        print(f'error: {message}', file=sys.stderr)  # one line; --debug / FUSION_DEBUG=1 show the traceback
        sys.exit(exit_code)
    sys.exit(code or 0)


def add_pair_arguments(parser, label: Optional[str] = None, required: bool = True) -> None:
    """The ``--ir`` / ``--vis`` (and optionally ``--label``) folder arguments every data script takes
    (inputs, fusion.utils.entry_io); ``label`` is the help text of ``--label`` (None: no such
    argument); ``required=False`` for a script with a mode that needs no images (it checks them itself)."""
    input_arg(parser, '--ir', kind='dir', required=required, help='folder of infrared images')
    input_arg(parser, '--vis', kind='dir', required=required, help='folder of visible images (same base names)')
    if label is not None:
        input_arg(parser, '--label', kind='dir', help=label)


def parse_named_folders(items: List[str], option: str = '--fused',
                        check_name: Optional[Callable[[str], object]] = None) -> Dict[str, str]:
    """``NAME=DIR`` arguments (one per method) as ``{name: folder}``, in the given order; a
    malformed item, a repeated name or a missing folder is an error naming it. ``check_name``
    may reject names (e.g. names that become folder names)."""
    methods: Dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition('=')
        name = name.strip()
        if not sep or not name or not folder:
            raise ValueError(f'{option} expects NAME=DIR, got {item!r}')
        if check_name is not None:
            check_name(name)
        if name in methods:
            raise ValueError(f'method name {name!r} given twice')
        if not osp.isdir(folder):
            raise ImageReadError(f'{folder}: no such folder (fused images of method {name!r})')
        methods[name] = folder
    return methods
