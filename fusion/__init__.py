"""IVIF fusion framework (SAGE) on basicsr registries.

The basicsr fixes must run before anything imports basicsr, so they come first.
"""
from fusion.utils import compat as _compat


_compat.apply_pre_import()

import basicsr  # noqa: E402,F401  (registries; must follow the fixes above)


_compat.apply_post_import()

from fusion import archs, data, losses, metrics, models  # noqa: E402,F401


__version__ = '0.1.0'
