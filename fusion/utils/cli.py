"""What every command-line script shares: bad input ends with one clear line, not a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Tuple, Type

from fusion.utils.img_util import ImageReadError


INPUT_ERRORS: Tuple[Type[BaseException], ...] = (ImageReadError, ValueError, OSError)


def run_cli(main: Callable[[], Optional[int]], errors: Tuple[Type[BaseException], ...] = INPUT_ERRORS,
            exit_code: int = 2) -> None:
    """Runs ``main()`` and exits with its return code; errors of the given types (bad files,
    bad options) print ``error: <message naming the file>`` and exit with ``exit_code``."""
    try:
        code = main()
    except errors as err:
        if os.environ.get('FUSION_DEBUG'):
            raise
        print(f'error: {err}\n(set FUSION_DEBUG=1 to see the traceback)', file=sys.stderr)
        sys.exit(exit_code)
    sys.exit(code or 0)


def add_pair_arguments(parser, label: Optional[str] = None, required: bool = True) -> None:
    """The ``--ir`` / ``--vis`` (and optionally ``--label``) folder arguments every data script takes;
    ``label`` is the help text of ``--label`` (None: no such argument); ``required=False`` for a
    script with a mode that needs no images (it checks them itself)."""
    parser.add_argument('--ir', required=required, help='folder of infrared images')
    parser.add_argument('--vis', required=required, help='folder of visible images (same base names)')
    if label is not None:
        parser.add_argument('--label', help=label)
