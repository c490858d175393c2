"""insightface RecordIO without mxnet: byte-level format against hand-built frames (the dmlc-core / mxnet spec as the
oracle), bit-identical round trips of real LFW images, and DataError (naming the file) for every kind of damage."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import frleak.paths
from frleak.cli import main
from frleak.data.folder import identity_labels, scan_identity_folder
from frleak.data.images import InputSpec, load_uint8
from frleak.data.recordio import (
    MAGIC,
    InsightFaceRecDataset,
    IRHeader,
    RecordIOReader,
    RecordIOWriter,
    _read_labels,
    encode_record,
    folder_to_rec,
    load_rec_uint8,
    pack_header,
    rec_to_folder,
    unpack_header,
    write_rec,
)
from frleak.errors import DataError

MAGIC_LE = struct.pack("<I", MAGIC)


def frame(cflag: int, data: bytes) -> bytes:
    """One dmlc-core frame written straight from the spec: magic, (cflag << 29) | length, data, zero pad to 4."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


@pytest.fixture
def lfw_folder(tmp_path: Path) -> Path:
    """3 identities x 3 real aligned LFW images copied to a temporary identity folder."""
    root = frleak.paths.shared_dir()
    lfw = root / "data" / "lfw-112" if root is not None else None
    if lfw is None or not lfw.is_dir():
        (pytest.fail if os.environ.get("CI") else pytest.skip)("shared data/lfw-112 not found (FRLEAK_SHARED)")
    out = tmp_path / "folder"
    taken = 0
    for ident in sorted(lfw.iterdir()):
        files = sorted(ident.glob("*.jpg"))
        if len(files) >= 3:
            (out / ident.name).mkdir(parents=True)
            for f in files[:3]:
                shutil.copyfile(f, out / ident.name / f.name)
            taken += 1
        if taken == 3:
            break
    return out


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------------------- format


def test_header_pack_matches_mxnet_layout() -> None:
    scalar = pack_header(IRHeader(0, 7.0, 5, 0), b"img")
    assert scalar == struct.pack("<IfQQ", 0, 7.0, 5, 0) + b"img"
    array = pack_header(IRHeader(0, (3.0, 9.0), 0, 1))
    assert array == struct.pack("<IfQQ", 2, 0.0, 0, 1) + struct.pack("<2f", 3.0, 9.0)
    assert unpack_header(scalar) == (IRHeader(0, 7.0, 5, 0), b"img")
    assert unpack_header(array + b"xy") == (IRHeader(2, (3.0, 9.0), 0, 1), b"xy")
    with pytest.raises(DataError, match="shorter than the 24-byte"):
        unpack_header(b"\0" * 10)


def test_writer_splits_at_aligned_magic_like_dmlc() -> None:
    a, b, c = b"ABCDEFGH", b"IJKL", b"xyz"
    data = a + MAGIC_LE + b + MAGIC_LE + c
    # aligned occurrences become first / middle / last frames with the magic dropped
    assert encode_record(data) == frame(1, a) + frame(2, b) + frame(3, c)
    # an unaligned occurrence is ordinary data: one whole frame
    shifted = b"Q" + MAGIC_LE + b"RST"
    assert encode_record(shifted) == frame(0, shifted)
    assert encode_record(b"") == frame(0, b"")


def test_hand_built_multipart_record_reads_back(tmp_path: Path) -> None:
    payload_a, payload_b = b"\x01\x02\x03\x04" * 3, b"tail-bytes"
    header = struct.pack("<IfQQ", 0, 4.0, 1, 0)
    rec_bytes = frame(0, header + b"first") + frame(1, header + payload_a) + frame(2, b"") + frame(3, payload_b)
    second_offset = len(frame(0, header + b"first"))
    rec, idx = tmp_path / "m.rec", tmp_path / "m.idx"
    rec.write_bytes(rec_bytes)
    idx.write_text(f"0\t0\n1\t{second_offset}\n")
    expected = payload_a + MAGIC_LE + MAGIC_LE + payload_b  # the reader re-inserts the magic between parts
    with RecordIOReader(rec, idx) as r:
        assert r.read(1) == (IRHeader(0, 4.0, 1, 0), expected)
        assert r.read(0)[1] == b"first"
    with RecordIOReader(rec) as r:  # no idx: sequential scan, keys are ordinal positions
        assert len(r) == 2
        assert [rec_ for _, rec_ in r.records()] == [header + b"first", header + expected]
        assert r.read(1)[1] == expected
    # the writer produces these very frames for the same record
    assert encode_record(header + expected).endswith(frame(1, header + payload_a) + frame(2, b"") + frame(3, payload_b))
    # an offset into the middle of a record (a continuation frame) is refused, naming the file and the key
    middle = second_offset + len(frame(1, header + payload_a))
    idx.write_text(f"0\t0\n1\t{middle}\n")
    with RecordIOReader(rec, idx) as r, pytest.raises(DataError, match="continuation flag 2") as err:
        r.read(1)
    assert str(rec) in str(err.value) and "key 1" in str(err.value)
    # a first part followed by a whole record (the continuation went missing) is corrupt too
    rec.write_bytes(frame(1, header) + frame(0, b"next"))
    with RecordIOReader(rec) as r, pytest.raises(DataError, match="continuation flag 0"):
        list(r.records())


def test_writer_reader_round_trip_with_magic_inside_payload(tmp_path: Path) -> None:
    payloads = [b"", b"a", MAGIC_LE * 3, b"xy" + MAGIC_LE + b"zw" + MAGIC_LE, bytes(range(256)) * 5]
    with RecordIOWriter(tmp_path / "r.rec", tmp_path / "r.idx") as w:
        for key, p in zip((10, 3, 7, 0, 99), payloads):
            w.write(pack_header(IRHeader(0, float(key), key, 0), p), key)
    with RecordIOReader(tmp_path / "r.rec", tmp_path / "r.idx") as r:
        assert list(r.keys) == [10, 3, 7, 0, 99]
        for key, p in zip((10, 3, 7, 0, 99), payloads):
            assert r.read(key) == (IRHeader(0, float(key), key, 0), p)
        assert [k for k, _, _ in r] == [10, 3, 7, 0, 99]


# ------------------------------------------------------------------------------------------------ real images


def test_write_rec_real_images_bit_identical(lfw_folder: Path, tmp_path: Path) -> None:
    samples = scan_identity_folder(lfw_folder)
    labels, _ = identity_labels(samples)
    # feed them interleaved: the writer must group identities into contiguous key ranges, stable within each
    order = [0, 3, 6, 1, 4, 7, 2, 5, 8]
    info = write_rec([(samples[i].path, labels[i]) for i in order], tmp_path / "ds" / "train")
    assert (info.images, info.identities, info.num_classes) == (9, 3, 3)
    assert (tmp_path / "ds" / "property").read_text().strip() == "3,112,112"
    with InsightFaceRecDataset(tmp_path / "ds", decode=False) as ds:
        assert len(ds) == 9 and ds.num_classes == 3 and ds.identity_range == (10, 13)
        for i in range(9):  # grouped by label, input order kept inside a label = sorted sample order here
            payload, label = ds[i]
            assert payload == Path(samples[i].path).read_bytes()
            assert label == labels[i]
        assert ds.labels.tolist() == labels
        # identity-range records cover exactly each identity's keys
        with RecordIOReader(ds.paths.rec, ds.paths.idx) as r:
            ranges = [r.read(k)[0].label for k in range(10, 13)]
        assert ranges == [(1.0, 4.0), (4.0, 7.0), (7.0, 10.0)]
    with InsightFaceRecDataset(tmp_path / "ds" / "train.rec") as ds:
        img, label = ds[4]
        assert isinstance(img, Image.Image) and img.mode == "RGB" and label == labels[4]
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(samples[4].path).convert("RGB")))
    spec = InputSpec(size=(112, 96), crop=(0, 8, 112, 96))
    x, y = load_rec_uint8(tmp_path / "ds", spec, limit=5)
    assert torch.equal(x, load_uint8([s.path for s in samples[:5]], spec))
    assert y.tolist() == labels[:5] and y.dtype == torch.long


def test_folder_rec_folder_round_trip_identical_files(lfw_folder: Path, tmp_path: Path) -> None:
    folder_to_rec(lfw_folder, tmp_path / "casia")
    assert rec_to_folder(tmp_path / "casia", tmp_path / "out") == 9
    original = scan_identity_folder(lfw_folder)
    restored = scan_identity_folder(tmp_path / "out")
    assert [Path(s.path).read_bytes() for s in restored] == [Path(s.path).read_bytes() for s in original]
    assert identity_labels(restored)[0] == identity_labels(original)[0]
    with pytest.raises(DataError, match="not empty"):
        rec_to_folder(tmp_path / "casia", tmp_path / "out")


def test_cli_info_json_and_pack(lfw_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rec", "pack", str(lfw_folder), str(tmp_path / "ds") + "/"]) == 0
    capsys.readouterr()
    assert main(["rec", "info", str(tmp_path / "ds"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["images"], info["identities"], info["num_classes"], info["image_size"]) == (9, 3, 3, [112, 112])
    assert main(["rec", "info", str(tmp_path / "missing")]) == 2
    assert "missing.rec" in capsys.readouterr().err


# ------------------------------------------------------------------------------- layouts without record 0 header


def test_rec_without_range_header_uses_idx_keys(tmp_path: Path) -> None:
    """flag == 0 on record 0 (im2rec style): every idx key is an image, labels may be array labels."""
    jpegs = synthetic_jpegs(4)
    with RecordIOWriter(tmp_path / "p.rec", tmp_path / "p.idx") as w:
        w.write(pack_header(IRHeader(0, 2.0, 0, 0), jpegs[0]), 0)
        w.write(pack_header(IRHeader(0, (5.0, 0.5), 1, 0), jpegs[1]), 1)  # array label: label[0] is the identity
        w.write(pack_header(IRHeader(0, 0.0, 2, 0), jpegs[2]), 2)
        w.write(pack_header(IRHeader(0, (1.0,), 3, 0), MAGIC_LE + jpegs[3]), 3)  # label beside a split frame
    with InsightFaceRecDataset(tmp_path / "p.rec", decode=False) as ds:
        assert ds.identity_range is None and len(ds) == 4
        expected = [ds[i][1] for i in range(4)]  # one header at a time: the oracle for the vectorised path
        assert expected == [2, 5, 0, 1]
        assert ds.labels.tolist() == expected
        assert _read_labels(ds._reader, ds.image_keys, chunk=3).tolist() == expected
        assert ds.num_classes == 6


# --------------------------------------------------------------------------------------------------- damage


@pytest.fixture
def small_rec(tmp_path: Path) -> Path:
    write_rec([(b, i % 2) for i, b in enumerate(synthetic_jpegs(4))], tmp_path / "d" / "train")
    return tmp_path / "d"


def test_truncated_rec_names_file(small_rec: Path) -> None:
    rec = small_rec / "train.rec"
    offsets = [int(line.split()[1]) for line in (small_rec / "train.idx").read_text().splitlines()]
    cut = offsets[2] + 20  # inside image record 2
    rec.write_bytes(rec.read_bytes()[:cut])
    # the idx still points past the cut: caught on open
    with pytest.raises(DataError, match="beyond the end") as err:
        InsightFaceRecDataset(small_rec)
    assert str(small_rec / "train.idx") in str(err.value)
    with RecordIOReader(rec) as r, pytest.raises(DataError, match="truncated record") as err:
        list(r.records())
    assert str(rec) in str(err.value)
    # an idx line for the cut record itself: the read names the file and the key
    (small_rec / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets[:3])))
    with RecordIOReader(rec, small_rec / "train.idx") as r, pytest.raises(DataError, match="truncated") as err:
        r.read(2)
    assert str(rec) in str(err.value) and "key 2" in str(err.value)


def test_corrupt_magic_names_file_and_offset(small_rec: Path) -> None:
    rec = small_rec / "train.rec"
    offset = int((small_rec / "train.idx").read_text().splitlines()[1].split()[1])
    data = bytearray(rec.read_bytes())
    data[offset : offset + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    with InsightFaceRecDataset(small_rec) as ds, pytest.raises(DataError, match="no RecordIO magic") as err:
        ds[0]
    assert str(rec) in str(err.value) and f"offset {offset}" in str(err.value)
    with pytest.raises(DataError, match="no RecordIO magic"), InsightFaceRecDataset(small_rec) as ds:
        ds.labels  # noqa: B018 - the vectorised path must fall back to the checked read, not guess
    with RecordIOReader(rec) as r, pytest.raises(DataError, match="no RecordIO magic"):
        len(r)


@pytest.mark.parametrize(
    ("idx_text", "message"),
    [
        ("0\t0\n1\tabc\n", "line 2"),
        ("0\t0\n1\n", "line 2"),
        ("0\t0\n1\t40\n1\t80\n", "key 1 appears more than once"),
        ("0\t0\n1\t999999\n", "key 1 .* offset 999999, beyond the end"),
        ("0\t0\n1\t6\n", "not a record start"),
    ],
)
def test_bad_idx_names_file(small_rec: Path, idx_text: str, message: str) -> None:
    idx = small_rec / "train.idx"
    idx.write_text(idx_text)
    with pytest.raises(DataError, match=message) as err:
        RecordIOReader(small_rec / "train.rec", idx)
    assert str(idx) in str(err.value)


def test_range_header_that_does_not_fit(small_rec: Path) -> None:
    idx = small_rec / "train.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:3]) + "\n")  # record 0 claims images 1..4 + 2 identities; the idx holds 2 keys
    with pytest.raises(DataError, match="does not fit") as err:
        InsightFaceRecDataset(small_rec)
    assert str(small_rec / "train.rec") in str(err.value)


def test_missing_files_name_them(small_rec: Path, tmp_path: Path) -> None:
    (small_rec / "train.idx").unlink()
    with pytest.raises(DataError, match="train.idx not found"):
        InsightFaceRecDataset(small_rec)
    with pytest.raises(DataError, match="index not found"):
        RecordIOReader(small_rec / "train.rec", small_rec / "train.idx")
    with pytest.raises(DataError, match="not found"):
        RecordIOReader(tmp_path / "nothing.rec")


def test_write_rec_rejects_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="label -1"):
        write_rec([(synthetic_jpegs(1)[0], -1)], tmp_path / "a")
    with pytest.raises(DataError, match="not a readable image"):
        write_rec([(b"not an image", 0)], tmp_path / "b")
    assert not (tmp_path / "b.rec").exists()  # nothing half-written under the final name
    with pytest.raises(DataError, match="image not found"):
        write_rec([(tmp_path / "missing.jpg", 0)], tmp_path / "c")
