"""The run directory and its stages: declared inputs, content-hash cache keys, manifests, resume, atomic writes.

A stage is a small function with a name, the upstream stages it reads (``inputs``) and the part of the
configuration it depends on (``params``). It writes only under ``RUN/<name>/`` (plus files it registers with
:meth:`StageContext.add_output`) and reads upstream artifacts only through :meth:`StageContext.input_path`, which
refuses undeclared stages: data flows one way.

Cache key of a stage = sha256 of (its name, its code version, frleak's version, its configuration section, and for
each input stage the digest of that stage's *output file hashes*). A stage whose key and output files are unchanged
is skipped; an upstream stage that re-runs but writes byte-identical outputs does not invalidate its consumers.

Completion protocol (nothing half-written is trusted):

1. ``stage.pending.json`` (the key) is written before the stage runs; a stale ``stage.json`` is removed first.
2. The stage writes its files atomically (:mod:`frleak.io`); training checkpoints every epoch.
3. ``stage.json`` (key, output hashes, summary, seconds) is written last, atomically; the pending file is removed.

After an interruption the pending key tells whether the leftover work belongs to the same key (resume: training
continues from its last checkpoint) or to another one (the stage folder is wiped and the stage starts over).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frleak import __version__
from frleak.errors import ConfigError
from frleak.io import atomic_write_json, file_sha256

log = logging.getLogger("frleak.audit")

MANIFEST = "stage.json"
PENDING = "stage.pending.json"
#: files a stage may leave in its folder that are not outputs (training checkpoints are private and resumable)
PRIVATE = frozenset({MANIFEST, PENDING, "train_state.pt"})
#: intermediate files that are not byte-reproducible and are not hashed: skops archives carry zip timestamps (the
#: fitted attack's parameters are in the .json written beside each)
UNHASHED_SUFFIXES = (".skops",)


@dataclass(frozen=True)
class Stage:
    """One step of the audit. ``run(ctx)`` returns a small JSON-able summary kept in the manifest."""

    name: str
    inputs: tuple[str, ...]
    params: Callable[[Any], Any]
    run: Callable[[StageContext], dict[str, Any]]
    description: str = ""
    version: int = 1


@dataclass
class StageContext:
    """What a running stage sees: the config, its own folder, its declared inputs' manifests, and hooks."""

    stage: Stage
    config: Any
    run_dir: Path
    manifests: dict[str, dict[str, Any]]
    progress: bool = True
    train_callbacks: Sequence[Any] = ()
    extra_outputs: list[Path] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.run_dir / self.stage.name

    def input_path(self, stage: str, *parts: str) -> Path:
        """A file or folder written by the declared input ``stage``."""
        if stage not in self.stage.inputs:
            raise RuntimeError(f"stage {self.stage.name!r} reads {stage!r}, which is not one of its declared inputs "
                               f"{self.stage.inputs}")
        return self.run_dir.joinpath(stage, *parts)

    def input_summary(self, stage: str) -> dict[str, Any]:
        if stage not in self.stage.inputs:
            raise RuntimeError(f"stage {self.stage.name!r} does not declare {stage!r} as an input")
        summary: dict[str, Any] = self.manifests[stage].get("summary", {})
        return summary

    def add_output(self, path: Path) -> None:
        """Register an output written outside the stage folder (e.g. RUN/report.html)."""
        self.extra_outputs.append(Path(path))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def stage_key(stage: Stage, config: Any, manifests: dict[str, dict[str, Any]]) -> str:
    """sha256 of (stage name, stage code version, frleak version, config section, inputs' output digests)."""
    inputs = {name: manifests[name]["outputs_digest"] for name in stage.inputs}
    return digest({"stage": stage.name, "version": stage.version, "frleak": __version__,
                   "params": stage.params(config), "inputs": inputs})


def hash_outputs(run_dir: Path, stage_dir: Path, extra: Sequence[Path] = ()) -> dict[str, str]:
    """Relative path (to the run folder) -> sha256, for every file of the stage folder but the private ones."""
    files = [p for p in sorted(stage_dir.rglob("*")) if p.is_file() and p.name not in PRIVATE
             and not p.name.startswith(".") and not p.name.endswith(UNHASHED_SUFFIXES)]
    files += [Path(p) for p in extra]
    return {str(p.relative_to(run_dir)): file_sha256(p) for p in files}


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        m: dict[str, Any] = json.loads(path.read_text())
        return m
    except (OSError, json.JSONDecodeError):
        return None  # never trusted: the stage runs again


def outputs_intact(run_dir: Path, manifest: dict[str, Any]) -> bool:
    for rel, sha in manifest.get("outputs", {}).items():
        p = run_dir / rel
        if not p.is_file() or file_sha256(p) != sha:
            return False
    return True


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One audit per run folder at a time (an advisory lock, released when the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{run_dir} is in use by another frleak audit; wait for it or use another --run") \
                from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class StageStatus:
    name: str
    status: str  # "skipped" (unchanged), "ran", "resumed" (continued an interrupted run of the same key)
    key: str
    seconds: float
    reason: str = ""


def plan(stages: Sequence[Stage], config: Any, run_dir: Path) -> list[StageStatus]:
    """What :func:`run_stages` would do now, without running anything. A stage downstream of one that must run is
    reported as "run" (its inputs may change), with the reason."""
    manifests: dict[str, dict[str, Any]] = {}
    out = []
    dirty: set[str] = set()
    for stage in stages:
        reason = ""
        if dirty & set(stage.inputs):
            status, key, reason = "run", "?", f"after {', '.join(sorted(dirty & set(stage.inputs)))}"
        else:
            key = stage_key(stage, config, manifests)
            m = read_manifest(run_dir / stage.name)
            if m is not None and m.get("key") == key and outputs_intact(run_dir, m):
                status = "skip"
                manifests[stage.name] = m
            else:
                status = "run"
                reason = "new" if m is None else ("changed" if m.get("key") != key else "outputs changed on disk")
                if (run_dir / stage.name / PENDING).is_file():
                    reason += ", resumes" if _pending_key(run_dir / stage.name) == key else ", starts over"
        if status == "run":
            dirty.add(stage.name)
        out.append(StageStatus(stage.name, status, key, 0.0, reason))
    return out


def _pending_key(stage_dir: Path) -> str | None:
    try:
        return str(json.loads((stage_dir / PENDING).read_text())["key"])
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def run_stages(stages: Sequence[Stage], config: Any, run_dir: Path, *, force: Sequence[str] = (),
               progress: bool = True, train_callbacks: Sequence[Any] = (),
               on_stage: Callable[[int, int, Stage, str], None] | None = None) -> list[StageStatus]:
    """Run ``stages`` (in order: inputs first) in ``run_dir``, skipping those whose key and outputs are unchanged.

    ``force``: stage names to run even when cached. ``on_stage(i, n, stage, what)`` is called as each stage starts
    ("run", "resume" or "skip"). Returns the status of every stage.
    """
    names = [s.name for s in stages]
    unknown = [f for f in force if f not in names]
    if unknown:
        raise ConfigError(f"--force {unknown[0]!r}: no such stage; stages are {', '.join(names)}")
    manifests: dict[str, dict[str, Any]] = {}
    statuses: list[StageStatus] = []
    for i, stage in enumerate(stages):
        missing = [n for n in stage.inputs if n not in manifests]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} needs {missing} which run later: order the stages")
        key = stage_key(stage, config, manifests)
        sdir = run_dir / stage.name
        m = read_manifest(sdir)
        if m is not None and m.get("key") == key and stage.name not in force and outputs_intact(run_dir, m):
            manifests[stage.name] = m
            statuses.append(StageStatus(stage.name, "skipped", key, 0.0, "unchanged"))
            if on_stage:
                on_stage(i, len(stages), stage, "skip")
            continue
        resume = _pending_key(sdir) == key and stage.name not in force
        if sdir.exists() and not resume:
            shutil.rmtree(sdir)  # leftovers of another key (or forced): start from nothing
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / MANIFEST).unlink(missing_ok=True)
        atomic_write_json(sdir / PENDING, {"key": key, "started": time.time()})
        if on_stage:
            on_stage(i, len(stages), stage, "resume" if resume else "run")
        ctx = StageContext(stage, config, run_dir, {n: manifests[n] for n in stage.inputs}, progress,
                           train_callbacks)
        t0 = time.time()
        summary = stage.run(ctx)
        seconds = round(time.time() - t0, 2)
        outputs = hash_outputs(run_dir, sdir, ctx.extra_outputs)
        manifest = {"stage": stage.name, "key": key, "version": stage.version, "frleak": __version__,
                    "inputs": {n: manifests[n]["outputs_digest"] for n in stage.inputs},
                    "outputs": outputs, "outputs_digest": digest(outputs), "summary": summary, "seconds": seconds}
        atomic_write_json(sdir / MANIFEST, manifest)  # last: the stage is complete only now
        (sdir / PENDING).unlink(missing_ok=True)
        manifests[stage.name] = manifest
        statuses.append(StageStatus(stage.name, "resumed" if resume else "ran", key, seconds))
    return statuses


def load_manifests(run_dir: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for n in names:
        m = read_manifest(run_dir / n)
        if m is not None:
            out[n] = m
    return out
