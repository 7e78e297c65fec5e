"""The pure-Python TF1 checkpoint reader: the table and tensor-bundle format round trip through our
writer, CRC32C and the wire format, and every broken file is one clear error."""
import os
import os.path as osp
import struct

import numpy as np
import pytest

from fusion.utils import tf_checkpoint as tfc
from fusion.utils.tf_checkpoint import (TFCheckpoint, TFCheckpointError, check_variables, crc32c, load_tf_checkpoint,
                                        read_meta_graph, read_sstable, write_tf_checkpoint)


def _tensors():
    rng = np.random.default_rng(0)
    tensors = {f'net/layer{i:02d}/kernel': rng.standard_normal((3, 3, i + 1, 4)).astype(np.float32) for i in range(40)}
    tensors.update({
        'net/layer00/bias': np.arange(4, dtype=np.float32),
        'global_step': np.array(1234, dtype=np.int64),
        'net/scale': np.array([1.5, -2.25], dtype=np.float64),
        'net/mask': np.array([[True, False]]),
        'net/counts': np.array([7, -8], dtype=np.int32),
    })
    return tensors


@pytest.fixture
def ckpt(tmp_path):
    prefix = str(tmp_path / 'model.ckpt')
    tensors = _tensors()
    write_tf_checkpoint(prefix, tensors, block_size=256)  # many data blocks and restart points
    return prefix, tensors


def test_crc32c_known_values_and_vectorised_path():
    assert crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
    assert crc32c(b'') == 0
    data = os.urandom(200_003)  # long enough for the lane-parallel path, odd tail
    assert crc32c(data) == tfc._crc32c_loop(data)


def test_varints_and_messages_round_trip():
    for value in (0, 1, 127, 128, 300, 2 ** 35 + 7, 2 ** 64 - 1):
        encoded = tfc.encode_varint(value)
        assert tfc.read_varint(encoded, 0) == (value, len(encoded))
    msg = tfc._field(1, 0, 5) + tfc._field(2, 2, b'abc') + tfc._field(6, 5, 0xDEADBEEF)
    assert list(tfc.parse_message(msg)) == [(1, 0, 5), (2, 2, b'abc'), (6, 5, 0xDEADBEEF)]
    with pytest.raises(TFCheckpointError, match='past the end'):
        list(tfc.parse_message(tfc._field(2, 2, b'abcdef')[:-2]))


def test_round_trip_every_dtype_and_many_blocks(ckpt):
    prefix, tensors = ckpt
    table = read_sstable(prefix + '.index')
    keys = [k for k, _ in table]
    assert keys[0] == b'' and keys == sorted(keys) and len(keys) == len(tensors) + 1
    reader = TFCheckpoint(prefix)
    assert reader.header.num_shards == 1 and not reader.header.big_endian
    assert reader.shapes()['net/layer05/kernel'] == (3, 3, 6, 4)
    loaded = reader.read()
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)
    assert all(e.crc32c is not None for e in reader.entries.values())


def test_prefix_files_and_folder_resolve_alike(ckpt):
    prefix, tensors = ckpt
    for path in (prefix, prefix + '.index', prefix + '.data-00000-of-00001', osp.dirname(prefix)):
        assert TFCheckpoint(path).prefix == prefix
    np.testing.assert_array_equal(load_tf_checkpoint(osp.dirname(prefix), ['net/scale'])['net/scale'],
                                  tensors['net/scale'])


def test_checkpoint_without_tensor_crcs_still_reads(tmp_path):
    prefix = str(tmp_path / 'old')
    write_tf_checkpoint(prefix, {'w': np.ones((2, 2), np.float32)}, crc=False)
    assert TFCheckpoint(prefix).entries['w'].crc32c is None
    np.testing.assert_array_equal(load_tf_checkpoint(prefix)['w'], np.ones((2, 2), np.float32))


def _flip_byte(path, offset):
    with open(path, 'r+b') as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_corrupt_tensor_bytes_fail_their_crc(ckpt):
    prefix, _ = ckpt
    entry = TFCheckpoint(prefix).entries['net/layer03/kernel']
    _flip_byte(prefix + '.data-00000-of-00001', entry.offset + 5)
    with pytest.raises(TFCheckpointError, match='CRC mismatch for tensor net/layer03/kernel'):
        load_tf_checkpoint(prefix)
    assert 'net/scale' in load_tf_checkpoint(prefix, ['net/scale'])  # other tensors still read


def test_truncated_data_file(ckpt):
    prefix, _ = ckpt
    data = prefix + '.data-00000-of-00001'
    with open(data, 'r+b') as f:
        f.truncate(os.path.getsize(data) - 10)
    with pytest.raises(TFCheckpointError, match='truncated'):
        load_tf_checkpoint(prefix)


def test_corrupt_or_truncated_index(ckpt):
    prefix, _ = ckpt
    index = prefix + '.index'
    good = open(index, 'rb').read()
    _flip_byte(index, 20)
    with pytest.raises(TFCheckpointError, match='CRC mismatch in the data block'):
        TFCheckpoint(prefix)
    with open(index, 'wb') as f:
        f.write(good[:len(good) - 30])
    with pytest.raises(TFCheckpointError, match='truncated'):
        TFCheckpoint(prefix)
    with open(index, 'wb') as f:
        f.write(good[:10])
    with pytest.raises(TFCheckpointError, match='truncated'):
        TFCheckpoint(prefix)


def test_missing_files_and_ambiguous_folders(ckpt, tmp_path):
    prefix, _ = ckpt
    with pytest.raises(TFCheckpointError, match='no TensorFlow checkpoint index'):
        TFCheckpoint(str(tmp_path / 'nothing'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(TFCheckpointError, match='no TensorFlow checkpoint'):
        TFCheckpoint(str(empty))
    write_tf_checkpoint(str(tmp_path / 'other'), {'a': np.zeros(1, np.float32)})
    with pytest.raises(TFCheckpointError, match='holds 2 TensorFlow checkpoints'):
        TFCheckpoint(str(tmp_path))
    # TensorFlow's 'checkpoint' state file picks one
    (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "other"\n')
    assert TFCheckpoint(str(tmp_path)).prefix == str(tmp_path / 'other')
    os.remove(prefix + '.data-00000-of-00001')
    with pytest.raises(TFCheckpointError, match='data file .* is missing'):
        TFCheckpoint(prefix)


def test_not_a_table(tmp_path):
    path = tmp_path / 'x.index'
    path.write_bytes(b'\x00' * 100)
    with pytest.raises(TFCheckpointError, match='no table magic'):
        TFCheckpoint(str(path))


def test_wrong_graph_names_expected_and_found():
    found = {'Generator/conv/kernel': (3, 3, 2, 44), 'enc/bias': (8,), 'enc/bias/Adam': (8,), 'beta1_power': ()}
    expected = {'enc/kernel': (3, 3, 1, 16), 'enc/bias': (16,)}
    with pytest.raises(TFCheckpointError) as err:
        check_variables(found, expected, 'DenseFuse', 'ckpt.index', hint='It is a U2Fusion checkpoint')
    msg = str(err.value)
    assert 'not a checkpoint of the DenseFuse graph' in msg and 'enc/kernel [3, 3, 1, 16]' in msg
    assert 'enc/bias expected [16] found [8]' in msg and 'Generator/conv/kernel [3, 3, 2, 44]' in msg
    assert 'Adam' not in msg.split('found ')[-1] and 'U2Fusion' in msg
    check_variables({**expected, 'x/Adam': (1,)}, expected, 'DenseFuse', 'ckpt.index')  # extras are fine


def test_meta_graph_nodes(tmp_path):
    f = tfc._field

    def attr(key, value):
        return f(5, 2, f(1, 2, key.encode()) + f(2, 2, value))

    paddings = np.array([[0, 0], [1, 1], [1, 1], [0, 0]], dtype=np.int32)
    shape = f(2, 2, f(1, 0, 4)) + f(2, 2, f(1, 0, 2))
    tensor = f(1, 0, 3) + f(2, 2, shape) + f(4, 2, paddings.tobytes())
    nodes = [f(1, 2, b'pad/paddings') + f(2, 2, b'Const') + attr('value', f(8, 2, tensor)),
             f(1, 2, b'pad') + f(2, 2, b'MirrorPad') + f(3, 2, b'x') + f(3, 2, b'pad/paddings')
             + attr('mode', f(2, 2, b'REFLECT')),
             f(1, 2, b'conv') + f(2, 2, b'Conv2D') + attr('padding', f(2, 2, b'VALID'))
             + attr('strides', f(1, 2, f(3, 2, b''.join(tfc.encode_varint(v) for v in (1, 2, 2, 1))))),
             f(1, 2, b'lrelu/x') + f(2, 2, b'Const') + attr('value', f(8, 2, f(1, 0, 1) + f(5, 5, struct.unpack(
                 '<I', struct.pack('<f', 0.2))[0])))]
    meta = tmp_path / 'm.ckpt.meta'
    meta.write_bytes(f(2, 2, b''.join(f(1, 2, n) for n in nodes)))
    graph = {n.name: n for n in read_meta_graph(str(meta))}
    assert graph['pad'].op == 'MirrorPad' and graph['pad'].attrs['mode'] == 'REFLECT'
    assert graph['pad'].inputs == ['x', 'pad/paddings']
    np.testing.assert_array_equal(graph['pad/paddings'].attrs['value'], paddings)
    assert graph['conv'].attrs == {'padding': 'VALID', 'strides': [1, 2, 2, 1]}
    assert graph['lrelu/x'].attrs['value'] == pytest.approx(0.2)
    with pytest.raises(TFCheckpointError, match='no MetaGraphDef'):
        read_meta_graph(str(tmp_path / 'missing'))
