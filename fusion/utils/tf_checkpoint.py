"""Reading TensorFlow 1 checkpoints without TensorFlow or the protobuf package.

A TF1 checkpoint ``<prefix>`` is three kinds of file:

- ``<prefix>.index``: an SSTable in LevelDB's table format. Data blocks hold sorted entries
  ``varint shared | varint non_shared | varint value_len | key suffix | value`` (keys
  prefix-compressed against the previous key, restarting at the block's restart points: a
  ``uint32`` array and its length at the block's end); each block is followed by a 5-byte trailer
  (compression type, masked CRC32C of block + type). A 48-byte footer holds the block handles
  (varint offset, varint size) of the metaindex and index blocks and the magic number; the index
  block maps separator keys to data block handles.
- Its values are protobuf messages: the empty key holds the ``BundleHeaderProto`` (num_shards,
  endianness, version); every other key is a tensor name and its ``BundleEntryProto`` (dtype,
  shape, shard_id, offset, size, masked CRC32C of the tensor bytes).
- ``<prefix>.data-SSSSS-of-NNNNN``: the tensors' raw bytes at those offsets.
- ``<prefix>.meta`` (optional): the ``MetaGraphDef``; :func:`read_meta_graph` lists its nodes.

The protobuf wire format is decoded here by hand (varints, fixed32/64, length-delimited fields).
:func:`write_tf_checkpoint` writes the same format (uncompressed, one shard): tests build small
checkpoints with it. Every problem is a :class:`TFCheckpointError` (a ``ValueError``) naming the
file.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np


TABLE_MAGIC = 0xdb4775248b80fb57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5

# TensorFlow DataType enum -> numpy dtype (the numeric types a network checkpoint holds)
TF_DTYPES: Dict[int, np.dtype] = {
    1: np.dtype('float32'), 2: np.dtype('float64'), 3: np.dtype('int32'), 4: np.dtype('uint8'),
    5: np.dtype('int16'), 6: np.dtype('int8'), 9: np.dtype('int64'), 10: np.dtype('bool'),
    17: np.dtype('uint16'), 19: np.dtype('float16'), 22: np.dtype('uint32'), 23: np.dtype('uint64'),
}
TF_DTYPE_NAMES = {7: 'string', 14: 'bfloat16', 20: 'resource', 21: 'variant'}
NP_TO_TF = {v: k for k, v in TF_DTYPES.items()}


class TFCheckpointError(ValueError):
    """A TensorFlow checkpoint that is missing, truncated, corrupt or of another graph."""


# ---------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), as LevelDB and TensorFlow mask it
# ---------------------------------------------------------------------------------------------
def _crc_table() -> List[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()
_CRC_NP = np.array(_CRC_TABLE, dtype=np.uint32)
_CHUNK = 256  # bytes per lane of the vectorised CRC


def _crc32c_loop(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _gf2_times(mat: List[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _zeros_operator(length: int) -> List[int]:
    """The 32x32 GF(2) matrix (as 32 column ints) that advances a raw CRC register over ``length``
    zero bytes."""
    # one zero bit: register -> (register >> 1) ^ (poly if low bit)
    odd = [0x82F63B78] + [1 << (i - 1) for i in range(1, 32)]
    # square up to the byte count (8 bits per byte)
    result = [1 << i for i in range(32)]
    power = odd
    n = length * 8
    while n:
        if n & 1:
            result = [_gf2_times(power, c) for c in result]
        power = [_gf2_times(power, c) for c in power]
        n >>= 1
    return result


_SHIFT_CACHE: Dict[int, List[List[int]]] = {}


def _shift_tables(length: int) -> List[List[int]]:
    """Byte-wise lookup tables of :func:`_zeros_operator` (4 x 256 entries)."""
    if length not in _SHIFT_CACHE:
        mat = _zeros_operator(length)
        _SHIFT_CACHE[length] = [[_gf2_times(mat, b << (8 * k)) for b in range(256)] for k in range(4)]
    return _SHIFT_CACHE[length]


def crc32c(data: bytes) -> int:
    """CRC32C of ``data``. Long inputs run as many interleaved lanes in numpy (the raw registers of
    fixed-size chunks) and are combined by the linear 'advance over zeros' operator, so a 10 MB
    tensor takes a fraction of a second in pure Python + numpy."""
    n = len(data)
    if n < 64 * _CHUNK:
        return _crc32c_loop(data)
    lanes = n // _CHUNK
    body = np.frombuffer(data, dtype=np.uint8, count=lanes * _CHUNK).reshape(lanes, _CHUNK)
    # raw register (no pre/post inversion) of each chunk, starting from 0
    reg = np.zeros(lanes, dtype=np.uint32)
    for j in range(_CHUNK):
        reg = _CRC_NP[(reg ^ body[:, j]) & 0xFF] ^ (reg >> np.uint32(8))
    t0, t1, t2, t3 = _shift_tables(_CHUNK)
    crc = 0xFFFFFFFF  # the register after the standard initial value
    for r in reg.tolist():
        crc = (t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24]) ^ r
    table = _CRC_TABLE
    for b in data[lanes * _CHUNK:]:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow's masked CRC (stored CRCs of data that may itself contain CRCs)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# protobuf wire format
# ---------------------------------------------------------------------------------------------
def read_varint(buf: bytes, pos: int, source: str = 'buffer') -> Tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError(f'{source}: truncated varint')
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError(f'{source}: varint longer than 10 bytes (corrupt)')


def encode_varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def parse_message(buf: bytes, source: str = 'message') -> Iterator[Tuple[int, int, object]]:
    """Yields ``(field number, wire type, value)``: ints for varint/fixed fields, bytes for
    length-delimited ones (sub-messages, strings, packed arrays)."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = read_varint(buf, pos, source)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos, source)
        elif wire == 1:
            if pos + 8 > n:
                raise TFCheckpointError(f'{source}: truncated fixed64 field {number}')
            value = struct.unpack_from('<Q', buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = read_varint(buf, pos, source)
            if pos + length > n:
                raise TFCheckpointError(f'{source}: field {number} runs past the end of its message (corrupt)')
            value = bytes(buf[pos:pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > n:
                raise TFCheckpointError(f'{source}: truncated fixed32 field {number}')
            value = struct.unpack_from('<I', buf, pos)[0]
            pos += 4
        else:
            raise TFCheckpointError(f'{source}: unsupported protobuf wire type {wire} (corrupt)')
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _field(number: int, wire: int, payload: object) -> bytes:
    key = encode_varint(number << 3 | wire)
    if wire == 0:
        return key + encode_varint(int(payload))
    if wire == 5:
        return key + struct.pack('<I', int(payload))
    data = bytes(payload)
    return key + encode_varint(len(data)) + data


# ---------------------------------------------------------------------------------------------
# LevelDB table (SSTable)
# ---------------------------------------------------------------------------------------------
def _read_block(data: bytes, offset: int, size: int, source: str, what: str) -> bytes:
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data) - FOOTER_SIZE:
        raise TFCheckpointError(f'{source}: {what} block at {offset}+{size} lies past the end of the file '
                                f'({len(data)} bytes): the file is truncated or corrupt')
    block = data[offset:offset + size]
    ctype = data[offset + size]
    stored = struct.unpack_from('<I', data, offset + size + 1)[0]
    if mask_crc(crc32c(block + bytes([ctype]))) != stored:
        raise TFCheckpointError(f'{source}: CRC mismatch in the {what} block at offset {offset}: the file is corrupt')
    if ctype != 0:
        name = {1: 'snappy'}.get(ctype, f'type {ctype}')
        raise TFCheckpointError(f'{source}: {what} block is {name}-compressed; only uncompressed tables '
                                '(what TensorFlow writes for checkpoints) are supported')
    return block


def _block_entries(block: bytes, source: str) -> Iterator[Tuple[bytes, bytes]]:
    if len(block) < 4:
        raise TFCheckpointError(f'{source}: table block of {len(block)} bytes is too short (corrupt)')
    num_restarts = struct.unpack_from('<I', block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise TFCheckpointError(f'{source}: table block claims {num_restarts} restart points (corrupt)')
    pos, key = 0, b''
    while pos < limit:
        shared, pos = read_varint(block, pos, source)
        non_shared, pos = read_varint(block, pos, source)
        value_len, pos = read_varint(block, pos, source)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise TFCheckpointError(f'{source}: malformed table entry at block offset {pos} (corrupt)')
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _decode_handle(buf: bytes, pos: int, source: str) -> Tuple[int, int, int]:
    offset, pos = read_varint(buf, pos, source)
    size, pos = read_varint(buf, pos, source)
    return offset, size, pos


def read_sstable(path: str) -> List[Tuple[bytes, bytes]]:
    """All ``(key, value)`` entries of a LevelDB-format table file, in order; trailer CRCs checked."""
    with open(path, 'rb') as f:
        data = f.read()
    if len(data) < FOOTER_SIZE:
        raise TFCheckpointError(f'{path}: {len(data)} bytes, shorter than a table footer ({FOOTER_SIZE}): '
                                'the file is truncated or not a TensorFlow checkpoint index')
    footer = data[-FOOTER_SIZE:]
    magic = struct.unpack_from('<Q', footer, FOOTER_SIZE - 8)[0]
    if magic != TABLE_MAGIC:
        raise TFCheckpointError(f'{path}: no table magic number at the end: the file is truncated, corrupt or '
                                'not a TensorFlow checkpoint index')
    _, _, pos = _decode_handle(footer, 0, path)  # metaindex: no filters in checkpoints
    index_offset, index_size, _ = _decode_handle(footer, pos, path)
    index = _read_block(data, index_offset, index_size, path, 'index')
    entries: List[Tuple[bytes, bytes]] = []
    for _, handle in _block_entries(index, path):
        offset, size, _ = _decode_handle(handle, 0, path)
        entries.extend(_block_entries(_read_block(data, offset, size, path, 'data'), path))
    return entries


def _shortest_separator(a: bytes, b: bytes) -> bytes:
    # a key >= every key of the block ending in ``a`` and < ``b`` (LevelDB's index keys)
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    if i < n and a[i] < 0xFF and a[i] + 1 < b[i]:
        return a[:i] + bytes([a[i] + 1])
    return a


def _build_block(entries: Sequence[Tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    out, restarts, prev = bytearray(), [], b''
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            n = min(len(prev), len(key))
            while shared < n and prev[shared] == key[shared]:
                shared += 1
        out += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        out += key[shared:] + value
        prev = key
    restarts = restarts or [0]
    out += b''.join(struct.pack('<I', r) for r in restarts) + struct.pack('<I', len(restarts))
    return bytes(out)


def build_sstable(entries: Sequence[Tuple[bytes, bytes]], block_size: int = 4096) -> bytes:
    """A LevelDB-format table (uncompressed) of sorted ``(key, value)`` entries."""
    keys = [k for k, _ in entries]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise ValueError('table keys must be unique and sorted')
    out = bytearray()

    def emit(block: bytes) -> bytes:
        handle = encode_varint(len(out)) + encode_varint(len(block))
        out.extend(block + b'\x00' + struct.pack('<I', mask_crc(crc32c(block + b'\x00'))))
        return handle

    index, pending, size = [], [], 0
    for i, (key, value) in enumerate(entries):
        pending.append((key, value))
        size += len(key) + len(value) + 3
        if size >= block_size or i == len(entries) - 1:
            nxt = entries[i + 1][0] if i + 1 < len(entries) else None
            sep = _shortest_separator(key, nxt) if nxt is not None else key
            index.append((sep, emit(_build_block(pending))))
            pending, size = [], 0
    meta_handle = emit(_build_block([]))
    index_handle = emit(_build_block(index, restart_interval=1))
    footer = meta_handle + index_handle
    footer += b'\x00' * (FOOTER_SIZE - 8 - len(footer)) + struct.pack('<Q', TABLE_MAGIC)
    return bytes(out + footer)


# ---------------------------------------------------------------------------------------------
# tensor bundle
# ---------------------------------------------------------------------------------------------
@dataclass
class TensorEntry:
    """One ``BundleEntryProto``."""
    name: str
    dtype: int
    shape: Tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: Optional[int] = None  # masked
    sliced: bool = False

    @property
    def dtype_name(self) -> str:
        if self.dtype in TF_DTYPES:
            return str(TF_DTYPES[self.dtype])
        return TF_DTYPE_NAMES.get(self.dtype, str(self.dtype))


@dataclass
class BundleHeader:
    num_shards: int = 1
    big_endian: bool = False
    version: Dict[str, int] = field(default_factory=dict)


def _parse_shape(buf: bytes, source: str) -> Tuple[int, ...]:
    dims: List[int] = []
    for number, _, value in parse_message(buf, source):
        if number == 2:  # Dim
            size = 0
            for n2, _, v2 in parse_message(value, source):
                if n2 == 1:
                    size = _signed(v2)
            dims.append(size)
        elif number == 3 and value:
            raise TFCheckpointError(f'{source}: tensor of unknown rank')
    return tuple(dims)


def _parse_entry(name: str, buf: bytes, source: str) -> TensorEntry:
    entry = TensorEntry(name=name, dtype=0, shape=())
    for number, wire, value in parse_message(buf, f'{source} (entry {name})'):
        if number == 1:
            entry.dtype = value
        elif number == 2:
            entry.shape = _parse_shape(value, f'{source} (entry {name})')
        elif number == 3:
            entry.shard_id = value
        elif number == 4:
            entry.offset = value
        elif number == 5:
            entry.size = value
        elif number == 6 and wire == 5:
            entry.crc32c = value
        elif number == 7:
            entry.sliced = True
    return entry


def _parse_header(buf: bytes, source: str) -> BundleHeader:
    header = BundleHeader()
    for number, _, value in parse_message(buf, f'{source} (header)'):
        if number == 1:
            header.num_shards = value
        elif number == 2:
            header.big_endian = value == 1
        elif number == 3:
            names = {1: 'producer', 2: 'min_consumer'}
            header.version = {names[n]: v for n, _, v in parse_message(value, source) if n in names}
    return header


def resolve_checkpoint_prefix(path: str) -> str:
    """The checkpoint prefix for a prefix, any of its files (``.index``, ``.data-*``, ``.meta``) or
    the folder holding them (one checkpoint in it, or the one its ``checkpoint`` file names)."""
    if osp.isdir(path):
        indexes = sorted(glob.glob(osp.join(glob.escape(path), '*.index')))
        if len(indexes) > 1:
            named = _named_in_checkpoint_file(path)
            if named and osp.isfile(named + '.index'):
                return named
            raise TFCheckpointError(f'{path}: holds {len(indexes)} TensorFlow checkpoints '
                                    f'({", ".join(osp.basename(i) for i in indexes)}); name one by its prefix')
        if not indexes:
            raise TFCheckpointError(f'{path}: no TensorFlow checkpoint (<prefix>.index + <prefix>.data-*) '
                                    'in this folder')
        return indexes[0][:-len('.index')]
    for suffix in ('.index', '.meta'):
        if path.endswith(suffix):
            return path[:-len(suffix)]
    if '.data-' in osp.basename(path):
        return path[:path.rindex('.data-')]
    return path


def _named_in_checkpoint_file(folder: str) -> Optional[str]:
    state = osp.join(folder, 'checkpoint')
    if not osp.isfile(state):
        return None
    with open(state, errors='replace') as f:
        for line in f:
            if line.startswith('model_checkpoint_path:'):
                name = line.split(':', 1)[1].strip().strip('"')
                return name if osp.isabs(name) else osp.join(folder, name)
    return None


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    return f'{prefix}.data-{shard:05d}-of-{num_shards:05d}'


class TFCheckpoint:
    """A TF1 checkpoint opened by its prefix (or a file of it, or its folder): the header and tensor
    entries of its index; :meth:`read` loads tensors from the data shards, CRC-checked.

    >>> ckpt = TFCheckpoint('weights/DenseFuse')        # doctest: +SKIP
    >>> ckpt.shapes()['encoder/conv1_1/kernel']         # doctest: +SKIP
    (3, 3, 1, 16)
    """

    def __init__(self, path: str) -> None:
        self.prefix = resolve_checkpoint_prefix(path)
        self.index_path = self.prefix + '.index'
        if not osp.isfile(self.index_path):
            raise TFCheckpointError(f'{path}: no TensorFlow checkpoint index {self.index_path} '
                                    '(expected <prefix>.index and <prefix>.data-00000-of-0000N)')
        self.header = BundleHeader()
        self.entries: Dict[str, TensorEntry] = {}
        saw_header = False
        for key, value in read_sstable(self.index_path):
            if key == b'':
                self.header = _parse_header(value, self.index_path)
                saw_header = True
                continue
            name = key.decode('utf-8', errors='replace')
            self.entries[name] = _parse_entry(name, value, self.index_path)
        if not saw_header:
            raise TFCheckpointError(f'{self.index_path}: no bundle header (empty key): '
                                    'not a TensorFlow checkpoint index')
        for shard in range(self.header.num_shards):
            data_path = shard_path(self.prefix, shard, self.header.num_shards)
            if not osp.isfile(data_path):
                raise TFCheckpointError(f'{self.index_path}: its data file {data_path} is missing')

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {name: e.shape for name, e in self.entries.items()}

    def read(self, names: Optional[Iterable[str]] = None, verify: bool = True) -> Dict[str, np.ndarray]:
        """The named tensors (default: every numeric one) as numpy arrays in native byte order."""
        wanted = list(self.entries) if names is None else list(names)
        missing = [n for n in wanted if n not in self.entries]
        if missing:
            raise TFCheckpointError(f'{self.index_path}: no tensor {", ".join(missing[:5])} in this checkpoint')
        out: Dict[str, np.ndarray] = {}
        handles: Dict[int, object] = {}
        try:
            for name in wanted:
                entry = self.entries[name]
                if entry.dtype not in TF_DTYPES:
                    if names is None:
                        continue  # strings, resources: not network weights
                    raise TFCheckpointError(f'{self.index_path}: tensor {name} has dtype {entry.dtype_name}, '
                                            'which this reader does not load')
                if entry.sliced:
                    raise TFCheckpointError(f'{self.index_path}: tensor {name} is saved in slices (partitioned '
                                            'variable), which this reader does not load')
                out[name] = self._read_entry(entry, handles, verify)
        finally:
            for f in handles.values():
                f.close()
        return out

    def _read_entry(self, entry: TensorEntry, handles: Dict[int, object], verify: bool) -> np.ndarray:
        if entry.shard_id >= self.header.num_shards:
            raise TFCheckpointError(f'{self.index_path}: tensor {entry.name} names shard {entry.shard_id} of '
                                    f'{self.header.num_shards} (corrupt index)')
        path = shard_path(self.prefix, entry.shard_id, self.header.num_shards)
        if entry.shard_id not in handles:
            handles[entry.shard_id] = open(path, 'rb')
        f = handles[entry.shard_id]
        dtype = TF_DTYPES[entry.dtype].newbyteorder('>' if self.header.big_endian else '<')
        count = int(np.prod(entry.shape, dtype=np.int64)) if entry.shape else 1
        if count * dtype.itemsize != entry.size:
            raise TFCheckpointError(f'{self.index_path}: tensor {entry.name} of shape {list(entry.shape)} '
                                    f'{entry.dtype_name} should be {count * dtype.itemsize} bytes, '
                                    f'the index says {entry.size} (corrupt index)')
        f.seek(entry.offset)
        data = f.read(entry.size)
        if len(data) != entry.size:
            raise TFCheckpointError(f'{path}: truncated: tensor {entry.name} needs bytes {entry.offset}-'
                                    f'{entry.offset + entry.size}, the file has {os.fstat(f.fileno()).st_size}')
        if verify and entry.crc32c is not None and mask_crc(crc32c(data)) != entry.crc32c:
            raise TFCheckpointError(f'{path}: CRC mismatch for tensor {entry.name}: the data file is corrupt')
        return np.frombuffer(data, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder('='))


def load_tf_checkpoint(path: str, names: Optional[Iterable[str]] = None, verify: bool = True) -> Dict[str, np.ndarray]:
    """Every numeric tensor (or the named ones) of the TF1 checkpoint at ``path`` (prefix, file or folder)."""
    return TFCheckpoint(path).read(names, verify)


def check_variables(found: Mapping[str, Tuple[int, ...]], expected: Mapping[str, Tuple[int, ...]],
                    graph: str, source: str, hint: str = '') -> None:
    """Raises one :class:`TFCheckpointError` when the checkpoint's variables (``found``: name ->
    shape, optimizer slots and counters allowed besides) lack an ``expected`` one or have another
    shape: the checkpoint was saved from another TensorFlow graph. The line names what was expected
    and what was found."""
    missing = [n for n in expected if n not in found]
    wrong = [n for n in expected if n in found and tuple(found[n]) != tuple(expected[n])]
    if not missing and not wrong:
        return

    def show(names: Sequence[str], shapes: Mapping[str, Tuple[int, ...]], limit: int = 4) -> str:
        items = [f'{n} {list(shapes[n])}' for n in names[:limit]]
        return ', '.join(items) + (f' (+{len(names) - limit} more)' if len(names) > limit else '')

    parts = []
    if missing:
        parts.append(f'expected {show(missing, expected)} but they are absent')
    if wrong:
        parts.append('shapes differ: ' + ', '.join(f'{n} expected {list(expected[n])} found {list(found[n])}'
                                                   for n in wrong[:4]))
    weights = sorted(n for n in found if not _is_bookkeeping(n))
    raise TFCheckpointError(f'{source}: not a checkpoint of the {graph} graph: ' + '; '.join(parts)
                            + f'; found {show(weights, found)}' + (f'. {hint}' if hint else ''))


def _is_bookkeeping(name: str) -> bool:
    # optimizer slots and counters saved beside the weights
    last = name.split('/')[-1]
    return last in ('Adam', 'Adam_1', 'Momentum', 'RMSProp', 'RMSProp_1', 'global_step') or \
        last.startswith(('beta1_power', 'beta2_power'))


def write_tf_checkpoint(prefix: str, tensors: Mapping[str, np.ndarray], crc: bool = True,
                        block_size: int = 4096) -> None:
    """Writes ``tensors`` as a one-shard TF1 checkpoint ``<prefix>.index`` + ``<prefix>.data-00000-of-00001``
    in TensorFlow's format (little-endian, uncompressed index of ``block_size``-byte blocks; sorted
    names). ``crc=False`` leaves the tensor CRCs out (older writers did)."""
    data, entries = bytearray(), []
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        dtype = np.dtype(arr.dtype.name)  # native byte order
        if dtype not in NP_TO_TF:
            raise ValueError(f'{name}: dtype {arr.dtype} has no TensorFlow equivalent here')
        raw = np.ascontiguousarray(arr, dtype=dtype.newbyteorder('<')).tobytes()
        shape = b''.join(_field(2, 2, _field(1, 0, d)) for d in arr.shape)
        msg = _field(1, 0, NP_TO_TF[dtype]) + _field(2, 2, shape)
        msg += _field(4, 0, len(data)) if data else b''
        msg += _field(5, 0, len(raw)) if raw else b''
        if crc:
            msg += _field(6, 5, mask_crc(crc32c(raw)))
        entries.append((name.encode(), msg))
        data += raw
    header = _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1))
    table = build_sstable([(b'', header)] + entries, block_size=block_size)
    os.makedirs(osp.dirname(osp.abspath(prefix)), exist_ok=True)
    with open(shard_path(prefix, 0, 1), 'wb') as f:
        f.write(bytes(data))
    with open(prefix + '.index', 'wb') as f:
        f.write(table)


# ---------------------------------------------------------------------------------------------
# MetaGraphDef (optional): the graph's nodes, for checking how the authors' graph computes
# ---------------------------------------------------------------------------------------------
@dataclass
class GraphNode:
    name: str
    op: str
    inputs: List[str]
    attrs: Dict[str, object]


def _attr_value(buf: bytes, source: str) -> object:
    for number, _, value in parse_message(buf, source):
        if number == 2:
            return value.decode('utf-8', errors='replace')
        if number in (3, 6):
            return _signed(value)
        if number == 4:
            return struct.unpack('<f', struct.pack('<I', value))[0]
        if number == 5:
            return bool(value)
        if number == 7:
            return _parse_shape(value, source) if value else ()
        if number == 8:
            return _parse_tensor(value, source)
        if number == 1:  # ListValue: s=2, i=3 (packed or not)
            items: List[object] = []
            for n2, w2, v2 in parse_message(value, source):
                if n2 == 2:
                    items.append(v2.decode('utf-8', errors='replace'))
                elif n2 == 3 and w2 == 2:
                    pos = 0
                    while pos < len(v2):
                        x, pos = read_varint(v2, pos, source)
                        items.append(_signed(x))
                elif n2 == 3:
                    items.append(_signed(v2))
            return items
    return None


def _parse_tensor(buf: bytes, source: str) -> Optional[np.ndarray]:
    # TensorProto: dtype=1, tensor_shape=2, tensor_content=4, float_val=5, double_val=6, int_val=7, int64_val=10
    dtype, shape, content, values = 0, (), None, []
    for number, wire, value in parse_message(buf, source):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _parse_shape(value, source)
        elif number == 4:
            content = value
        elif number == 5:
            values += (list(np.frombuffer(value, '<f4')) if wire == 2
                       else [struct.unpack('<f', struct.pack('<I', value))[0]])
        elif number == 6:
            values += (list(np.frombuffer(value, '<f8')) if wire == 2
                       else [struct.unpack('<d', struct.pack('<Q', value))[0]])
        elif number in (7, 10):
            if wire == 2:
                pos = 0
                while pos < len(value):
                    x, pos = read_varint(value, pos, source)
                    values.append(_signed(x))
            else:
                values.append(_signed(value))
    if dtype not in TF_DTYPES:
        return None
    np_dtype = TF_DTYPES[dtype]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if content is not None:
        return np.frombuffer(content, np_dtype.newbyteorder('<')).reshape(shape).astype(np_dtype)
    if not values:
        return np.zeros(shape, np_dtype)
    arr = np.array(values, dtype=np_dtype)
    # TensorFlow stores a constant fill once ("splat"); the last value repeats
    return (arr if arr.size == count else np.concatenate([arr, np.repeat(arr[-1:], count - arr.size)])).reshape(shape)


def read_meta_graph(path: str) -> List[GraphNode]:
    """The nodes of a checkpoint's ``.meta`` MetaGraphDef (``path``: the ``.meta`` file, the prefix
    or the folder): name, op, inputs and the simple attributes (strings, ints, floats, lists)."""
    meta = path if path.endswith('.meta') else resolve_checkpoint_prefix(path) + '.meta'
    if not osp.isfile(meta):
        raise TFCheckpointError(f'{path}: no MetaGraphDef file {meta}')
    with open(meta, 'rb') as f:
        buf = f.read()
    nodes: List[GraphNode] = []
    for number, _, graph in parse_message(buf, meta):
        if number != 2:  # MetaGraphDef.graph_def
            continue
        for n2, _, node in parse_message(graph, meta):
            if n2 != 1:
                continue
            name, op, inputs, attrs = '', '', [], {}
            for n3, _, v3 in parse_message(node, meta):
                if n3 == 1:
                    name = v3.decode()
                elif n3 == 2:
                    op = v3.decode()
                elif n3 == 3:
                    inputs.append(v3.decode())
                elif n3 == 5:
                    key, val = '', None
                    for n4, _, v4 in parse_message(v3, meta):
                        if n4 == 1:
                            key = v4.decode()
                        elif n4 == 2:
                            val = _attr_value(v4, meta)
                    attrs[key] = val
            nodes.append(GraphNode(name, op, inputs, attrs))
    return nodes
