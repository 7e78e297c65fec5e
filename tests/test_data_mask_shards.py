"""Sharded mask generation (fusion/data/mask_shards.py, scripts/generate_masks.py --shard /
--merge-shards / torchrun) with the tiny random SAM: the merged cache holds exactly the entries
(same bytes) of a single-process run, shards resume, and the merge refuses what is not right."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from conftest import ROOT
from test_data_mask_cache import IR, NAMES, TINY_SAM, VIS, _run_script

import fusion  # noqa: F401
from fusion.data.mask_cache import MaskCache, MaskCacheError, meta_differences
from fusion.data.mask_generation import generate_mask_cache
from fusion.data.mask_shards import generate_mask_shard, merge_mask_shards, shard_dir, shard_names, shard_path


pytestmark = pytest.mark.usefixtures('one_torch_thread')

TINY_SAM_FLAGS = ['--model-type', 'tiny', '--device', 'cpu', '--points-per-side', '4', '--crop-n-layers', '0',
                  '--pred-iou-thresh', '1.0', '--stability-score-thresh', '0', '--min-mask-region-area', '0',
                  '--max-masks', '3', '--quiet']


@pytest.fixture(scope='module')
def single(tmp_path_factory):
    """The reference: one process, all pairs."""
    out = str(tmp_path_factory.mktemp('single') / 'single.lmdb')
    generate_mask_cache(IR, VIS, out, TINY_SAM, max_masks=3, progress=False)
    cache = MaskCache(out)
    entries = {name: cache.raw(name) for name in cache.names()}
    meta = cache.meta
    cache.close()
    assert sorted(entries) == NAMES
    return entries, meta


def _entries(path):
    cache = MaskCache(path)
    try:
        return {name: cache.raw(name) for name in cache.names()}, cache.meta
    finally:
        cache.close()


def test_shard_names_split_every_pair_once():
    names = [f'{i:03d}' for i in range(11)]
    parts = [shard_names(names[::-1], i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == names and parts[0] == ['000', '003', '006', '009']
    with pytest.raises(ValueError, match='0 <= I < N'):
        shard_names(names, 3, 3)


def test_shards_merge_into_the_single_process_entries(tmp_path, single):
    out = str(tmp_path / 'masks.lmdb')
    summaries = [generate_mask_shard(IR, VIS, out, TINY_SAM, (i, 2), max_masks=3, progress=False) for i in (1, 0)]
    assert [s['generated'] for s in summaries] == [1, 2]  # names 0 and 2 / name 1 of three
    with pytest.raises(MaskCacheError, match='the mask cache is missing'):  # nothing merged yet
        MaskCache(out)
    merged = merge_mask_shards(out, 2)
    assert (merged['merged'], merged['already_merged']) == (3, 0)
    entries, meta = _entries(out)
    assert entries == single[0]  # exactly the same entries, byte for byte
    assert meta_differences(single[1], meta) == [] and meta['info']['merged_from_shards'] == 2
    assert 'shard' not in meta['info']
    assert not osp.exists(shard_dir(out))  # shards removed after the merge
    # running a shard again after the merge regenerates nothing (its pairs are in the final cache)
    again = generate_mask_shard(IR, VIS, out, TINY_SAM, (0, 2), max_masks=3, progress=False)
    assert (again['generated'], again['already_in_cache']) == (0, 2)


def test_shard_resumes_and_merge_refuses_what_is_not_right(tmp_path, single, monkeypatch):
    out = str(tmp_path / 'm.lmdb')
    with pytest.raises(MaskCacheError, match=r'shard\(s\) 0/2, 1/2 not found.*--shard I/2'):
        merge_mask_shards(out, 2)
    # shard 0 interrupted after its first pair: the merge names it as unfinished
    generate_mask_shard(IR, VIS, out, TINY_SAM, (0, 2), max_masks=3, progress=False, names=NAMES)
    first = _entries(shard_path(out, 0, 2))[0]
    from fusion.data.lmdb_store import LmdbWriter
    with LmdbWriter(shard_path(out, 0, 2)) as w:  # drop one entry, as if killed before it
        with w.env.begin(write=True) as txn:
            txn.delete(NAMES[2].encode())
    generate_mask_shard(IR, VIS, out, TINY_SAM, (1, 2), max_masks=3, progress=False)
    with pytest.raises(MaskCacheError, match=r'00000-of-00002.lmdb: the shard is not finished \(1 of its 2'):
        merge_mask_shards(out, 2)
    resumed = generate_mask_shard(IR, VIS, out, TINY_SAM, (0, 2), max_masks=3, progress=False)
    assert (resumed['generated'], resumed['skipped']) == (1, 1)  # resumes: only the missing pair
    assert _entries(shard_path(out, 0, 2))[0] == first
    # a shard made with other settings is refused, naming the difference
    other = str(tmp_path / 'o.lmdb')
    generate_mask_shard(IR, VIS, other, TINY_SAM, (0, 2), max_masks=3, progress=False)
    generate_mask_shard(IR, VIS, other, dict(TINY_SAM, points_per_side=3), (1, 2), max_masks=3, progress=False)
    with pytest.raises(MaskCacheError, match=r'other settings[^$]*points_per_side: cache has 4, requested 3'):
        merge_mask_shards(other, 2)
    merge_mask_shards(out, 2)
    assert _entries(out)[0] == single[0]


def test_a_shard_checks_the_final_caches_settings_before_it_runs(tmp_path):
    """A final cache made with other settings: the shard refuses at its start (once, every shard
    ran and only the merge refused), and leaves no shard cache behind."""
    out = str(tmp_path / 'final.lmdb')
    generate_mask_cache(IR, VIS, out, TINY_SAM, max_masks=3, progress=False, names=NAMES[:1])
    with pytest.raises(MaskCacheError, match=r'final\.lmdb: the existing mask cache was made with other settings'
                                             r'[^$]*points_per_side: cache has 4, requested 3'):
        generate_mask_shard(IR, VIS, out, dict(TINY_SAM, points_per_side=3), (0, 2), max_masks=3, progress=False)
    assert not osp.exists(shard_path(out, 0, 2))
    # the same settings: the pair already in the final cache is skipped, the others generated
    summary = generate_mask_shard(IR, VIS, out, TINY_SAM, (0, 2), max_masks=3, progress=False)
    assert (summary['already_in_cache'], summary['generated']) == (1, 1)


def test_script_shard_and_merge_forms(tmp_path, single, monkeypatch, capsys):
    out = str(tmp_path / 'cli.lmdb')
    for i in (0, 1):
        code, stdout, _ = _run_script(monkeypatch, capsys, '--ir', IR, '--vis', VIS, '--out', out,
                                      '--shard', f'{i}/2', *TINY_SAM_FLAGS)
        assert code == 0
        assert json.loads(stdout)['next'].endswith(f'--out {out} --merge-shards 2')
    code, stdout, stderr = _run_script(monkeypatch, capsys, '--out', out, '--merge-shards', '3')
    assert code == 2 and stderr.startswith('error: ') and 'shard(s) 0/3, 1/3, 2/3 not found' in stderr
    code, stdout, _ = _run_script(monkeypatch, capsys, '--out', out, '--merge-shards', '2')
    assert code == 0 and json.loads(stdout)['merged'] == 3
    assert _entries(out)[0] == single[0]
    code, _, stderr = _run_script(monkeypatch, capsys, '--ir', IR, '--vis', VIS, '--out', out, '--shard', '2/2')
    assert code == 2 and 'error: --shard 2/2: need 0 <= I < N' in stderr


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_single_process_cache(tmp_path, single):
    out = str(tmp_path / 'ddp.lmdb')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           osp.join(ROOT, 'scripts', 'generate_masks.py'), '--ir', IR, '--vis', VIS, '--out', out, *TINY_SAM_FLAGS]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index('{'):])  # one JSON summary, from rank 0
    assert summary['merged'] == 3 and [s['shard'] for s in summary['shard_summaries']] == ['0/2', '1/2']
    assert [s['generated'] for s in summary['shard_summaries']] == [2, 1]
    assert _entries(out)[0] == single[0]
    assert not osp.exists(shard_dir(out))
    # again: resumes, nothing regenerated
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index('{'):])
    assert [s['already_in_cache'] for s in summary['shard_summaries']] == [2, 1] and summary['merged'] == 0
