"""Zoo entries: one YAML file per published method in ``options/zoo/<method>.yml`` (pure data).

==============  ==============================================================================
key             meaning
==============  ==============================================================================
name            the ``--method`` name (lower case; equals the file name)
title           the method's name as published (also the folder name of its references)
paper           authors, title, venue, year
year            publication year (int)
network         ``{type: <ARCH_REGISTRY name>, <constructor kwargs>}``
weights         ``folder`` (sub-folder under a ``--weights-dir``), ``files`` (names as published),
                ``source`` (where users get them; never fetched), ``licence``, ``bundled`` (bool)
conventions     the authors' test-time conventions (:mod:`fusion.zoo.conventions`; defaults
                for keys left out)
references      reference sets for ``scripts/verify_zoo.py``: ``{set: <name in
                fusion.zoo.references.REFERENCE_SETS>, folder: <sub-folder, for sets with
                one per method>, conventions: <overrides, only where the set was made by
                another procedure, with note>, note: <why>}``
==============  ==============================================================================
"""
from __future__ import annotations

import difflib
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from fusion.zoo.conventions import resolve_conventions


ZOO_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'options', 'zoo')
SAGE = 'sage'  # the released SAGE student (fusion.inference), not an entry file
ENTRY_KEYS = ('name', 'title', 'paper', 'year', 'network', 'weights', 'conventions', 'references')
WEIGHT_KEYS = ('folder', 'files', 'source', 'licence', 'bundled')
REFERENCE_KEYS = ('set', 'folder', 'conventions', 'note')


@dataclass
class ZooEntry:
    name: str
    title: str
    paper: str
    year: int
    network: Dict[str, Any]
    weights: Dict[str, Any]
    conventions: Dict[str, Any]
    references: List[Dict[str, Any]] = field(default_factory=list)
    path: str = ''

    @property
    def arch_type(self) -> str:
        return self.network['type']


def _entry_path(name: str) -> str:
    return osp.join(ZOO_DIR, f'{name}.yml')


def list_zoo_methods() -> List[str]:
    """'sage' and every entry of options/zoo/ (``test_*.yml`` are test options, not entries)."""
    names = sorted(osp.splitext(f)[0] for f in os.listdir(ZOO_DIR)
                   if f.endswith('.yml') and not f.startswith('test_')) if osp.isdir(ZOO_DIR) else []
    return [SAGE] + names


def closest_methods(name: str, n: int = 3) -> List[str]:
    methods = list_zoo_methods()
    close = difflib.get_close_matches(name.lower(), methods, n=n, cutoff=0.4)
    return close or [m for m in methods if m.startswith(name.lower()[:2])][:n]


def unknown_method_message(name: str) -> str:
    close = closest_methods(name)
    hint = f'; closest: {", ".join(close)}' if close else ''
    return f'unknown method {name!r} (known: {", ".join(list_zoo_methods())}){hint}'


def _check(cond: bool, path: str, what: str) -> None:
    if not cond:
        raise ValueError(f'{path}: {what}')


def validate_entry(raw: Any, path: str) -> ZooEntry:
    """A parsed entry file -> :class:`ZooEntry`; any missing, unknown or mistyped key is one
    ``ValueError`` naming the file and the key."""
    _check(isinstance(raw, dict), path, 'a zoo entry is a mapping of ' + ', '.join(ENTRY_KEYS))
    unknown = [k for k in raw if k not in ENTRY_KEYS]
    _check(not unknown, path, f'unknown key(s) {unknown} (known: {", ".join(ENTRY_KEYS)})')
    for key in ENTRY_KEYS[:6]:
        _check(key in raw, path, f'missing key {key!r}')
    stem = osp.splitext(osp.basename(path))[0]
    _check(raw['name'] == stem, path, f'name {raw["name"]!r} differs from the file name {stem!r}')
    _check(isinstance(raw['year'], int), path, f'year must be an integer, got {raw["year"]!r}')
    net = raw['network']
    _check(isinstance(net, dict) and isinstance(net.get('type'), str), path, 'network needs {type: <arch name>}')
    w = raw['weights']
    _check(isinstance(w, dict), path, f'weights must be a mapping of {", ".join(WEIGHT_KEYS)}')
    missing = [k for k in WEIGHT_KEYS if k not in w]
    _check(not missing, path, f'weights lacks {missing}')
    _check(isinstance(w['files'], list) and w['files'] and all(isinstance(f, str) for f in w['files']), path,
           'weights.files must be a non-empty list of file names')
    _check(isinstance(w['bundled'], bool), path, 'weights.bundled must be true or false')
    conventions = resolve_conventions(raw.get('conventions'), path)
    refs = raw.get('references') or []
    _check(isinstance(refs, list), path, 'references must be a list')
    for ref in refs:
        _check(isinstance(ref, dict) and 'set' in ref, path, f'each reference needs a set, got {ref!r}')
        bad = [k for k in ref if k not in REFERENCE_KEYS]
        _check(not bad, path, f'reference {ref["set"]}: unknown key(s) {bad} (known: {", ".join(REFERENCE_KEYS)})')
        if ref.get('conventions'):
            _check(bool(ref.get('note')), path, f'reference {ref["set"]}: overridden conventions need a note (why)')
            resolve_conventions({**(raw.get('conventions') or {}), **ref['conventions']}, f'{path} ({ref["set"]})')
    return ZooEntry(name=raw['name'], title=str(raw['title']), paper=str(raw['paper']), year=raw['year'],
                    network=dict(net), weights=dict(w), conventions=conventions, references=list(refs), path=path)


def load_zoo_entry(name: str) -> ZooEntry:
    """The entry of method ``name`` (options/zoo/<name>.yml); unknown: ``ValueError`` listing the
    closest names."""
    path = _entry_path(name.lower())
    if name.lower() == SAGE or not osp.isfile(path):
        raise ValueError(unknown_method_message(name) if name.lower() != SAGE
                         else "'sage' is the SAGE student (fusion.inference.load_student), not a zoo entry")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f'{path}: not valid YAML ({str(err).splitlines()[0]})') from err
    return validate_entry(raw, path)


def weights_path(entry: ZooEntry, weights_dir: str) -> Optional[str]:
    """Where the entry's published files lie under ``weights_dir`` (``<dir>/<folder>``, or the
    directory itself when it holds them); None when they are not all there."""
    for folder in (osp.join(weights_dir, entry.weights['folder']), weights_dir):
        if all(osp.isfile(osp.join(folder, f)) for f in entry.weights['files']):
            return folder
    return None
