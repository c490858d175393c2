"""BN-feature extraction speed versus a plain forward pass of the same model on the same batch.

    python benchmarks/extract_speed.py                                   # CPU or CUDA (auto), both models
    python benchmarks/extract_speed.py --device cuda --amp --json             # batch 1024 on CUDA by default
    python benchmarks/extract_speed.py --device cpu --threads 2 --batch-size 16 --repeats 3

For each model (random weights: speed does not depend on them) one batch is made once and stays on the device.
Timed, side by side in the same run and alternating (plain, extract, then extract, plain, ...) so that drift of
the machine hits both alike:

* plain:   ``model(x)`` in eval mode under ``no_grad``, embeddings copied to the host;
* extract: :func:`frleak.features.bn_features` (hooks on every BatchNorm layer, the requested kinds), features and
  embeddings copied to the host.

Both start from the normalised batch already on the device, so the fixed costs a real pipeline shares (decoding,
normalising, host-to-device copies) are left out and the ratio is the strictest one: ``overhead_ratio`` = the
median over repeats of (extraction time / plain time) of the two back-to-back passes of that repeat (robust to the
machine's speed drifting between repeats; ``ratio_of_medians`` is reported too). CUDA is synchronised around
every timed call. With ``--amp`` both run under bf16 autocast (CUDA only); the BN statistics stay float32.

Peak memory, one untimed pass of each mode after all timing: CUDA ``max_memory_allocated`` above what was
allocated before the pass; on CPU the peak resident set size above the resident size before the pass (Linux:
``/proc/self/clear_refs`` resets the high-water mark ``VmHWM`` of ``/proc/self/status``; elsewhere ``ru_maxrss``, a
process-lifetime high-water mark, and the delta is reported only when it grows, else null). glibc keeps freed
blocks below a moving threshold instead of returning them, which makes CPU RSS peaks jump by tens of MiB from one
pass to the next; the memory passes therefore pin that threshold (``mallopt``) so RSS follows live memory.

Writes ``OUT/extract_speed.json`` and ``OUT/extract_speed.md`` (default OUT: benchmarks/results/); ``--json`` prints
the JSON, whose ``models.<name>.overhead_ratio`` is the number the acceptance bound (<= 1.10) applies to.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from frleak.data.images import normalize
from frleak.features import KINDS, bn_features, bn_layers, takes_fused_path
from frleak.models.base import create_backbone

ROOT = Path(__file__).resolve().parent
MODELS = ("mobilefacenet", "iresnet50")
BOUND = 1.10


# ---- memory ----------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Extra memory one call of ``fn`` needs at its peak, in MiB (see the module docstring for how)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - allocated) / 2**20
    if _reset_cpu_peak():
        rss = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        return None if rss is None or peak is None else max(0, peak - rss) / 1024
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return grown / scale if grown > 0 else None


# ---- timing ----------------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def make_passes(name: str, *, device: torch.device, batch_size: int, amp: bool, kinds: list[str],
                input_size: tuple[int, int], seed: int, fused: bool | None
                ) -> tuple[Callable[[], None], Callable[[], None], Any]:
    """(plain, extract, model): the two passes over one fixed batch already on ``device``."""
    torch.manual_seed(seed)
    model = create_backbone(name, input_size=input_size).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch_size, 3, *input_size), generator=g, dtype=torch.uint8)
    x = normalize(pixels, model.input_spec).to(device)

    def autocast() -> Any:  # noqa: ANN401
        return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()

    @torch.no_grad()
    def plain() -> None:
        with autocast():
            emb = model(x)
        emb.float().cpu()

    @torch.no_grad()
    def extract() -> None:
        with autocast():
            feats, emb = bn_features(model, x, kinds, fused=fused)
        for v in feats.values():
            v.float().cpu()
        emb.float().cpu()

    return plain, extract, model


def bench_model(name: str, *, device: torch.device, batch_size: int, repeats: int, warmup: int, amp: bool,
                kinds: list[str], input_size: tuple[int, int], seed: int, fused: bool | None) -> dict[str, Any]:
    plain, extract, model = make_passes(name, device=device, batch_size=batch_size, amp=amp, kinds=kinds,
                                        input_size=input_size, seed=seed, fused=fused)
    with torch.no_grad():
        probe = torch.zeros(1, device=device)
        path = "fused" if takes_fused_path(dict(bn_layers(model)), probe, fused) else "hooks"
    for _ in range(warmup):
        plain()
        extract()
    times: dict[str, list[float]] = {"plain": [], "extract": []}
    for r in range(repeats):
        order = (("plain", plain), ("extract", extract)) if r % 2 == 0 else (("extract", extract), ("plain", plain))
        for mode, fn in order:
            times[mode].append(_timed(fn, device))
    med = {m: statistics.median(t) for m, t in times.items()}
    # Each repeat's two passes ran back to back: their ratio is immune to the machine speeding up or slowing down
    # between repeats (other jobs), which a ratio of the two medians is not.
    paired = [e / p for e, p in zip(times["extract"], times["plain"])]
    return {
        "input_size": list(input_size),
        "extraction_path": path,
        "bn_layers": len(bn_layers(model)),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "plain_images_per_s": batch_size / med["plain"],
        "extract_images_per_s": batch_size / med["extract"],
        "plain_seconds_median": med["plain"],
        "extract_seconds_median": med["extract"],
        "overhead_ratio": statistics.median(paired),
        "overhead_ratios": paired,
        "ratio_of_medians": med["extract"] / med["plain"],
        "plain_seconds": times["plain"],
        "extract_seconds": times["extract"],
    }


def bench_memory(name: str, **kwargs: Any) -> dict[str, float | None]:  # noqa: ANN401
    plain, extract, _ = make_passes(name, **kwargs)
    plain()  # first-call allocations (oneDNN primitives, cuDNN plans) are not what a pass needs
    extract()
    _trim_malloc()
    return {"plain_peak_mb": peak_memory_mb(plain, kwargs["device"]),
            "extract_peak_mb": _trimmed(lambda: peak_memory_mb(extract, kwargs["device"]))}


def _trimmed(fn: Callable[[], float | None]) -> float | None:
    _trim_malloc()
    return fn()


def _trim_malloc() -> None:
    """glibc: hand free heap memory back, so that a pass served from it shows up in the resident set."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _pin_malloc() -> bool:
    """glibc: serve every allocation above 64 KiB by mmap and give it back on free (no dynamic threshold), so the
    resident set follows live memory and a peak is comparable between passes. Called after all timing (it slows
    allocation-heavy CPU code down)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024) == 1)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# ---- report ----------------------------------------------------------------------------------------------------
def _fmt_mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        "# BN-feature extraction speed vs a plain forward pass",
        "",
        f"Device: {res['device_name']} ({res['device']}), torch {res['torch']}, {res['threads']} CPU thread(s), "
        f"batch {res['batch_size']}, {res['repeats']} alternating repeats after {res['warmup']} warm-up pass(es), "
        f"amp={res['amp']}, kinds={','.join(res['kinds'])}. Medians; random weights. "
        f"Command: `{res['command']}`",
        "",
        "| model | input | path | BN layers | plain img/s | extract img/s | overhead_ratio | plain peak MiB | "
        "extract peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in res["models"].items():
        flag = "" if m["overhead_ratio"] <= BOUND else " (over 1.10)"
        lines.append(f"| {name} | {m['input_size'][0]}x{m['input_size'][1]} | {m.get('extraction_path', 'hooks')} | "
                     f"{m['bn_layers']} | "
                     f"{m['plain_images_per_s']:.1f} | {m['extract_images_per_s']:.1f} | "
                     f"{m['overhead_ratio']:.3f}{flag} | {_fmt_mb(m['plain_peak_mb'])} | "
                     f"{_fmt_mb(m['extract_peak_mb'])} |")
    lines += ["", f"Memory: {res['memory_method']}", ""]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _parse_size(s: str) -> tuple[int, int]:
    parts = s.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size {s!r}: expected H or HxW, e.g. 112x112") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 1024 on CUDA (throughput extraction; at 256 a MobileFaceNet pass is ~11 ms on an "
                        "H100 and bound by kernel-launch latency, see docs/scale.md), 16 on CPU")
    p.add_argument("--repeats", type=int, default=7, help="timed passes per mode (medians are reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated backbones (default {','.join(MODELS)})")
    p.add_argument("--input-size", type=_parse_size, default=(112, 112), help="HxW for every model (default 112x112)")
    p.add_argument("--kinds", default="paper,normalized,variance", help="BN feature kinds extracted")
    p.add_argument("--path", choices=("auto", "fused", "hooks"), default="auto",
                   help="extraction path: auto (the fused one-pass BN kernel where it applies: CUDA + Triton), "
                        "fused, or hooks (the reference forward-pre-hook path)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for both modes (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results"), help="results folder (default benchmarks/results/)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        p.error(f"--kinds: a comma-separated subset of {', '.join(KINDS)}")
    batch_size = args.batch_size or (1024 if device.type == "cuda" else 16)
    if batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch-size and --repeats must be >= 1, --warmup >= 0")
    if args.amp and device.type != "cuda":
        print("note: --amp applies to CUDA only; running float32", file=sys.stderr)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    res: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "amp": bool(args.amp and device.type == "cuda"),
        "kinds": kinds,
        "path": args.path,
        "command": " ".join(["python", "benchmarks/extract_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "memory_method": ("CUDA max_memory_allocated above the allocation before the pass" if device.type == "cuda"
                          else "peak RSS (VmHWM after clear_refs) above RSS before the pass" if _reset_cpu_peak()
                          else "ru_maxrss growth during the pass (a lifetime high-water mark: n/a when it did "
                               "not grow)"),
        "bound": BOUND,
        "models": {},
    }
    common = {"device": device, "batch_size": batch_size, "amp": args.amp, "kinds": kinds,
              "input_size": args.input_size, "seed": args.seed,
              "fused": {"auto": None, "fused": True, "hooks": False}[args.path]}
    for name in models:
        if not args.json:
            print(f"{name}: {args.repeats} x 2 timed passes of batch {batch_size} on {device} ...", file=sys.stderr)
        res["models"][name] = bench_model(name, repeats=args.repeats, warmup=args.warmup, **common)
    pinned = device.type == "cpu" and _pin_malloc()
    for name in models:
        res["models"][name].update(bench_memory(name, **common))
    if pinned:
        res["memory_method"] += " (glibc mmap threshold pinned to 64 KiB for these passes, after the timing)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extract_speed.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "extract_speed.md").write_text(to_markdown(res))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
