"""Face preparation: MTCNN detection, similarity alignment to the ArcFace template, folder runs, dataset fetching."""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frleak.cli import main
from frleak.data import fetch
from frleak.data.align import ARCFACE_TEMPLATE, LOG_NAME, align_face, align_folder, select_face, template, umeyama
from frleak.data.mtcnn import MTCNN, Face, batched_nms, nms
from frleak.errors import CheckpointError


@pytest.fixture(scope="module")
def detector(shared: Path) -> MTCNN:
    torch.set_num_threads(1)
    return MTCNN(weights_dir=shared / "weights" / "mtcnn")


def _similarity(angle: float, scale: float, t: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _smooth_image(seed: int, size: int = 112) -> Image.Image:
    """Low-frequency colour noise: bilinear resampling of it is nearly lossless, so warps can be compared."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------- pure geometry


def test_umeyama_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = _similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 3.0), tuple(rng.uniform(-50, 50, 2)))
        src = rng.uniform(0, 250, (5, 2))
        np.testing.assert_allclose(umeyama(src, _apply(m, src)), m, atol=1e-9)


def test_umeyama_is_least_squares_over_similarities() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = _apply(_similarity(0.3, 1.2, (5, -3)), src) + rng.normal(0, 2, (5, 2))
    best = umeyama(src, dst)
    err = ((_apply(best, src) - dst) ** 2).sum()
    for _ in range(50):  # any perturbed similarity fits worse
        p = best + rng.normal(0, 0.01, (2, 3)) * np.array([[1, 1, 10], [1, 1, 10]])
        p[1, 0], p[1, 1] = -p[0, 1], p[0, 0]  # keep it a similarity
        assert ((_apply(p, src) - dst) ** 2).sum() >= err - 1e-9


def test_template_landmarks_give_back_the_same_image() -> None:
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    out = align_face(img, ARCFACE_TEMPLATE)
    assert out.size == (112, 112) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_align_uses_pil_pixel_centres_like_resize() -> None:
    """Independent oracle for the half-pixel convention: a pure 2x scale must equal PIL's bilinear upscaling,
    which maps pixel centres (x + 0.5) / 2 - 0.5."""
    img = Image.fromarray(np.random.default_rng(7).integers(0, 256, (56, 56, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((112, 112), Image.Resampling.BILINEAR), float)
    out = np.asarray(align_face(img, (ARCFACE_TEMPLATE + 0.5) / 2 - 0.5), float)
    assert np.abs(out - expected)[2:-2, 2:-2].mean() < 1.5


def test_align_undoes_a_known_warp() -> None:
    """Place a face-sized image into a larger photo by a known similarity; aligning with the moved template
    landmarks must give the original back (up to bilinear resampling), and a 2-pixel landmark error must not."""
    face = _smooth_image(3)
    m = _similarity(0.35, 1.7, (60.0, 40.0))  # aligned frame -> photo
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    off = -inv[:, :2] @ (m[:, 2] + 0.5) + 0.5  # PIL pixel-centre convention, as in align_face
    photo = face.transform((300, 300), Image.Transform.AFFINE,
                           (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
                           resample=Image.Resampling.BILINEAR)
    marks = _apply(m, ARCFACE_TEMPLATE)
    inner = (slice(8, 104), slice(8, 104))
    good = np.abs(np.asarray(align_face(photo, marks), float) - np.asarray(face, float))[inner].mean()
    bad = np.abs(np.asarray(align_face(photo, marks + 2.0), float) - np.asarray(face, float))[inner].mean()
    assert good < 2.0, good
    assert bad > 2 * good


def test_template_scales_with_output_size() -> None:
    np.testing.assert_allclose(template(224), 2 * ARCFACE_TEMPLATE)
    img = _smooth_image(4, 224)
    out = align_face(img, template(224), size=224)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_select_face_center_or_largest() -> None:
    lm = np.zeros((5, 2), np.float32)
    small_centre = Face(np.array([90, 90, 130, 130], np.float32), 0.8, lm)
    big_corner = Face(np.array([0, 0, 100, 100], np.float32), 0.99, lm)
    faces = [big_corner, small_centre]
    assert select_face(faces, (220, 220), "center") is small_centre
    assert select_face(faces, (220, 220), "largest") is big_corner
    assert select_face([], (220, 220)) is None


def test_nms_keeps_no_overlapping_pair_and_explains_every_drop() -> None:
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 100, (200, 2))
    wh = rng.uniform(5, 40, (200, 2))
    boxes = torch.tensor(np.hstack([xy, xy + wh]), dtype=torch.float32)
    scores = torch.tensor(rng.uniform(0, 1, 200), dtype=torch.float32)

    def overlap(a: torch.Tensor, b: torch.Tensor, mode: str) -> float:
        iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0]) + 1))
        ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1]) + 1))
        area = [float((x[2] - x[0] + 1) * (x[3] - x[1] + 1)) for x in (a, b)]
        return iw * ih / (min(area) if mode == "min" else sum(area) - iw * ih)

    for mode in ("union", "min"):
        keep = nms(boxes, scores, 0.4, mode).tolist()
        assert keep == sorted(keep, key=lambda i: -float(scores[i]))
        kept = set(keep)
        for i in keep:
            for j in keep:
                assert i == j or overlap(boxes[i], boxes[j], mode) <= 0.4
        for d in set(range(200)) - kept:
            assert any(scores[k] >= scores[d] and overlap(boxes[k], boxes[d], mode) > 0.4 for k in kept)


def test_batched_nms_never_suppresses_across_groups() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    assert len(batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5)) == 2
    assert len(batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5)) == 1


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="pnet.pt"):
        MTCNN(weights_dir=tmp_path)


# ------------------------------------------------------------------------------------------ real data (shared)


def _subset(shared: Path, dst: Path, n_ids: int) -> list[Path]:
    """Copy the first ``n_ids`` identities of lfw-raw-sample that are complete in lfw-112."""
    src = shared / "data" / "lfw-raw-sample"
    ref = shared / "data" / "lfw-112"
    rels: list[Path] = []
    for ident in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(ident.glob("*.jpg"))
        if all((ref / f.relative_to(src)).is_file() for f in files):
            for f in files:
                (dst / ident.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / ident.name / f.name)
                rels.append(f.relative_to(src))
            if len({r.parent for r in rels}) == n_ids:
                break
    return rels


@pytest.mark.shared
def test_landmarks_are_in_template_order(shared: Path, detector: MTCNN) -> None:
    img = Image.open(next((shared / "data" / "lfw-raw-sample").glob("*/*.jpg"))).convert("RGB")
    face = select_face(detector.detect([img])[0], img.size)
    assert face is not None and face.score > 0.9
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
    assert lex < nx < rex and lmx < rmx  # image-left eye and mouth corner first
    assert max(ley, rey) < ny < min(lmy, rmy)  # eyes above nose above mouth
    x1, y1, x2, y2 = face.box
    assert (x1 <= face.landmarks[:, 0]).all() and (face.landmarks[:, 0] <= x2).all()
    assert (y1 <= face.landmarks[:, 1]).all() and (face.landmarks[:, 1] <= y2).all()


@pytest.mark.shared
def test_aligned_faces_match_shared_lfw112_embeddings(shared: Path, detector: MTCNN, tmp_path: Path) -> None:
    """Acceptance on 10 identities: MobileFaceNet embeddings of our alignment vs the shared aligned copy."""
    from frleak.data.images import load_uint8, normalize
    from frleak.io import safe_torch_load
    from frleak.models import create_backbone

    rels = _subset(shared, tmp_path / "raw", 10)
    report = align_folder(tmp_path / "raw", tmp_path / "out", detector=detector, progress=False, batch_size=8)
    assert report.aligned == len(rels) and report.no_face == report.unreadable == 0
    net = create_backbone("mobilefacenet")
    net.load_state_dict(safe_torch_load(shared / "weights" / "mobilefacenet_casia_arcface.ckpt")["net_state_dict"])
    net.eval()

    def emb(paths: list[Path]) -> torch.Tensor:
        with torch.no_grad():
            e = net(normalize(load_uint8(paths, net.input_spec), net.input_spec))
        return torch.nn.functional.normalize(e, dim=1)

    ours = emb([tmp_path / "out" / r for r in rels])
    ref = emb([shared / "data" / "lfw-112" / r for r in rels])
    cos = (ours * ref).sum(1)
    assert float(cos.mean()) >= 0.9, cos
    # and the match is specific: each face is closer to its own reference than to the others on average
    assert float(cos.mean()) > float((ours @ ref.T).mean()) + 0.3


@pytest.mark.shared
def test_bad_inputs_are_logged_and_the_run_completes_then_resumes(shared: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _subset(shared, src, 1)
    n_good = len(list(src.glob("*/*.jpg")))
    (src / "Zz_flat").mkdir()
    Image.new("RGB", (250, 250), (128, 128, 128)).save(src / "Zz_flat" / "grey.jpg")
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(
        src / "Zz_flat" / "noise.png")
    (src / "Zz_bad").mkdir()
    (src / "Zz_bad" / "garbage.jpg").write_bytes(b"\x00\x01not a jpeg" * 50)
    (src / "Zz_bad" / "notes.txt").write_text("not an image, ignored")
    (src / "Zz_empty").mkdir()
    weights = str(shared / "weights" / "mtcnn")

    rc = main(["align", str(src), str(dst), "--no-progress", "--weights", weights, "--batch-size", "3"])
    assert rc == 0
    entries = [json.loads(line) for line in (dst / LOG_NAME).read_text().splitlines()]
    status = {e["path"]: e["status"] for e in entries}
    assert status == {"Zz_flat/grey.jpg": "no_face", "Zz_flat/noise.png": "no_face",
                      "Zz_bad/garbage.jpg": "unreadable", "Zz_empty": "empty_folder"}
    outs = sorted(dst.glob("*/*.jpg"))
    assert len(outs) == n_good
    assert all(Image.open(p).size == (112, 112) for p in outs)
    first = json.loads((dst / "align_report.json").read_text())
    assert (first["aligned"], first["no_face"], first["unreadable"], first["empty_folders"]) == (n_good, 2, 1, 1)

    mtimes = [p.stat().st_mtime_ns for p in outs]
    again = align_folder(src, dst, weights_dir=weights, progress=False)
    assert (again.aligned, again.skipped_existing, again.no_face, again.unreadable) == (0, n_good, 2, 1)
    assert [p.stat().st_mtime_ns for p in outs] == mtimes

    (outs[0]).unlink()  # a lost output is redone, the rest kept
    third = align_folder(src, dst, weights_dir=weights, progress=False, fmt="jpg")
    assert (third.aligned, third.skipped_existing) == (1, n_good - 1)


@pytest.mark.shared
def test_exif_rotated_photo_is_aligned_upright(shared: Path, detector: MTCNN, tmp_path: Path) -> None:
    photo = Image.open(next((shared / "data" / "lfw-raw-sample").glob("*/*.jpg"))).convert("RGB")
    (tmp_path / "src" / "id").mkdir(parents=True)
    photo.save(tmp_path / "src" / "id" / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "src" / "id" / "sideways.png", exif=exif)
    report = align_folder(tmp_path / "src", tmp_path / "out", detector=detector, progress=False, fmt="png")
    assert report.aligned == 2
    a, b = (np.asarray(Image.open(tmp_path / "out" / "id" / f"{n}.png"), float) for n in ("upright", "sideways"))
    assert np.abs(a - b).mean() < 1.0


def test_align_rejects_a_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["align", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "nope" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- fetching


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/lfw.tgz"  # nothing listens there: connection refused


def test_offline_fetch_says_so_and_how_to_work_around(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(fetch.NetworkUnavailable) as info:
        fetch.fetch_dataset("lfw", tmp_path / "out", cache_dir=tmp_path / "cache", probe_url=_closed_port_url())
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    for needle in ("no internet", "frleak align", "FRLEAK_SHARED", "--data", str(tmp_path / "cache")):
        assert needle in msg
    assert not (tmp_path / "out").exists()


def test_a_silent_host_times_out_instead_of_hanging(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts the TCP connection (backlog) but never answers
    try:
        t0 = time.perf_counter()
        with pytest.raises(fetch.NetworkUnavailable):
            fetch.check_online(f"http://127.0.0.1:{server.getsockname()[1]}/", timeout=0.5)
        assert time.perf_counter() - t0 < 3
    finally:
        server.close()


def test_cli_data_offline_exits_2_with_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(fetch.DATASETS, "lfw", replace(fetch.DATASETS["lfw"], url=_closed_port_url()))
    rc = main(["data", "lfw", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--timeout", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no internet" in err and "frleak align" in err


@pytest.mark.shared
def test_fetch_uses_a_cached_copy_without_network(shared: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    raw = cache / "lfw_home" / "lfw_funneled"
    rels = _subset(shared, raw, 1)
    res = fetch.fetch_dataset("lfw", tmp_path / "out", cache_dir=cache, probe_url=_closed_port_url(),
                              weights_dir=shared / "weights" / "mtcnn", progress=False)
    assert not res.downloaded and res.raw_dir == raw
    assert res.report is not None and res.report.aligned == len(rels)
    assert all((tmp_path / "out" / r).is_file() for r in rels)
