"""Typed experiment configuration: frozen dataclasses, safe YAML, ``--set key=value`` overrides, strict checks.

Only the CLI reads YAML; the library takes these objects (or plain keyword arguments). Unknown keys and values of
the wrong type are rejected with the dotted key named (``train.epocs: unknown key; did you mean 'epochs'?``).
Paths may use ``${shared}``, replaced by the shared data folder (``$FRLEAK_SHARED`` or ``../shared``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from frleak.errors import ConfigError
from frleak.train import TrainConfig

T = TypeVar("T")
_LFW = "${shared}/data/lfw-112"
_CELEBA = "${shared}/data/celeba-112"


@dataclass(frozen=True)
class PoolConfig:
    """Identities drawn from one identity-folder dataset (see :class:`frleak.data.splits.PoolSpec`)."""

    source: str
    min_images: int = 1
    max_images: int | None = None
    identities: int | None = None  # None: every eligible identity not used elsewhere
    max_per_identity: int | None = None


@dataclass(frozen=True)
class DataConfig:
    """Which images play which role. Defaults: the documented real setup on the shared LFW and CelebA data."""

    # target private identities: LFW with >= 10 images (158); member_fraction of each one's images are members
    target: PoolConfig = field(default_factory=lambda: PoolConfig(_LFW, min_images=10))
    # non-member identities of the same source, never trained on
    unseen: PoolConfig | None = field(default_factory=lambda: PoolConfig(_LFW, 5, 9, 150))
    # non-members from another dataset (dataset shift; never the headline)
    other: PoolConfig | None = field(default_factory=lambda: PoolConfig(_CELEBA, 2, None, 40))
    # the attacker's auxiliary data for the shadow model (setting B); disjoint from everything above
    shadow: PoolConfig | None = field(default_factory=lambda: PoolConfig(_CELEBA, 10, None, 130))
    shadow_unseen: PoolConfig | None = field(default_factory=lambda: PoolConfig(_LFW, 3, 4, 150))
    shadow_other: PoolConfig | None = field(default_factory=lambda: PoolConfig(_LFW, 2, 2, 150))
    member_fraction: float = 0.5
    # utility: seeded random pairs on an identity-disjoint set (the target never saw these people)
    verification: str | None = _CELEBA
    verification_pairs: int = 3000


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "iresnet18"
    options: dict[str, Any] = field(default_factory=lambda: {"width": 0.5, "input_size": 64})
    weights: str | None = None  # initialise (fine-tune) from these weights
    trust_checkpoint: bool = False  # allow pickled objects in `weights` (only for files you trust)


@dataclass(frozen=True)
class TrainExperiment:
    """``frleak train``: a split, a backbone, a recipe."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---- generic strict loading --------------------------------------------------------------------------------------
def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"{_join(where, k)}: unknown key{hint}")
    kwargs = {k: _coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(vt, v, _join(where, k)) for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (et,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(et, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(tp) is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj  # type: ignore[arg-type]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML scalar/list/mapping)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: cannot parse the value: {exc}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(f"--set {text!r}: {k} is not a mapping")
            node = node[k]
        node[keys[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + ``--set`` overrides -> validated ``cls``. Errors name the file and key."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def expand_path(path: str, shared: Path | None = None) -> str:
    """Replace ``${shared}`` with the shared folder (raising a clear error when it is needed but absent)."""
    if "${shared}" not in path:
        return str(Path(path).expanduser())
    if shared is None:
        from frleak.paths import shared_dir

        shared = shared_dir(required=True)
    return path.replace("${shared}", str(shared))


# ---- frleak audit: one experiment end to end (docs/audit.md) ----------------------------------------------------
_ALL_ATTACKS = ("paper_bn_linear", "bn_mean_threshold", "embedding_nn", "embedding_norm", "flip_consistency",
                "bn_rich_linear", "bn_calibrated", "bn_gbm", "frleak_strong")
_KINDS = ("same_identity", "unseen_identity", "other_dataset")


@dataclass(frozen=True)
class TargetConfig:
    """What is audited. ``train: true`` (mode a): frleak trains the target on ``data.target`` with ``model`` and
    ``train``. ``train: false`` (mode b): the model at ``model.weights`` is audited as is; ``members`` (images it
    was trained on) and ``nonmembers`` (images it never saw) are identity folders the user provides."""

    train: bool = True
    members: str | None = None
    nonmembers: str | None = None
    other: str | None = None  # optional non-members from another dataset (dataset shift; never the headline)
    max_per_identity: int | None = None  # cap images per identity taken from the folders above


@dataclass(frozen=True)
class ShadowConfig:
    """The attacker's shadow model (paper setting B), trained on ``data.shadow`` (auxiliary data)."""

    train: bool = True  # false: no shadow, setting B and the calibrated attacks are skipped
    recipe: str = "auto"  # "card": copy the target's model card; "config": model + train; "auto": card if any
    seed_offset: int = 1  # the attacker does not know the target's seed
    verification: str | None = None  # identity folder to measure the shadow's own utility (None: skip)


@dataclass(frozen=True)
class MembershipStageConfig:
    """Stage 1: which attacks, settings and non-member kinds (see frleak.membership.MembershipConfig)."""

    attacks: tuple[str, ...] = _ALL_ATTACKS
    settings: tuple[str, ...] = ("A", "B")
    kinds: tuple[str, ...] = _KINDS
    folds: int = 5
    n_boot: int = 1000
    identity_ks: tuple[int, ...] = (1, 2, 4, 8)
    identity_attacks: tuple[str, ...] = ("paper_bn_linear", "frleak_strong")
    batch_size: int = 128
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # OpenMP threads of the attack models (scikit-learn's gradient boosting): attack data are small, and threads
    # cost more than they give there, ~6x more on a busy machine (measured); None: the library default
    attack_threads: int | None = 1


@dataclass(frozen=True)
class InversionStageConfig:
    """Stage 2: GAN inversion guided by a stage-1 attack, evaluated by an independent model (docs/inversion.md)."""

    enabled: bool = True
    generator: str = "dcgan32_celeba"
    generator_weights: str | None = None  # None: the generator's shared weights
    generator_options: dict[str, Any] = field(default_factory=dict)
    attack: str = "paper_bn_linear"  # the guiding attack: must have a closed form (linear / threshold)
    attack_setting: str = "A"  # "A": fitted on the target's own members; "B": on the shadow
    attack_nonmember: str = "same_identity"  # the non-member kind the guiding attack is fitted against
    method: str = "guided"
    mode: str = "untargeted"
    n_images: int = 8
    candidates: int = 64
    n_optimize: int | None = None
    steps: int = 50
    targets: int = 4  # member identities attacked in targeted mode
    control: bool = True
    evaluator_weights: str | None = None  # None: the shared MobileFaceNet
    evaluator_backbone: str | None = None
    cohort: int = 32
    gallery_max_per_identity: int | None = 4
    far: float = 1e-3
    batch_size: int = 64
    options: dict[str, Any] = field(default_factory=dict)  # further InversionConfig fields (lr, *_weight, ...)


@dataclass(frozen=True)
class DefenseSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # shown in the report and names the run folder (default: name)


@dataclass(frozen=True)
class DefensesConfig:
    """Defenses applied to the target (and, adaptively, to the attacker's shadow), each measured like the target."""

    apply: list[DefenseSpec] = field(default_factory=list)
    # public images for release-time defenses: identities of this pool that the split does not use, halved into
    # the defender's and the attacker's own public data
    public: PoolConfig | None = field(default_factory=lambda: PoolConfig(_LFW, min_images=1, max_images=1))
    public_images: int = 512  # per side
    adaptive: bool = True  # the attacker defends its shadow the same way (docs/defenses.md)
    attacks: tuple[str, ...] | None = None  # None: membership.attacks


@dataclass(frozen=True)
class ReportConfig:
    title: str = "frleak audit"
    notes: str = ""


@dataclass(frozen=True)
class AuditConfig:
    """``frleak audit``: data -> split -> target / shadow -> BN features -> attacks -> inversion -> defenses ->
    report. Every key is documented in docs/audit.md."""

    name: str = "audit"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    expected_minutes: float | None = None  # announced before the run starts
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    membership: MembershipStageConfig = field(default_factory=MembershipStageConfig)
    inversion: InversionStageConfig = field(default_factory=InversionStageConfig)
    defenses: DefensesConfig = field(default_factory=DefensesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> AuditConfig:
        """Check values (not only types); raises a ConfigError naming the key. Returns self."""
        from frleak.pipeline.validate import validate_audit_config

        validate_audit_config(self)
        return self
