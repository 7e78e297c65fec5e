"""Option validation: every key of a train/test YAML is checked before any work or folder creation.

Where the valid keys come from (docs/options.md explains how to declare yours):

* registered components (``network_*``, losses ``train.*_opt``, ``datasets.*``, ``val.metrics.*``,
  optimizers ``train.optim_*``, schedulers): the registered class or function. Archs and losses:
  the constructor's signature (a ``**kwargs`` signature accepts anything); metrics: the function's
  explicit keyword parameters plus ``better``; datasets (built from one ``opt`` dict): their
  ``OPTIONS`` class attribute (no attribute: any key) plus basicsr's loader keys; optimizers and
  schedulers: the ``torch.optim`` class signature. A new arch gets the check for free.
* the framework's own sections: schemas declared next to the code that reads them, with
  :func:`declare_options` (module level, e.g. the training loop in ``fusion/training.py``) or an
  ``OPTIONS`` class attribute of the model named by ``model_type`` (merged along its MRO, so
  ``FusionBaseModel`` declares ``val`` and ``SAGEModel`` adds ``train``).

A schema is a dict ``key -> spec``; a key may be a glob (``optim_*``). A spec is a type name
(``'int'``, ``'float'``, ``'number'``, ``'bool'``, ``'str'``, ``'list'``, ``'dict'``, ``'any'``, or
alternatives ``'int|list'``), a :class:`Choice`, a nested schema dict, a :class:`Component`, a
:class:`DictOf`, or :class:`Required` around any of those. ``~`` (None) is accepted everywhere except
for required keys. Numeric strings such as ``"2e-3"`` (PyYAML reads ``2e-3`` without a dot as a
string) are accepted where a number is expected and converted in place, so the optimizer gets a float.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple


__all__ = ['OptionError', 'Choice', 'Component', 'DictOf', 'Range', 'Required', 'declare_options',
           'validate_options', 'component_schema', 'validate_file_options']


class OptionError(ValueError):
    """An option file asks for something that does not exist or has the wrong type."""


class Choice:
    """One of the given literal values."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def __repr__(self) -> str:
        return ' | '.join(repr(v) for v in self.values)


class Component:
    """A dict ``{type: <registered name>, ...}``: keys come from what ``type`` names. ``kind`` is one
    of ``arch``, ``loss``, ``dataset``, ``metric``, ``model``, ``optimizer``, ``scheduler``,
    ``patch_source``; ``extra`` adds keys read by the caller rather than the component."""

    def __init__(self, kind: str, extra: Optional[dict] = None, default_type: Optional[str] = None) -> None:
        self.kind = kind
        self.extra = extra or {}
        self.default_type = default_type  # the type used when the entry names none


class DictOf:
    """A dict of user-named entries (``datasets``, ``val.metrics``), each checked with ``spec``."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


class Range:
    """A number (``kind``: ``int``, ``float`` or ``number``) in ``min .. max`` (``open_min`` /
    ``open_max``: the bound excluded): the valid range of a numeric option (docs/options.md)."""

    def __init__(self, kind: str = 'int', min: Optional[float] = None, max: Optional[float] = None,
                 open_min: bool = False, open_max: bool = False) -> None:
        self.kind, self.min, self.max, self.open_min, self.open_max = kind, min, max, open_min, open_max

    def __repr__(self) -> str:
        from fusion.utils.entry_io import describe_range
        return describe_range(self.min, self.max, self.open_min, self.open_max)

    def outside(self, value: float) -> bool:
        return (self.min is not None and (value <= self.min if self.open_min else value < self.min)) or \
            (self.max is not None and (value >= self.max if self.open_max else value > self.max))


class Required:
    """The key must be present and not ``~``."""

    def __init__(self, spec: Any = 'any') -> None:
        self.spec = spec


# phase ('both' | 'train' | 'test') -> declared schema (deep-merged)
_DECLARED: Dict[str, dict] = {'both': {}, 'train': {}, 'test': {}}
# checks run on the whole option dict after the keys (e.g. two options that must agree)
_CROSS_CHECKS: List[Tuple[str, Callable[[dict], Optional[str]]]] = []

_NUMBER = re.compile(r'^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$')


def _unwrap(spec: Any) -> Tuple[Any, bool]:
    return (spec.spec, True) if isinstance(spec, Required) else (spec, False)


def _merge(into: dict, schema: dict) -> dict:
    """Deep merge: sections (dicts, also inside Required) are merged key by key; a Required on
    either side stays; a :class:`Range` stays when the other side names only its type; other
    specs are replaced."""
    for key, spec in schema.items():
        new, new_req = _unwrap(spec)
        old, old_req = _unwrap(into.get(key))
        if isinstance(new, dict):
            merged = _merge(_merge({}, old) if isinstance(old, dict) else {}, new)
            into[key] = Required(merged) if (new_req or old_req) else merged
        elif isinstance(old, Range) and new == old.kind:  # a plain type keeps the range declared elsewhere
            into[key] = Required(old) if (new_req or old_req) else old
        else:
            into[key] = Required(new) if old_req and not new_req else spec
    return into


def declare_options(schema: dict, phase: str = 'both') -> dict:
    """Adds ``schema`` (keys of the option file, nested by section) to what the validator accepts
    for ``phase`` ('both', 'train' or 'test'). Call it at module level next to the code that reads
    the keys. Returns ``schema``."""
    if phase not in _DECLARED:
        raise ValueError(f'declare_options: phase must be one of {list(_DECLARED)}, got {phase!r}')
    _merge(_DECLARED[phase], schema)
    return schema


def declare_check(check: Callable[[dict], Optional[str]], phase: str = 'both') -> None:
    """Registers ``check(opt) -> error message or None``, run after the keys are valid."""
    _CROSS_CHECKS.append((phase, check))


# ---------------------------------------------------------------------------------------------- components

# component kinds beyond basicsr's registries (e.g. the data pipeline's patch sources) and
# scheduler classes beyond torch's: registered by the modules that define them, so this module
# imports nothing of the package above it
_EXTRA_KINDS: Dict[str, Any] = {}
_EXTRA_SCHEDULERS: Dict[str, Any] = {}


def register_component_kind(kind: str, registry: Any) -> None:
    """Makes ``Component(kind)`` resolve ``type`` names in ``registry`` (a basicsr ``Registry``)."""
    _EXTRA_KINDS[kind] = registry


def register_scheduler(name: str, cls: Any) -> None:
    """Makes ``train.scheduler*: {type: name}`` valid, with ``cls``'s signature as its keys."""
    _EXTRA_SCHEDULERS[name] = cls


def _registry(kind: str):
    if kind == 'arch':
        from basicsr.utils.registry import ARCH_REGISTRY as reg
    elif kind == 'loss':
        from basicsr.utils.registry import LOSS_REGISTRY as reg
    elif kind == 'dataset':
        from basicsr.utils.registry import DATASET_REGISTRY as reg
    elif kind == 'metric':
        from basicsr.utils.registry import METRIC_REGISTRY as reg
    elif kind == 'model':
        from basicsr.utils.registry import MODEL_REGISTRY as reg
    else:
        return _EXTRA_KINDS.get(kind)
    return reg


def _torch_classes(kind: str) -> Dict[str, Any]:
    import torch
    if kind == 'optimizer':
        return {n: c for n, c in vars(torch.optim).items()
                if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}
    from torch.optim import lr_scheduler
    classes = {n: c for n, c in vars(lr_scheduler).items()
               if inspect.isclass(c) and issubclass(c, lr_scheduler.LRScheduler) and not n.startswith('_')
               and c is not lr_scheduler.LRScheduler}
    classes.update(_EXTRA_SCHEDULERS)
    return classes


def resolve_component(kind: str, name: Any) -> Tuple[Any, List[str]]:
    """The registered object ``name`` of ``kind`` (None when unknown) and the registered names."""
    reg = _registry(kind)
    names = sorted(reg.keys()) if reg is not None else sorted(_torch_classes(kind))
    if not isinstance(name, str):
        return None, names
    if reg is not None:
        return (reg.get(name) if name in reg else None), names
    return _torch_classes(kind).get(name), names


def _spec_of_parameter(param: inspect.Parameter) -> Any:
    default = param.default
    if isinstance(default, bool):
        return 'bool'
    if isinstance(default, (int, float)):
        return 'number'
    return 'any'


def _signature_schema(obj: Any, skip: Iterable[str]) -> Optional[dict]:
    """Keys of ``obj``'s signature (None: it takes ``**kwargs``, anything goes)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    schema = {}
    for name, param in sig.parameters.items():
        if name in skip or param.kind == param.VAR_POSITIONAL:
            continue
        if param.kind == param.VAR_KEYWORD:
            return None
        schema[name] = _spec_of_parameter(param)
    return schema


def component_schema(kind: str, obj: Any) -> Optional[dict]:
    """Valid keys (besides ``type``) of the component ``obj`` of ``kind``; None: any key."""
    if kind in ('arch', 'loss', 'patch_source'):
        return _signature_schema(obj, ())
    if kind == 'metric':
        # basicsr passes every option key to the function; its **kwargs would accept typos, so only
        # the named parameters (besides the images) and ``better`` (read by basicsr's best-value log)
        sig = inspect.signature(obj)
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        schema = {n: _spec_of_parameter(p) for n, p in sig.parameters.items()
                  if n not in ('img', 'img_ir', 'img_vis', 'img2') and p.kind in named}
        schema['better'] = Choice('higher', 'lower')
        return schema
    if kind == 'optimizer':
        return _signature_schema(obj, ('params',))
    if kind == 'scheduler':
        schema = _signature_schema(obj, ('optimizer',))
        if schema is not None and 'T_max' in schema:
            schema['T_max'] = 'any'  # 'auto' or a number
        return schema
    if kind in ('dataset', 'model'):
        options = {}
        declared = False
        for cls in reversed(getattr(obj, '__mro__', (obj, ))):
            if 'OPTIONS' in vars(cls):
                _merge(options, vars(cls)['OPTIONS'])
                declared = True
        return options if declared else None
    return None


# ---------------------------------------------------------------------------------------------- checking

class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: List[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f'{where}: {message}')

    # -- sections
    def section(self, value: Any, schema: dict, where: str) -> None:
        if not isinstance(value, dict):
            self.error(where, f'expected a section (key: value lines), got {value!r}')
            return
        for key, spec in schema.items():
            if isinstance(spec, Required) and '*' not in key and value.get(key) is None:
                self.error(_join(where, key), 'required option is missing')
        for key in list(value):
            spec = _lookup(schema, key)
            if spec is None:
                hint = _suggest(key, schema)
                self.error(_join(where, key), f'unknown option{hint}')
                continue
            self.value(value, key, spec, _join(where, key))

    def value(self, parent: dict, key: Any, spec: Any, where: str) -> None:
        value = parent[key]
        if isinstance(spec, Required):
            if value is None:
                self.error(where, 'required option is missing')
                return
            spec = spec.spec
        if value is None:
            return
        if isinstance(spec, dict):
            self.section(value, spec, where)
        elif isinstance(spec, Component):
            self.component(value, spec, where)
        elif isinstance(spec, DictOf):
            if not isinstance(value, dict):
                self.error(where, f'expected a section of named entries, got {value!r}')
                return
            for name in list(value):
                self.value(value, name, spec.spec, _join(where, name))
        elif isinstance(spec, Range):
            if self.typed(parent, key, spec.kind, where) and spec.outside(parent[key]):
                self.error(where, f'must be {spec!r}, got {parent[key]!r}')
        elif isinstance(spec, Choice):
            if not _is_choice(value, spec.values):
                self.error(where, f'must be one of {spec}, got {value!r}{_suggest_value(value, spec.values)}')
        else:
            self.typed(parent, key, str(spec), where)

    def typed(self, parent: dict, key: Any, spec: str, where: str) -> bool:
        value = parent[key]
        kinds = spec.split('|')
        if 'any' in kinds:
            return True
        for kind in kinds:
            ok, converted = _convert(value, kind)
            if ok:
                if converted is not value:
                    parent[key] = converted
                return True
        wanted = ' or '.join({'number': 'a number', 'float': 'a number', 'int': 'an integer', 'bool': 'true/false',
                              'str': 'a string', 'label': 'a name', 'list': 'a list',
                              'dict': 'a section'}.get(k, k) for k in kinds)
        self.error(where, f'expected {wanted}, got {value!r}')
        return False

    def component(self, value: Any, spec: Component, where: str) -> None:
        if not isinstance(value, dict):
            self.error(where, f'expected a section with a type, got {value!r}')
            return
        type_key = 'model_type' if spec.kind == 'model' else 'type'
        name = value.get(type_key, spec.default_type)
        if name is None:
            self.error(_join(where, type_key), 'required option is missing')
            return
        obj, names = resolve_component(spec.kind, name)
        if obj is None:
            close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
            hint = f'; did you mean {" or ".join(close)}?' if close else f'; registered: {", ".join(names[:30])}'
            self.error(_join(where, type_key), f'no {spec.kind} named {name!r} is registered{hint}')
            return
        schema = component_schema(spec.kind, obj)
        if schema is None:  # the component accepts any key
            for key, sub in spec.extra.items():
                if key in value and '*' not in key:
                    self.value(value, key, sub, _join(where, key))
            return
        full = {type_key: 'str'}
        _merge(full, spec.extra)
        _merge(full, schema)
        self.section(value, full, where)


def _join(where: str, key: Any) -> str:
    return f'{where}.{key}' if where else str(key)


def _lookup(schema: dict, key: Any) -> Any:
    if key in schema:
        return schema[key]
    for pattern, spec in schema.items():
        if '*' in pattern and fnmatch.fnmatchcase(str(key), pattern):
            return spec
    return None


def _suggest(key: Any, schema: dict) -> str:
    names = [k for k in schema if '*' not in k]
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    if close:
        return f' (did you mean {close[0]}?)'
    patterns = [k for k in schema if '*' in k]
    valid = sorted(names)[:25] + patterns
    return f' (valid here: {", ".join(valid)})' if valid else ' (this section takes no options)'


def _is_choice(value: Any, choices: Iterable[Any]) -> bool:
    # 0 == False and 1 == True in Python: a bool choice matches only a bool (``amp: 0`` is no ``false``)
    return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices)


def _suggest_value(value: Any, choices: Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def _convert(value: Any, kind: str) -> Tuple[bool, Any]:
    if kind == 'bool':
        return isinstance(value, bool), value
    if kind in ('number', 'float', 'int'):
        if isinstance(value, bool):
            return False, value
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            number = float(value)
            if kind == 'int' and not number.is_integer():
                return False, value  # "0.5" is no integer (never truncated to 0)
            plain_integer = number.is_integer() and 'e' not in value.lower() and '.' not in value
            value = int(number) if kind == 'int' or plain_integer else number
        if kind == 'int':
            return isinstance(value, int) or (isinstance(value, float) and value.is_integer()), value
        if kind == 'float' and isinstance(value, int):
            return True, float(value)
        return isinstance(value, (int, float)), value
    if kind == 'str':
        return isinstance(value, str), value
    if kind == 'label':  # a name: a string, or a number read as one (``name: 2023``)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    if kind == 'list':
        return isinstance(value, (list, tuple)), value
    if kind == 'dict':
        return isinstance(value, dict), value
    raise ValueError(f'option schema: unknown type name {kind!r}')


def validate_options(opt: dict, is_train: bool, source: str = 'options') -> None:
    """Checks every key of ``opt`` (as the user wrote it, plus ``--force_yml``) against the
    declared schemas and the registered components; converts numeric strings in place. Raises
    :class:`OptionError` naming ``source``, the option and the closest valid key or name.

    The caller imports what declares the keys first: ``import fusion`` (registries, models,
    datasets) and, for training options, ``fusion.training`` (the loop's keys)."""
    phase = 'train' if is_train else 'test'
    schema = _merge(_merge({}, _DECLARED['both']), _DECLARED[phase])
    checker = _Checker(source)
    if not isinstance(opt, dict):
        raise OptionError(f'{source}: expected options as key: value lines, got {type(opt).__name__}')
    model_name = opt.get('model_type')
    model_check = None
    if model_name is None:
        checker.error('model_type', 'required option is missing')
    else:
        model_cls, names = resolve_component('model', model_name)
        if model_cls is None:
            close = difflib.get_close_matches(str(model_name), names, n=3, cutoff=0.5)
            hint = f'did you mean {" or ".join(close)}?' if close else f'registered: {", ".join(names)}'
            checker.error('model_type', f'no model named {model_name!r} is registered; {hint}')
        else:
            _merge(schema, component_schema('model', model_cls) or {})
            model_check = getattr(model_cls, 'check_options', None)
    if checker.errors:
        raise OptionError(f'{source}: ' + '; '.join(checker.errors))
    checker.section(opt, schema, '')
    if not checker.errors and model_name is not None and callable(model_check):
        message = model_check(opt)
        if message:
            checker.errors.append(message)
    if not checker.errors:
        for check_phase, check in _CROSS_CHECKS:
            if check_phase in ('both', phase):
                message = check(opt)
                if message:
                    checker.errors.append(message)
    if checker.errors:
        raise OptionError(f'{source}: ' + '; '.join(checker.errors))


def validate_file_options(values: Any, schema: dict, source: str,
                          checks: Iterable[Callable[[dict], Optional[str]]] = ()) -> None:
    """Checks a stand-alone option file that is not a train/test YAML (e.g. the segmentation
    protocol's presets and dataset files) against ``schema`` exactly as :func:`validate_options`
    checks a section: unknown keys with the closest valid one, types, registered components,
    numeric strings converted in place. Then each ``check(values) -> message or None`` (value
    rules a schema cannot state). Raises one :class:`OptionError` naming ``source``."""
    if not isinstance(values, dict):
        raise OptionError(f'{source}: expected options as key: value lines, got {type(values).__name__}')
    checker = _Checker(source)
    checker.section(values, schema, '')
    if not checker.errors:
        for check in checks:
            message = check(values)
            if message:
                checker.errors.append(message)
    if checker.errors:
        raise OptionError(f'{source}: ' + '; '.join(checker.errors))
