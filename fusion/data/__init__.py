"""Every `*_dataset.py` in this folder is imported so that its registered classes can be named
by `type:` in the options."""
import importlib
from os import path as osp

from basicsr.utils import scandir


_folder = osp.dirname(osp.abspath(__file__))
_names = sorted(osp.splitext(osp.basename(v))[0] for v in scandir(_folder) if v.endswith('_dataset.py'))
_modules = [importlib.import_module(f'fusion.data.{name}') for name in _names]
