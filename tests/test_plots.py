"""Each figure is a valid, non-empty PNG written without a display; bad shapes raise ValueError."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from frleak.metrics import aggregate_by_group, mia_metrics
from frleak.plots import plot_layer_distances, plot_metric_vs_k, plot_roc


def _check_png(path, min_size=(200, 200)):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        img.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        arr = np.asarray(img.convert("L"))
    assert arr.std() > 5  # something was drawn, not a blank canvas


def _scores(seed, n=400, shift=1.0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2, dtype=int), np.zeros(n - n // 2, dtype=int)]
    return rng.normal(size=n) + shift * y, y


def test_plot_roc(tmp_path):
    curves = {"strong": _scores(0, shift=2.0), "weak": _scores(1, n=2000, shift=0.3)}
    out = plot_roc(curves, tmp_path / "sub" / "roc.png", title="test")
    assert out == tmp_path / "sub" / "roc.png"
    _check_png(out)


def test_plot_roc_bad_input(tmp_path):
    s, y = _scores(0)
    with pytest.raises(ValueError, match="'bad'"):
        plot_roc({"bad": (s, y[:-1])}, tmp_path / "roc.png")
    with pytest.raises(ValueError, match="no curves"):
        plot_roc({}, tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()


def test_plot_layer_distances(tmp_path):
    rng = np.random.default_rng(2)
    n_layers = 12
    # Members are closer in the deep layers only.
    scale = np.where(np.arange(n_layers) >= 8, 0.6, 1.0)
    mem = rng.lognormal(size=(80, n_layers)) * scale
    non = rng.lognormal(size=(120, n_layers))
    names = [f"bn{i}" for i in range(n_layers)]
    _check_png(plot_layer_distances(mem, non, tmp_path / "layers.png", layer_names=names))
    # zeros present: symlog axis instead of log, still a valid figure
    mem[0, 0] = 0.0
    _check_png(plot_layer_distances(mem, non, tmp_path / "layers0.png", member_closer=False))


def test_plot_layer_distances_bad_shapes(tmp_path):
    rng = np.random.default_rng(3)
    good = rng.random((10, 4))
    with pytest.raises(ValueError, match="layers"):
        plot_layer_distances(good, rng.random((10, 5)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="n_images, n_layers"):
        plot_layer_distances(good[:, 0], good, tmp_path / "x.png")
    with pytest.raises(ValueError, match="layer_names"):
        plot_layer_distances(good, good, tmp_path / "x.png", layer_names=["a", "b"])
    bad = good.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        plot_layer_distances(good, bad, tmp_path / "x.png")


def test_plot_metric_vs_k(tmp_path):
    rng = np.random.default_rng(4)
    ids = np.repeat(np.arange(120), 8)
    member = (ids < 60).astype(int)
    s = rng.normal(size=ids.size) + 0.3 * member
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for how in ("mean", "max"):
        results[how] = {}
        for k in (1, 2, 4, 8):
            g = aggregate_by_group(s, ids, k, how, seed=0, labels=member)
            assert g.labels is not None
            results[how][k] = mia_metrics(g.scores, g.labels, n_boot=50 if how == "mean" else 0)
    _check_png(plot_metric_vs_k(results, tmp_path / "k.png"))


def test_plot_metric_vs_k_bad_input(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        plot_metric_vs_k({"a": {1: {"auc": 0.6}}}, tmp_path / "k.png")
    with pytest.raises(ValueError, match="positive integer"):
        plot_metric_vs_k({"a": {0: {"auc": 0.6, "tpr_at_1pct_fpr": 0.1}}}, tmp_path / "k.png")
