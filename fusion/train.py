"""Training entry point: ``python fusion/train.py -opt options/train_sage.yml [--auto_resume]``."""
import os.path as osp
import sys


ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

import fusion  # noqa: E402,F401  (basicsr fixes + registries)
from fusion.pipeline import train_pipeline  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.option_parser import build_parser  # noqa: E402,F401  (the arguments; tests/test_entry_io.py)
from fusion.utils.options_util import option_paths  # noqa: E402,F401  (the option file's inputs and outputs)


if __name__ == '__main__':
    # bad input (missing files, unreadable images, wrong options) ends with one clear line
    run_cli(lambda: train_pipeline(ROOT), strip_debug=False)
