"""The reference sets of published fused images (the peers collection, see its MANIFEST) in one
table; an entry's ``references`` name a set (and, for sets with one folder per method, the folder).

Each set gives path patterns relative to the collection root: ``{name}`` is a pair's name (found
from the fused files), ``{folder}`` the entry's folder. ``jpeg``: the references are lossy, so
``scripts/verify_zoo.py`` reports the JPEG's own re-encoding error beside the PSNR.
"""
from __future__ import annotations

import glob
import os.path as osp
import re
from typing import Dict, List, NamedTuple, Optional


class ReferenceSet(NamedTuple):
    ir: str
    vis: str
    fused: str
    jpeg: bool
    doc: str


REFERENCE_SETS: Dict[str, ReferenceSet] = {
    'tno': ReferenceSet('tno/ir/{name}.png', 'tno/vi/{name}.png', 'tno/fused/{folder}/{name}.png', False,
                        '21 TNO pairs, outputs as published in Linfeng-Tang/Image-Fusion (lossless PNG)'),
    'ifcnn_own': ReferenceSet('ifcnn_own/inputs/{name}_IR.png', 'ifcnn_own/inputs/{name}_Vis.png',
                              'ifcnn_own/fused/IFCNN-MAX-IV-{name}.png', False,
                              'IFCNN\'s own IR-visible pairs and MAX-rule results (uzeful/IFCNN)'),
    'didfuse_own': ReferenceSet('didfuse_own/ir/{name}.bmp', 'didfuse_own/vi/{name}.bmp',
                                'didfuse_own/fused/{name}.png', False,
                                'DIDFuse\'s own TNO test pairs and results (pairs 1-20)'),
    'ydtr_own': ReferenceSet('ydtr_own/inputs/IR_{name}.bmp', 'ydtr_own/inputs/VIS_{name}.bmp',
                             'ydtr_own/fused/{name}.bmp', False, 'YDTR\'s one published example pair'),
    'vifb': ReferenceSet('vifb/ir/{name}.jpg', 'vifb/vi/{name}.jpg', 'vifb/fused/{folder}/{name}.jpg', True,
                         'VIFB\'s pairs and fused images (JPEG, written by MATLAB\'s imwrite, quality 75)'),
}


def reference_pairs(peers: str, set_name: str, folder: Optional[str] = None) -> List[dict]:
    """``[{'name', 'ir_path', 'vis_path', 'ref_path'}]`` of a reference set under ``peers``, sorted
    by name; ``ValueError`` for an unknown set, a missing folder or a pair without its inputs."""
    if set_name not in REFERENCE_SETS:
        raise ValueError(f'unknown reference set {set_name!r} (known: {", ".join(REFERENCE_SETS)})')
    spec = REFERENCE_SETS[set_name]
    if '{folder}' in spec.fused and not folder:
        raise ValueError(f'reference set {set_name} needs a folder (one per method)')
    fused = osp.join(peers, spec.fused.replace('{folder}', folder or ''))
    head, tail = fused.split('{name}')
    files = sorted(glob.glob(glob.escape(head) + '*' + glob.escape(tail)))
    if not files:
        raise ValueError(f'{osp.dirname(fused)}: no reference images of set {set_name}')
    pattern = re.compile(re.escape(head) + '(.+)' + re.escape(tail) + '$')
    pairs = []
    for path in files:
        name = pattern.match(path).group(1)
        item = {'name': name, 'ref_path': path, 'ir_path': osp.join(peers, spec.ir.format(name=name)),
                'vis_path': osp.join(peers, spec.vis.format(name=name))}
        for key in ('ir_path', 'vis_path'):
            if not osp.isfile(item[key]):
                raise ValueError(f'{item[key]}: missing input of reference {path}')
        pairs.append(item)
    return sorted(pairs, key=lambda p: (len(p['name']), p['name']))
