"""Multi-process training and extraction (frleak.distributed) against the single-process oracle.

The main test launches a real 2-process CPU ``torchrun`` (gloo) on this very file (its ``__main__`` is the worker):
DDP training of the tiny backbone with an uneven batch split (batch 11 -> 6 + 5 rows), sharded extraction, and
``frleak extract`` through the CLI; then it runs the same training and extraction in this process and compares.
Claims tested (docs/scale.md): same files and card, same history, final weights equal within float32 summation-order
drift (far below what training moved them), the same weights on both ranks, and extraction results equal to
one-process extraction: bitwise, when both sides run the same kernels with the same thread count (with 2 threads
against 1 the last bits can differ, ~1e-8 absolute, from a different summation split).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from frleak.distributed import (
    FolderRows,
    SyncBatchNorm1d,
    SyncBatchNorm2d,
    _assemble,
    convert_sync_batchnorm,
    distributed_extract,
    revert_sync_batchnorm,
    shard_rows,
)
from frleak.errors import ConfigError
from frleak.features import FeatureSet, extract_features
from frleak.models.base import Backbone, create_backbone
from frleak.train import TrainConfig

CFG = TrainConfig(epochs=2, batch_size=11, lr=0.05, warmup_epochs=0.5, seed=3, head_kwargs={"s": 16.0, "m": 0.2})
EXTRACT_BS = 10  # 64 rows -> 7 batches: rank 0 gets 4, rank 1 gets 3 (the last one short)


def _data(n: int = 64, classes: int = 8, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class templates plus noise, uint8 (n, 3, size, size): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, 3, size, size, generator=g) * 255
    labels = torch.arange(n) % classes
    x = templates[labels] + 40 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 255).round().to(torch.uint8), labels


def _model() -> Backbone:
    torch.manual_seed(11)
    return create_backbone("tiny", input_size=32)


def _write_folder(images: torch.Tensor, labels: torch.Tensor, root: Path) -> Path:
    from PIL import Image

    for i, (x, y) in enumerate(zip(images, labels)):
        (root / f"id{int(y):02d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(root / f"id{int(y):02d}" / f"{i:03d}.png")
    return root


def _worker(out: Path) -> None:
    """Runs under torchrun: DDP training, sharded extraction, CLI extraction."""
    from frleak.cli import main as cli_main
    from frleak.distributed import init_distributed
    from frleak.models.checkpoint import load_backbone
    from frleak.train import train_backbone

    info = init_distributed("cpu")
    assert info.world_size == 2 and info.backend == "gloo", info
    images, labels = _data()
    model = _model()
    train_backbone(model, images, labels, CFG, out_dir=out / "ddp", progress=False)
    assert not any(isinstance(m, (SyncBatchNorm1d, SyncBatchNorm2d)) for m in model.modules()), "sync BN left"
    torch.save(model.state_dict(), out / f"rank{info.rank}_state.pt")
    loaded = load_backbone(out / "ddp")
    fs = distributed_extract(loaded, images, batch_size=EXTRACT_BS, flip=True, device="cpu")
    assert fs is not None
    fs.save(out / f"features_rank{info.rank}.npz")  # gather_to=None: every rank holds the whole set
    code = cli_main(["extract", "--weights", str(out / "ddp"), "--data", str(out / "folder"), "--out",
                     str(out / "cli.npz"), "--batch-size", "9", "--device", "cpu", "--kinds", "paper,variance",
                     "--json"])
    assert code == 0


def _run_torchrun(out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "worker", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    images, labels = _data()
    _write_folder(images, labels, out / "folder")
    _run_torchrun(out)
    return out


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    from frleak.train import train_backbone

    out = tmp_path_factory.mktemp("single")
    images, labels = _data()
    model = _model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train_backbone(model, images, labels, CFG, out_dir=out, progress=False)
    return out, init


def test_ddp_training_matches_single_process(ddp_run: Path, single_run: tuple[Path, dict[str, torch.Tensor]]) -> None:
    from frleak.models.checkpoint import load_backbone

    single, init = single_run
    ddp = ddp_run / "ddp"
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    card_d, card_s = (json.loads((d / "model_card.json").read_text()) for d in (ddp, single))
    assert card_d.keys() == card_s.keys()
    assert {k: v for k, v in card_d.items() if k != "final_loss"} == {k: v for k, v in card_s.items()
                                                                       if k != "final_loss"}
    assert card_d["final_loss"] == pytest.approx(card_s["final_loss"], rel=1e-4)
    hist_d, hist_s = (json.loads((d / "history.json").read_text()) for d in (ddp, single))
    assert [h["epoch"] for h in hist_d] == [h["epoch"] for h in hist_s]
    for hd, hs in zip(hist_d, hist_s):
        assert hd["loss"] == pytest.approx(hs["loss"], rel=1e-4)
        assert hd["train_acc"] == pytest.approx(hs["train_acc"], abs=1 / 55 + 1e-9)  # at most one argmax flip
        assert hd["lr"] == hs["lr"]
    wd = load_backbone(ddp).state_dict()
    ws = load_backbone(single).state_dict()
    assert wd.keys() == ws.keys()
    moved = max(float((ws[k] - init[k]).abs().max()) for k in ws if ws[k].dtype.is_floating_point)
    assert moved > 1e-2, "training hardly moved the weights: the comparison would prove nothing"
    for k in ws:
        if ws[k].dtype.is_floating_point:  # float32 summation-order drift (~1e-7 measured), 1000x below `moved`
            drift = float((wd[k] - ws[k]).abs().max())
            assert drift <= 1e-5 * max(1.0, float(ws[k].abs().max())), (k, drift)
        else:
            assert torch.equal(wd[k], ws[k]), k  # num_batches_tracked: the same number of steps
    # DDP keeps the ranks in lockstep: both hold bitwise the same trained model
    r0, r1 = (torch.load(ddp_run / f"rank{r}_state.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)


def _assert_same(a: FeatureSet, b: FeatureSet) -> None:
    """Bitwise: same batches, same kernels, one thread on both sides (see the module docstring)."""
    assert a.layer_names == b.layer_names and a.features.keys() == b.features.keys()
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k], err_msg=k)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torchrun runs its workers with OMP_NUM_THREADS=1; the oracle uses the same kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_ddp_extraction_matches_single_process(ddp_run: Path) -> None:
    from frleak.models.checkpoint import load_backbone

    model = load_backbone(ddp_run / "ddp")
    images, _ = _data()
    ref = extract_features(model, images, batch_size=EXTRACT_BS, flip=True)
    r0, r1 = (FeatureSet.load(ddp_run / f"features_rank{r}.npz") for r in (0, 1))
    _assert_same(r0, ref)
    _assert_same(r1, ref)

    source = FolderRows(ddp_run / "folder", model.input_spec)
    cli = FeatureSet.load(ddp_run / "cli.npz")
    ref_cli = extract_features(model, source[np.arange(len(source))], kinds=("paper", "variance"), batch_size=9)
    _assert_same(cli, ref_cli)
    assert cli.meta["labels"] == source.labels and len(cli.meta["paths"]) == 64
    assert cli.meta["paths"][0] == "id00/000.png"


# ---- in-process pieces ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["strided", "contiguous"])
@pytest.mark.parametrize(("n", "bs", "world"), [(64, 10, 2), (7, 3, 4), (5, 8, 3), (100, 7, 3)])
def test_shards_cover_every_row_once_in_whole_batches(n: int, bs: int, world: int, strategy: str) -> None:
    shards = [shard_rows(n, bs, r, world, strategy) for r in range(world)]
    allrows = np.concatenate(shards)
    assert np.array_equal(np.sort(allrows), np.arange(n))
    for rows in (r for r in shards if len(r)):  # whole single-process batches: every run starts on a boundary
        starts = rows[np.r_[True, np.diff(rows) != 1]]
        assert np.all(starts % bs == 0)
        assert all(len(rows[(rows >= s) & (rows < s + bs)]) == min(bs, n - s) for s in starts)


def test_bad_shard_options() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        shard_rows(10, 2, 0, 2, "random")
    with pytest.raises(ConfigError, match="batch size"):
        shard_rows(10, 0, 0, 2)


def test_assemble_restores_row_order() -> None:
    model = _model()
    images, _ = _data(n=23)
    ref = extract_features(model, images, batch_size=5)
    parts = []
    for r in range(3):  # what three ranks would send, extracted here one after the other
        rows = shard_rows(23, 5, r, 3)
        parts.append((rows, extract_features(model, images[torch.from_numpy(rows)], batch_size=5)))
    out = _assemble(23, parts)
    for k in ref.features:
        assert np.array_equal(out.features[k], ref.features[k])  # same batches, same process: bitwise
    assert np.array_equal(out.embeddings, ref.embeddings)


def test_single_process_distributed_extract_is_extract_features() -> None:
    model = _model()
    images, _ = _data(n=12)
    a = distributed_extract(model, images, batch_size=5, device="cpu")
    b = extract_features(model, images, batch_size=5)
    assert a is not None
    assert all(np.array_equal(a.features[k], b.features[k]) for k in b.features)


def test_sync_batchnorm_round_trip_keeps_tensors() -> None:
    model = _model()
    params = {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = {n: type(m) for n, m in model.named_modules()}
    replaced = convert_sync_batchnorm(model)
    assert len(replaced) == 5
    sync_of: dict[type, type] = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d}
    assert all(type(model.get_submodule(n)) is sync_of[type(orig)] for n, orig in replaced)
    assert all(p is params[n] for n, p in model.named_parameters())  # an optimiser built before still works
    x = torch.randn(6, 3, 32, 32)
    model.train()
    model(x)  # one process, no group: plain BatchNorm, running stats move
    revert_sync_batchnorm(model, replaced)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert all(p is params[n] for n, p in model.named_parameters())
    ref = _model()
    ref.load_state_dict(state)
    ref.train()
    ref(x)
    for k, v in ref.state_dict().items():  # identical update to the plain model's
        assert torch.equal(v, model.state_dict()[k]), k


if __name__ == "__main__":  # the torchrun worker: python tests/test_distributed.py worker OUT
    torch.set_num_threads(1)
    _worker(Path(sys.argv[2]))
