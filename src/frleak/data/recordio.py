"""insightface MXNet RecordIO datasets (``train.rec`` + ``train.idx`` + ``property``) read and written without mxnet.

CASIA-WebFace, MS1M and Glint360K are distributed by insightface in this form; frleak audits models trained on
them, so it reads (and, for tests and small private sets, writes) the format itself. Three layers, each learned from
the public sources named here and written from their description:

1. Container (dmlc-core ``include/dmlc/recordio.h``, ``src/recordio.cc``): a sequence of frames
   ``magic:u32 | lrec:u32 | data | zero padding to a multiple of 4``, little-endian, ``magic = 0xced7230a``.
   ``lrec`` keeps the data length in its lower 29 bits and a continuation flag in its upper 3 bits: 0 a whole
   record, 1 the first part, 2 a middle part, 3 the last part. The writer cuts a record wherever the magic word
   sits at a 4-aligned position of its data and drops that word (so a reader that resynchronises on the magic never
   sees it inside data); the reader joins the parts and puts the magic back between them.
2. Index (mxnet ``python/mxnet/recordio.py``, ``MXIndexedRecordIO``): a text file, one ``key<TAB>offset`` line per
   record, ``offset`` = byte position of the record's first frame in the ``.rec``.
3. Record header (mxnet ``recordio.pack/unpack``): ``struct 'IfQQ'`` = flag:u32, label:f32, id:u64, id2:u64,
   24 bytes. When ``flag > 0`` the label is the ``flag`` float32 values that follow the header (and the header's own
   label field is unused); the payload, an encoded image, comes after.

insightface layout (``recognition/common/rec_builder.py`` writes it, ``recognition/arcface_torch/dataset.py``
``MXFaceDataset`` reads it): key 0 holds an empty record whose label is ``[first_identity_key, end_key]``; the images
are keys ``1 .. first_identity_key - 1``, each labelled with its identity; keys ``first_identity_key .. end_key - 1``
hold one empty record per identity labelled ``[first_image_key, end_image_key)``. ``property`` holds
``num_classes,H,W``. When record 0 has ``flag == 0`` there is no such header and every key in the idx is an image.

Reading is random access through a memory map: nothing is loaded whole, so a 5.8 M-image MS1M costs the idx
(two int64 arrays) plus the pages actually touched.
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import numbers
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from frleak.data.images import InputSpec, to_network_array
from frleak.errors import DataError
from frleak.io import atomic_write_text

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrec
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2: mxnet's 'IfQQ' has no padding, so '<' gives the same 24 bytes
_LEN_BITS = 29
_LEN_MASK = (1 << _LEN_BITS) - 1
_FLOAT32_EXACT = 1 << 24  # keys and labels are stored as float32: integers above this are not exact

IR_SIZE = _IR.size

#: What :func:`write_rec` accepts as an image: a file path, encoded bytes, a PIL image or a uint8 (H, W[, 3]) array.
ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray]


# --------------------------------------------------------------------------------------------------------------------
# Layer 3: the IRHeader (mxnet recordio.pack / unpack)


class IRHeader(NamedTuple):
    """mxnet's image-record header. ``label`` is a float when ``flag == 0``, else a tuple of ``flag`` floats."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack_header(header: IRHeader, payload: bytes = b"") -> bytes:
    """``header`` + ``payload`` as one record, like mxnet ``recordio.pack``: a scalar label gives ``flag = 0``; a
    sequence label gives ``flag = len(label)`` and its float32 values between the header and the payload (the
    ``flag`` field passed in is ignored, as mxnet does)."""
    for name, value in (("id", header.id), ("id2", header.id2)):
        if not 0 <= int(value) < 1 << 64:
            raise ValueError(f"IRHeader.{name}={value} does not fit in an unsigned 64-bit field")
    if isinstance(header.label, numbers.Real):
        return _IR.pack(0, float(header.label), int(header.id), int(header.id2)) + bytes(payload)
    values = np.asarray(header.label, dtype="<f4").ravel()
    return _IR.pack(values.size, 0.0, int(header.id), int(header.id2)) + values.tobytes() + bytes(payload)


def unpack_header(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record into (IRHeader, payload) like mxnet ``recordio.unpack``; ``where`` names the record in errors
    (a record shorter than its header raises DataError, never struct.error)."""
    if len(record) < IR_SIZE:
        raise DataError(f"{where}: {len(record)} bytes, shorter than the {IR_SIZE}-byte IRHeader; not an image record")
    flag, label, id_, id2 = _IR.unpack_from(record)
    if flag == 0:
        return IRHeader(0, float(label), id_, id2), bytes(record[IR_SIZE:])
    end = IR_SIZE + 4 * flag
    if len(record) < end:
        raise DataError(f"{where}: header says {flag} label values but the record has only {len(record)} bytes")
    values = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE)
    return IRHeader(flag, tuple(float(v) for v in values), id_, id2), bytes(record[end:])


def header_label(header: IRHeader, where: str = "record") -> int:
    """The identity of an image record: its label, or the first value of an array label (arcface_torch's rule)."""
    value = header.label if isinstance(header.label, float) else header.label[0]
    if not math.isfinite(value):
        raise DataError(f"{where}: label {value} is not a number")
    return int(value)


# --------------------------------------------------------------------------------------------------------------------
# Layer 1: frames (dmlc-core recordio)


def encode_record(data: bytes) -> bytes:
    """One record as the frames dmlc-core's ``RecordIOWriter::WriteRecord`` emits (see the module docstring)."""
    data = bytes(data)
    n = len(data)
    if n > _LEN_MASK:
        raise ValueError(f"a RecordIO record holds at most {_LEN_MASK} bytes, got {n}")
    frames: list[bytes] = []
    start = 0
    pos = data.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= n:
        if pos % 4:  # only 4-aligned occurrences are cut out; others are ordinary data
            pos = data.find(_MAGIC_BYTES, pos + 1)
            continue
        frames.append(_FRAME.pack(MAGIC, ((1 if start == 0 else 2) << _LEN_BITS) | (pos - start)) + data[start:pos])
        start = pos + 4
        pos = data.find(_MAGIC_BYTES, start)
    tail = n - start
    frames.append(_FRAME.pack(MAGIC, ((3 if start else 0) << _LEN_BITS) | tail) + data[start:])
    frames.append(b"\0" * (-tail % 4))
    return b"".join(frames)


def _next_frame(buf: Any, size: int, pos: int, first: bool, where: str) -> tuple[int, int, int]:
    """Check the frame at ``pos`` of ``buf`` (``size`` bytes); return (cflag, data length, offset after its padding).
    Every way the bytes can be wrong raises DataError naming ``where`` and the offset, never struct.error."""
    if pos + 8 > size:
        raise DataError(f"{where}: truncated record, frame header at offset {pos} runs past the end of the file "
                        f"({size} bytes); the file was cut short")
    magic, lrec = _FRAME.unpack_from(buf, pos)
    if magic != MAGIC:
        raise DataError(f"{where}: no RecordIO magic at offset {pos} (found 0x{magic:08x}, expected 0x{MAGIC:08x}); "
                        "the file is corrupt or the offset does not start a record")
    cflag, length = lrec >> _LEN_BITS, lrec & _LEN_MASK
    if cflag not in ((0, 1) if first else (2, 3)):
        state = "a record's first frame" if first else "a continuation frame"
        raise DataError(f"{where}: continuation flag {cflag} at offset {pos} is not valid for {state}; the file is "
                        "corrupt or the offset points into the middle of a record")
    end = pos + 8 + length + (-length % 4)
    if end > size:
        raise DataError(f"{where}: truncated record, {length} data bytes at offset {pos + 8} run past the end of the "
                        f"file ({size} bytes); the file was cut short")
    return cflag, length, end


def _decode_frames(buf: Any, size: int, offset: int, where: str) -> tuple[bytes, int]:
    """Read the record whose first frame starts at ``offset``; return (data, offset of the next record)."""
    parts: list[bytes] = []
    pos = offset
    while True:
        cflag, length, end = _next_frame(buf, size, pos, not parts, where)
        parts.append(bytes(buf[pos + 8 : pos + 8 + length]))
        pos = end
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts), pos


# --------------------------------------------------------------------------------------------------------------------
# Layer 2: the .idx text index


def read_idx(path: str | Path, rec_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``key<TAB>offset`` lines into int64 arrays (keys, offsets), in file order.

    Raises DataError naming the file and the line for a malformed line, a duplicate key, or (when ``rec_size`` is
    given) an offset outside the ``.rec``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"RecordIO index not found: {path} (a .rec needs its .idx for random access)")
    raw = path.read_bytes()
    tokens = raw.split()
    try:
        if len(tokens) % 2:
            raise ValueError
        flat = np.array(tokens).astype(np.int64)  # numpy parses the byte strings in C: fast for millions of lines
    except (ValueError, OverflowError):
        _raise_bad_idx_line(path, raw)
        raise  # unreachable: _raise_bad_idx_line always raises
    keys, offsets = flat[0::2].copy(), flat[1::2].copy()
    if keys.size != sum(1 for ln in raw.splitlines() if ln.strip()):  # e.g. a 3-field line next to a 1-field one
        _raise_bad_idx_line(path, raw)
    if keys.size:
        order = np.argsort(keys, kind="stable")
        dup = np.flatnonzero(np.diff(keys[order]) == 0)
        if dup.size:
            raise DataError(f"{path}: key {int(keys[order][dup[0]])} appears more than once; the index is corrupt")
        limit = rec_size if rec_size is not None else 2**62
        bad = np.flatnonzero((offsets < 0) | (offsets % 4 != 0) | (offsets + 8 > limit))
        if bad.size:
            i = int(bad[0])
            off = int(offsets[i])
            what = (f"beyond the end of the .rec ({rec_size} bytes)" if off + 8 > limit
                    else "not a record start (records start at multiples of 4)")
            raise DataError(f"{path}: key {int(keys[i])} (line {i + 1}) has offset {off}, {what}; the .idx does not "
                            "belong to this .rec or one of them is truncated")
    return keys, offsets


def _raise_bad_idx_line(path: Path, raw: bytes) -> None:
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            int(fields[0]), int(fields[1])
        except ValueError:
            shown = line[:60].decode("utf-8", "replace")
            raise DataError(f"{path}: line {lineno} is {shown!r}, expected 'KEY<TAB>OFFSET' (two integers)") from None
    raise DataError(f"{path}: not a RecordIO index (expected 'KEY<TAB>OFFSET' lines)")


# --------------------------------------------------------------------------------------------------------------------
# Reader


class RecordIOReader:
    """Random access to a ``.rec`` by key through its ``.idx``; without an idx the keys are the records' ordinal
    positions, found by one header-only scan on first use. Use as a context manager (or call :meth:`close`).

    ``read(key) -> (IRHeader, payload)``; ``read_record(key)`` gives the raw record; :meth:`records` scans the file
    sequentially; iteration yields ``(key, header, payload)`` in index order.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        if not self.rec_path.is_file():
            raise DataError(f"RecordIO file not found: {self.rec_path}")
        self._file = open(self.rec_path, "rb")  # noqa: SIM115 - held open for the memory map, closed in close()
        self.size = os.fstat(self._file.fileno()).st_size
        # mmap cannot map an empty file; an empty .rec simply has no records.
        self._buf: Any = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        self._keys: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        if self.idx_path is not None:
            try:
                self._keys, self._offsets = read_idx(self.idx_path, self.size)
            except BaseException:
                self.close()
                raise
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    # -- index ---------------------------------------------------------------------------------------------------
    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None or self._offsets is None:
            offsets = np.fromiter(self._frame_walk(), dtype=np.int64)
            self._keys, self._offsets = np.arange(offsets.size, dtype=np.int64), offsets
        return self._keys, self._offsets

    def _sorted_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            keys, offsets = self._index()
            order = np.argsort(keys, kind="stable")
            self._sorted = keys[order], offsets[order]
        return self._sorted

    @property
    def keys(self) -> np.ndarray:
        """int64 keys in index-file order (ordinal positions when there is no idx)."""
        return self._index()[0]

    def __len__(self) -> int:
        return int(self._index()[0].size)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, numbers.Integral):
            return False
        skeys, _ = self._sorted_index()
        i = int(np.searchsorted(skeys, int(key)))
        return i < skeys.size and int(skeys[i]) == int(key)

    def count_keys(self, start: int, stop: int) -> int:
        """How many keys k with ``start <= k < stop`` the index holds."""
        skeys, _ = self._sorted_index()
        return int(np.searchsorted(skeys, stop) - np.searchsorted(skeys, start))

    def offset(self, key: int) -> int:
        """Byte offset of record ``key``; DataError naming the index when it has no such key."""
        skeys, soffs = self._sorted_index()
        i = int(np.searchsorted(skeys, int(key)))
        if i >= skeys.size or int(skeys[i]) != int(key):
            src = self.idx_path if self.idx_path is not None else f"{self.rec_path} (sequential, no .idx)"
            raise DataError(f"key {int(key)} is not in {src}")
        return int(soffs[i])

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`offset` for many keys (all must exist; callers check ranges first)."""
        skeys, soffs = self._sorted_index()
        pos = np.clip(np.searchsorted(skeys, keys), 0, max(skeys.size - 1, 0))
        if skeys.size == 0 or np.any(skeys[pos] != keys):
            missing = keys[skeys[pos] != keys] if skeys.size else keys
            raise DataError(f"key {int(missing[0])} is not in {self.idx_path or self.rec_path}")
        return soffs[pos]

    # -- reading -------------------------------------------------------------------------------------------------
    def _where(self, key: int | None, offset: int) -> str:
        return f"{self.rec_path}" + (f" key {key}" if key is not None else "") + f" (record at offset {offset})"

    def read_at(self, offset: int, key: int | None = None) -> tuple[bytes, int]:
        """The raw record starting at byte ``offset`` and the offset of the next record."""
        self._check_open()
        return _decode_frames(self._buf, self.size, int(offset), self._where(key, int(offset)))

    def read_record(self, key: int) -> bytes:
        """The raw record (IRHeader + payload) stored under ``key``."""
        return self.read_at(self.offset(key), key)[0]

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """(IRHeader, payload bytes) of record ``key``."""
        offset = self.offset(key)
        record, _ = self.read_at(offset, key)
        return unpack_header(record, self._where(key, offset))

    def records(self) -> Iterator[tuple[int, bytes]]:
        """Every record in file order as (offset, raw record), ignoring the idx: a streaming scan."""
        self._check_open()
        pos = 0
        while pos < self.size:
            record, nxt = _decode_frames(self._buf, self.size, pos, self._where(None, pos))
            yield pos, record
            pos = nxt

    def _frame_walk(self) -> Iterator[int]:
        """Offset of each record in file order, reading only frame headers (to index a .rec that has no idx)."""
        self._check_open()
        pos = 0
        while pos < self.size:
            start, first = pos, True
            while True:
                cflag, _, pos = _next_frame(self._buf, self.size, pos, first, self._where(None, start))
                first = False
                if cflag in (0, 3):
                    break
            yield start

    def __iter__(self) -> Iterator[tuple[int, IRHeader, bytes]]:
        for key in self.keys:
            header, payload = self.read(int(key))
            yield int(key), header, payload

    # -- lifetime ------------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._file.closed:
            raise ValueError(f"RecordIOReader for {self.rec_path} is closed")

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            # BufferError: a numpy view still exports the map; it is then freed with its last reference.
            with contextlib.suppress(BufferError):
                self._buf.close()
        self._buf = b""
        self._file.close()

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort when a caller forgot close()
        with contextlib.suppress(Exception):
            self.close()


# --------------------------------------------------------------------------------------------------------------------
# Paths of a dataset


@dataclass(frozen=True)
class RecPaths:
    """Where a RecordIO dataset's three files are."""

    rec: Path
    idx: Path
    property: Path


def resolve_rec_paths(prefix_or_rec: str | Path) -> RecPaths:
    """``DIR`` -> DIR/train.{rec,idx}; ``X.rec`` or ``X.idx`` -> X.{rec,idx}; ``X`` -> X.{rec,idx}. ``property`` is
    the file of that name beside the ``.rec`` (insightface keeps one dataset per folder)."""
    p = Path(prefix_or_rec).expanduser()
    if p.is_dir() or str(prefix_or_rec).endswith(("/", os.sep)):
        base = p / "train"
    elif p.suffix in (".rec", ".idx"):
        base = p.with_suffix("")
    else:
        base = p
    return RecPaths(base.with_name(base.name + ".rec"), base.with_name(base.name + ".idx"), base.parent / "property")


def read_property(path: str | Path) -> tuple[int, int, int] | None:
    """``num_classes,H,W`` from an insightface ``property`` file, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    text = path.read_text(errors="replace").strip()
    try:
        num_classes, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{path}: expected 'num_classes,height,width' (three integers), found {text[:60]!r}") from None
    return num_classes, h, w


# --------------------------------------------------------------------------------------------------------------------
# The insightface dataset


class InsightFaceRecDataset(torch.utils.data.Dataset):
    """A ``train.rec``/``train.idx`` face dataset read like arcface_torch's ``MXFaceDataset``.

    ``prefix_or_rec``: a folder holding ``train.rec``, a ``.rec`` path, or a prefix (see :func:`resolve_rec_paths`).
    ``ds[i] -> (PIL RGB image, label)``, or ``(encoded bytes, label)`` with ``decode=False``. Images are the keys
    ``1 .. first_identity_key - 1`` when record 0 carries the insightface range header, else every idx key in index
    order. ``labels`` (int64 array, one per image) and ``num_classes`` describe the identities.

    Safe for DataLoader workers: the memory map is reopened in each process.
    """

    def __init__(self, prefix_or_rec: str | Path, *, decode: bool = True) -> None:
        self.paths = resolve_rec_paths(prefix_or_rec)
        self.decode = decode
        for p in (self.paths.rec, self.paths.idx):
            if not p.is_file():
                raise DataError(f"{p} not found: an insightface dataset needs both train.rec and train.idx "
                                f"(looked for them from {prefix_or_rec!s})")
        self._reader_obj: RecordIOReader | None = None
        self._pid = -1
        self._labels: np.ndarray | None = None
        reader = self._reader
        self.identity_range: tuple[int, int] | None = None  # [first_identity_key, end_key) from record 0
        keys = reader.keys
        header0 = reader.read(0)[0] if 0 in reader else None
        if header0 is not None and header0.flag > 0:
            self.identity_range = self._check_range(reader, header0)
            self.image_keys = np.arange(1, self.identity_range[0], dtype=np.int64)
        else:
            self.image_keys = keys.copy()
        self.property = read_property(self.paths.property)

    def _check_range(self, reader: RecordIOReader, header0: IRHeader) -> tuple[int, int]:
        label = header0.label
        assert isinstance(label, tuple)
        where = f"{self.paths.rec} key 0"
        if len(label) < 2 or not all(math.isfinite(v) and v == int(v) for v in label[:2]):
            raise DataError(f"{where}: header label {label} is not an insightface key range "
                            "[first_identity_key, end_key]")
        first, end = int(label[0]), int(label[1])
        if first < 1 or end < first:
            raise DataError(f"{where}: header range [{first}, {end}) is not a valid [first_identity_key, end_key]")
        n_img, n_id = reader.count_keys(1, first), reader.count_keys(first, end)
        if n_img != first - 1 or n_id != end - first:
            raise DataError(
                f"{where}: record 0 says images are keys 1..{first - 1} and identity records {first}..{end - 1}, but "
                f"{self.paths.idx} holds {n_img} and {n_id} of those keys ({len(reader)} keys in all); the "
                "range does not fit this .rec/.idx pair (truncated or mismatched files)"
            )
        return first, end

    # -- per-process reader (a memory map cannot cross a pickle to spawned workers) --------------------------------
    @property
    def _reader(self) -> RecordIOReader:
        if self._reader_obj is None or self._pid != os.getpid():
            self._reader_obj = RecordIOReader(self.paths.rec, self.paths.idx)
            self._pid = os.getpid()
        return self._reader_obj

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader_obj"], state["_pid"] = None, -1
        return state

    def close(self) -> None:
        if self._reader_obj is not None:
            self._reader_obj.close()
            self._reader_obj = None

    def __enter__(self) -> InsightFaceRecDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- items ---------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.image_keys.size)

    def record(self, index: int) -> tuple[int, IRHeader, bytes]:
        """(key, IRHeader, encoded payload) of image ``index``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"image index {index} out of range for {n} images in {self.paths.rec}")
        key = int(self.image_keys[index])
        header, payload = self._reader.read(key)
        return key, header, payload

    def __getitem__(self, index: int) -> tuple[Image.Image | bytes, int]:
        key, header, payload = self.record(index)
        where = f"{self.paths.rec} key {key}"
        label = header_label(header, where)
        return (decode_image(payload, where) if self.decode else payload), label

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) identity of each image, read from the record headers only (vectorised over the memory map)."""
        if self._labels is None:
            self._labels = _read_labels(self._reader, self.image_keys)
            self._labels.flags.writeable = False
        return self._labels

    @property
    def num_classes(self) -> int:
        """``property``'s first field when present, else the identity-record count, else max(label) + 1."""
        if self.property is not None:
            return self.property[0]
        if self.identity_range is not None:
            return self.identity_range[1] - self.identity_range[0]
        return int(self.labels.max()) + 1 if len(self) else 0

    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the first image (header only, no full decode); None for an empty dataset."""
        if not len(self):
            return None
        key, _, payload = self.record(0)
        return _probe_size(payload, f"{self.paths.rec} key {key}")


def _read_labels(reader: RecordIOReader, keys: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Labels of many image records without decoding them: gather the first 36 bytes of each record (frame header,
    IRHeader, first array-label value) straight from the memory map. Records this fast path cannot vouch for (a
    first frame too short, a bad magic, a record at the very end) are read the slow, fully checked way."""
    out = np.empty(keys.size, dtype=np.int64)
    if not keys.size:
        return out
    offsets = reader.offsets_of(keys)
    buf = np.frombuffer(reader._buf, dtype=np.uint8) if reader.size else np.empty(0, np.uint8)
    span = np.arange(36, dtype=np.int64)
    for lo in range(0, keys.size, chunk):
        offs = offsets[lo : lo + chunk]
        fits = offs + 36 <= reader.size
        rows = np.zeros((offs.size, 36), dtype=np.uint8)
        rows[fits] = buf[offs[fits][:, None] + span]
        words = rows.view("<u4")  # (n, 9): magic, lrec, flag, label, id lo/hi, id2 lo/hi, first array value
        floats = rows.view("<f4")
        cflag, length = words[:, 1] >> _LEN_BITS, words[:, 1] & _LEN_MASK
        flag = words[:, 2]
        need = np.where(flag > 0, IR_SIZE + 4, IR_SIZE)
        ok = fits & (words[:, 0] == MAGIC) & ((cflag == 0) | (cflag == 1)) & (length >= need)
        value = np.where(flag > 0, floats[:, 8], floats[:, 3])
        ok &= np.isfinite(value)
        out[lo : lo + offs.size][ok] = value[ok].astype(np.int64)
        for j in np.flatnonzero(~ok):
            key = int(keys[lo + j])
            out[lo + j] = header_label(reader.read(key)[0], f"{reader.rec_path} key {key}")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Decoding


def decode_image(payload: bytes, where: str) -> Image.Image:
    """Encoded bytes -> RGB PIL image; DataError naming ``where`` when they are not a readable image."""
    try:
        with Image.open(io.BytesIO(payload)) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: cannot decode the image ({len(payload)} bytes): {exc}") from None


def _probe_size(payload: bytes, where: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(payload)) as img:
            w, h = img.size
            return h, w
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: not a readable image ({len(payload)} bytes): {exc}") from None


def load_rec_uint8(
    path: str | Path, spec: InputSpec, limit: int | None = None, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a rec dataset (its first ``limit`` images) into uint8 (N, 3, H, W) at ``spec.size`` and int64 (N,)
    labels, the same preprocessing :func:`frleak.data.images.load_uint8` applies to identity folders."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    with InsightFaceRecDataset(path, decode=False) as ds:
        n = len(ds) if limit is None else min(limit, len(ds))
        images = torch.empty((n, 3, *spec.size), dtype=torch.uint8)
        labels = torch.empty(n, dtype=torch.long)
        indices: Iterable[int] = range(n)
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, desc="decode rec", unit="img", leave=False)
        for i in indices:
            key, header, payload = ds.record(i)
            where = f"{ds.paths.rec} key {key}"
            labels[i] = header_label(header, where)
            images[i] = torch.from_numpy(to_network_array(decode_image(payload, where), spec)).permute(2, 0, 1)
    return images, labels


# --------------------------------------------------------------------------------------------------------------------
# Writer


class RecordIOWriter:
    """Write records (and an idx) to temporary files renamed into place on :meth:`close`, so a crash never leaves a
    half-written dataset under the final name. ``write(record, key)`` frames ``record`` like dmlc-core."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._targets = [p for p in (self.rec_path, self.idx_path) if p is not None]
        self._tmps: list[Path] = []
        self._files: list[Any] = []
        for p in self._targets:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
            self._tmps.append(Path(tmp))
            self._files.append(os.fdopen(fd, "wb"))
        self._rec = self._files[0]
        self._idx = self._files[1] if self.idx_path is not None else None
        self.count = 0

    def write(self, record: bytes, key: int | None = None) -> int:
        """Append one record under ``key`` (default: the count written so far); return its offset."""
        offset = self._rec.tell()
        self._rec.write(encode_record(record))
        if self._idx is not None:
            self._idx.write(f"{self.count if key is None else int(key)}\t{offset}\n".encode())
        self.count += 1
        return offset

    def close(self) -> None:
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for tmp, target in zip(self._tmps, self._targets):
            os.replace(tmp, target)

    def abort(self) -> None:
        for f in self._files:
            f.close()
        for tmp in self._tmps:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class RecInfo:
    """Summary of a rec dataset (what ``frleak rec info`` prints)."""

    rec: str
    idx: str
    images: int
    identities: int
    num_classes: int
    image_size: tuple[int, int] | None
    identity_records: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size is not None else None
        return d


def _encoded(source: ImageSource, quality: int | None, where: str) -> bytes:
    """The bytes to store for one image: the original encoding unless ``quality`` asks for JPEG re-encoding (or the
    source is pixels, which must be encoded anyway)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise DataError(f"image not found: {source}") from None
        except OSError as exc:
            raise DataError(f"cannot read image {source}: {exc}") from None
    elif isinstance(source, (Image.Image, np.ndarray)):
        img = source if isinstance(source, Image.Image) else Image.fromarray(np.asarray(source, dtype=np.uint8))
        return _jpeg(img, 95 if quality is None else quality)
    else:
        raise TypeError(f"{where}: unsupported image source of type {type(source).__name__}")
    if quality is not None:
        return _jpeg(decode_image(data, where), quality)
    return data


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=int(quality))
    return out.getvalue()


def write_rec(
    samples: Iterable[tuple[ImageSource, int]], prefix: str | Path, quality: int | None = None,
    progress: bool = False,
) -> RecInfo:
    """Write ``(image, label)`` samples as an insightface dataset: PREFIX.rec, PREFIX.idx and ``property``.

    Images are stored with their original encoded bytes (read back bit-identical) unless ``quality`` is given, which
    re-encodes every image as JPEG at that quality; pixel sources (PIL image, uint8 array) are JPEG-encoded (quality
    95 by default, insightface's). Samples are grouped by label (stable: input order within a label), since each
    identity is one contiguous key range. Layout: key 0 = range header ``[N + 1, N + 1 + K]``, keys 1..N = images
    labelled with their identity, keys N+1..N+K = one ``[first, end)`` range record per identity; ``property`` =
    ``max_label + 1,H,W`` with (H, W) of the first image.
    """
    items = list(samples)
    labels: list[int] = []
    for i, (_, label) in enumerate(items):
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= int(label) < _FLOAT32_EXACT:
            raise DataError(f"sample {i}: label {label!r} is not an integer in [0, {_FLOAT32_EXACT}) "
                            "(rec labels are stored as float32)")
        labels.append(int(label))
    order = sorted(range(len(items)), key=labels.__getitem__)
    n = len(items)
    ranges: list[tuple[int, int]] = []
    for pos, i in enumerate(order):
        if pos == 0 or labels[i] != labels[order[pos - 1]]:
            ranges.append((pos + 1, pos + 2))
        else:
            ranges[-1] = (ranges[-1][0], pos + 2)
    first_id, end = n + 1, n + 1 + len(ranges)
    if end >= _FLOAT32_EXACT:
        raise DataError(f"{n} images + {len(ranges)} identities exceed the {_FLOAT32_EXACT} keys a float32 header "
                        "range can address exactly")
    paths = resolve_rec_paths(prefix)
    size: tuple[int, int] | None = None
    iterator: Iterable[tuple[int, int]] = enumerate(order, 1)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=n, desc="pack rec", unit="img", leave=False)
    with RecordIOWriter(paths.rec, paths.idx) as writer:
        writer.write(pack_header(IRHeader(0, (float(first_id), float(end)), 0, 1)), 0)
        for key, i in iterator:
            source = items[i][0]
            where = str(source) if isinstance(source, (str, os.PathLike)) else f"sample {i}"
            data = _encoded(source, quality, where)
            hw = _probe_size(data, where)  # refuse non-images now rather than at training time
            size = size or hw
            writer.write(pack_header(IRHeader(0, float(labels[i]), key, 0), data), key)
        for key, (lo, hi) in enumerate(ranges, first_id):
            writer.write(pack_header(IRHeader(0, (float(lo), float(hi)), key, 0)), key)
    num_classes = max(labels) + 1 if labels else 0
    h, w = size if size is not None else (112, 112)
    atomic_write_text(paths.property, f"{num_classes},{h},{w}\n")
    return RecInfo(str(paths.rec), str(paths.idx), n, len(ranges), num_classes, size, True)


def folder_to_rec(
    identity_folder: str | Path, prefix: str | Path, *, min_images: int = 1, quality: int | None = None,
    progress: bool = False,
) -> RecInfo:
    """Pack an identity folder (ROOT/IDENTITY/IMAGE) into PREFIX.rec/.idx; labels are the dense indices of the
    identities in sorted order (:func:`frleak.data.folder.identity_labels`), images in sorted order within each."""
    from frleak.data.folder import identity_labels, scan_identity_folder

    samples = scan_identity_folder(identity_folder, min_images=min_images)
    labels, _ = identity_labels(samples)
    return write_rec(((s.path, lab) for s, lab in zip(samples, labels)), prefix, quality=quality, progress=progress)


_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"BM", ".bmp"), (b"P5", ".pgm"),
               (b"P2", ".pgm"), (b"P6", ".ppm"), (b"P3", ".ppm"), (b"II*\0", ".tif"), (b"MM\0*", ".tif"),
               (b"GIF8", ".gif"))


def image_extension(payload: bytes, where: str) -> str:
    """File extension for encoded image bytes, from their signature; DataError when they are not an image."""
    for sig, ext in _SIGNATURES:
        if payload.startswith(sig):
            return ext
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return ".webp"
    raise DataError(f"{where}: payload ({len(payload)} bytes, starting {payload[:8]!r}) is not a known image format")


def rec_to_folder(prefix: str | Path, out_dir: str | Path, progress: bool = False) -> int:
    """Unpack a rec dataset into ``out_dir/IDENTITY/KEY.ext`` with the stored bytes unchanged; return the number of
    images. Identity folders are ``id_<label>`` zero-padded to one width (so sorted names keep label order, and
    :func:`frleak.data.folder.identity_labels` gives back the same labels for dense labels); images whose label is
    negative (an unlabelled rec) go to ``unlabeled/``. ``out_dir`` must be empty or absent."""
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output folder {out} exists and is not empty; choose a new folder")
    with InsightFaceRecDataset(prefix, decode=False) as ds:
        labels = ds.labels
        width = len(str(max(int(labels.max()), 0))) if len(ds) else 1
        kwidth = max(8, len(str(int(ds.image_keys.max())))) if len(ds) else 8
        indices: Iterable[int] = range(len(ds))
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, desc="unpack rec", unit="img", leave=False)
        for i in indices:
            key, _, payload = ds.record(i)
            label = int(labels[i])
            folder = out / (f"id_{label:0{width}d}" if label >= 0 else "unlabeled")
            folder.mkdir(parents=True, exist_ok=True)
            ext = image_extension(payload, f"{ds.paths.rec} key {key}")
            (folder / f"{key:0{kwidth}d}{ext}").write_bytes(payload)
        return len(ds)


def rec_info(prefix: str | Path) -> RecInfo:
    """Counts of a rec dataset: images, identities (identity records when present, else distinct labels, which reads
    every image header), num_classes and the first image's (H, W)."""
    with InsightFaceRecDataset(prefix, decode=False) as ds:
        if ds.identity_range is not None:
            identities = ds.identity_range[1] - ds.identity_range[0]
        else:
            identities = int(np.unique(ds.labels).size)
        return RecInfo(str(ds.paths.rec), str(ds.paths.idx), len(ds), identities, ds.num_classes, ds.image_size(),
                       ds.identity_range is not None)
