"""Registration of infrared/visible pairs before fusion (docs/registration.md): a data step on
OpenCV / NumPy only; it imports no network."""
from fusion.registration.estimate import (MODELS, RegistrationOptions, RegistrationResult, register_arrays,
                                          score_transform)
from fusion.registration.folders import register_folders
from fusion.registration.transforms import load_transform


__all__ = ['MODELS', 'RegistrationOptions', 'RegistrationResult', 'register_arrays', 'score_transform',
           'register_folders', 'load_transform']
