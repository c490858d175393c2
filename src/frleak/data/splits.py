"""Membership splits: which images train the target and the shadow model, and which are non-members of what kind.

Every role draws whole identities from a *pool* (a dataset folder and a band of images per identity), in a fixed
order, excluding identities already taken from the same folder, so all roles are identity-disjoint except a model's
members and its ``same_identity`` non-members (the other images of the same people, by design).

Roles of one model (target, or the attacker's shadow):
  members          images it is trained on (``member_fraction`` of each private identity's images)
  same_identity    the other images of those identities, never trained on (the hardest non-members)
  unseen_identity  identities it never saw, from the same source
  other_dataset    identities from another dataset (the easiest non-members: mostly dataset shift)

The split is seeded, saved as JSON (paths relative to each source root, so a run directory can move), and its
content hash identifies it in model cards and pipeline caches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frleak.data.folder import Sample, group_by_identity, scan_identity_folder
from frleak.errors import DataError

KINDS = ("same_identity", "unseen_identity", "other_dataset")
ROLES = ("members", *KINDS)


@dataclass(frozen=True)
class PoolSpec:
    """Where one role's identities come from.

    source: dataset folder. min_images / max_images: band of images per identity to be eligible.
    identities: how many identities to draw (None: all eligible ones left). max_per_identity: cap images kept
    per identity (None: all).
    """

    source: str
    min_images: int = 1
    max_images: int | None = None
    identities: int | None = None
    max_per_identity: int | None = None


@dataclass(frozen=True)
class ModelSplitSpec:
    """The pools of one model: its private identities and its two pools of non-member identities."""

    private: PoolSpec
    unseen: PoolSpec | None = None
    other: PoolSpec | None = None
    member_fraction: float = 0.5


@dataclass(frozen=True)
class SplitSpec:
    """Target and (optional) shadow pools, plus the seed. The shadow's pools come from the attacker's
    auxiliary data, never from the target's."""

    target: ModelSplitSpec
    shadow: ModelSplitSpec | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitSpec:
        def model(m: dict[str, Any] | None) -> ModelSplitSpec | None:
            if m is None:
                return None
            return ModelSplitSpec(
                private=PoolSpec(**m["private"]),
                unseen=PoolSpec(**m["unseen"]) if m.get("unseen") else None,
                other=PoolSpec(**m["other"]) if m.get("other") else None,
                member_fraction=m.get("member_fraction", 0.5),
            )

        target = model(d["target"])
        assert target is not None
        return cls(target=target, shadow=model(d.get("shadow")), seed=int(d.get("seed", 0)))


@dataclass
class ModelSplit:
    """The images of one model's membership experiment, by role."""

    members: list[Sample] = field(default_factory=list)
    same_identity: list[Sample] = field(default_factory=list)
    unseen_identity: list[Sample] = field(default_factory=list)
    other_dataset: list[Sample] = field(default_factory=list)

    def role(self, name: str) -> list[Sample]:
        if name not in ROLES:
            raise DataError(f"unknown split role {name!r}; expected one of {', '.join(ROLES)}")
        return list(getattr(self, name))

    def member_identities(self) -> list[str]:
        return sorted({s.identity for s in self.members})

    def summary(self) -> dict[str, dict[str, int]]:
        return {r: {"images": len(self.role(r)), "identities": len({s.identity for s in self.role(r)})}
                for r in ROLES}


@dataclass
class MembershipSplit:
    """Target (and shadow) model splits; JSON round-trip and a content hash."""

    target: ModelSplit
    shadow: ModelSplit | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    def models(self) -> dict[str, ModelSplit]:
        out = {"target": self.target}
        if self.shadow is not None:
            out["shadow"] = self.shadow
        return out

    # -- validation -------------------------------------------------------------------------------------------
    def check_disjoint(self) -> None:
        """Refuse overlaps: an image in two roles, an identity in two models, or a shadow that saw target data.

        Allowed by design: a model's members and its own same_identity non-members share identities.
        """
        seen: dict[str, str] = {}
        for mname, ms in self.models().items():
            for role in ROLES:
                for s in ms.role(role):
                    where = f"{mname}.{role}"
                    if s.path in seen:
                        raise DataError(f"split overlap: image {s.path} is in both {seen[s.path]} and {where}")
                    seen[s.path] = where
        id_owner: dict[tuple[str, str], str] = {}
        for mname, ms in self.models().items():
            groups = {"private": ms.members + ms.same_identity, "unseen_identity": ms.unseen_identity,
                      "other_dataset": ms.other_dataset}
            for gname, samples in groups.items():
                for key in {(str(Path(s.path).parent.parent), s.identity) for s in samples}:
                    where = f"{mname}.{gname}"
                    if key in id_owner and id_owner[key] != where:
                        raise DataError(
                            f"split overlap: identity {key[1]!r} of {key[0]} is in both {id_owner[key]} and {where}"
                        )
                    id_owner[key] = where
        for mname, ms in self.models().items():
            same_ids = {s.identity for s in ms.same_identity}
            if not same_ids <= set(ms.member_identities()):
                raise DataError(f"{mname}.same_identity holds identities that have no member images")

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        roots = sorted({str(Path(s.path).parent.parent) for ms in self.models().values() for r in ROLES
                        for s in ms.role(r)})
        root_index = {r: i for i, r in enumerate(roots)}

        def enc(samples: list[Sample]) -> list[list[Any]]:
            out = []
            for s in samples:
                p = Path(s.path)
                out.append([root_index[str(p.parent.parent)], s.identity, p.name])
            return out

        return {
            "format": "frleak-membership-split/1",
            "spec": self.spec,
            "roots": roots,
            "models": {m: {r: enc(ms.role(r)) for r in ROLES} for m, ms in self.models().items()},
        }

    def digest(self) -> str:
        """Content hash of the split (roots excluded, so the same split on another machine hashes the same)."""
        d = self.to_dict()
        d.pop("roots")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        from frleak.io import atomic_write_text

        d = self.to_dict()
        d["digest"] = self.digest()
        atomic_write_text(path, json.dumps(d, indent=1))

    @classmethod
    def load(cls, path: str | Path, root_map: dict[str, str] | None = None) -> MembershipSplit:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read split file {path}: {exc}") from None
        if d.get("format") != "frleak-membership-split/1":
            raise DataError(f"{path} is not a frleak membership split (format {d.get('format')!r})")
        roots = [(root_map or {}).get(r, r) for r in d["roots"]]

        def dec(rows: list[list[Any]]) -> list[Sample]:
            return [Sample(ident, str(Path(roots[ri]) / ident / name)) for ri, ident, name in rows]

        models = {m: ModelSplit(**{r: dec(rows) for r, rows in roles.items()}) for m, roles in d["models"].items()}
        return cls(target=models["target"], shadow=models.get("shadow"), spec=d.get("spec", {}))


# -- building -------------------------------------------------------------------------------------------------
class _PoolDrawer:
    """Draws identities from dataset folders without replacement, per folder, deterministically."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._cache: dict[str, dict[str, list[Sample]]] = {}
        self._taken: dict[str, set[str]] = {}

    def _groups(self, source: str) -> dict[str, list[Sample]]:
        key = str(Path(source).expanduser().resolve())
        if key not in self._cache:
            self._cache[key] = group_by_identity(scan_identity_folder(key))
            self._taken[key] = set()
        return self._cache[key]

    def draw(self, pool: PoolSpec, role: str) -> dict[str, list[Sample]]:
        groups = self._groups(pool.source)
        key = str(Path(pool.source).expanduser().resolve())
        eligible = [i for i, s in groups.items() if i not in self._taken[key] and len(s) >= pool.min_images
                    and (pool.max_images is None or len(s) <= pool.max_images)]
        if not eligible:
            raise DataError(f"{role}: no identities left in {pool.source} with {pool.min_images}.."
                            f"{pool.max_images or 'any'} images")
        order = self._rng.permutation(len(eligible))
        n = len(eligible) if pool.identities is None else pool.identities
        if n > len(eligible):
            raise DataError(f"{role}: asked for {n} identities from {pool.source} but only {len(eligible)} are "
                            f"eligible ({pool.min_images}..{pool.max_images or 'any'} images, not used elsewhere)")
        chosen = sorted(eligible[i] for i in order[:n])
        self._taken[key].update(chosen)
        out = {}
        for ident in chosen:
            samples = list(groups[ident])
            if pool.max_per_identity is not None and len(samples) > pool.max_per_identity:
                pick = sorted(self._rng.choice(len(samples), pool.max_per_identity, replace=False))
                samples = [samples[i] for i in pick]
            out[ident] = samples
        return out

    def split_members(self, groups: dict[str, list[Sample]], fraction: float) -> tuple[list[Sample], list[Sample]]:
        """Per identity: floor(n * fraction) members (at least 1), the rest non-members (at least 1 when n >= 2)."""
        if not 0.0 < fraction < 1.0:
            raise DataError(f"member_fraction must be in (0, 1), got {fraction}")
        members: list[Sample] = []
        rest: list[Sample] = []
        for ident in sorted(groups):
            samples = groups[ident]
            perm = self._rng.permutation(len(samples))
            k = max(1, int(np.floor(len(samples) * fraction)))
            if len(samples) >= 2:
                k = min(k, len(samples) - 1)
            members += [samples[i] for i in sorted(perm[:k])]
            rest += [samples[i] for i in sorted(perm[k:])]
        return members, rest


def _flatten(groups: dict[str, list[Sample]]) -> list[Sample]:
    return [s for ident in sorted(groups) for s in groups[ident]]


def make_split(spec: SplitSpec) -> MembershipSplit:
    """Build a seeded membership split from pools. Target roles are drawn first, then the shadow's."""
    drawer = _PoolDrawer(spec.seed)

    def model(ms: ModelSplitSpec, name: str) -> ModelSplit:
        private = drawer.draw(ms.private, f"{name}.private")
        unseen = _flatten(drawer.draw(ms.unseen, f"{name}.unseen_identity")) if ms.unseen else []
        other = _flatten(drawer.draw(ms.other, f"{name}.other_dataset")) if ms.other else []
        members, same = drawer.split_members(private, ms.member_fraction)
        return ModelSplit(members=members, same_identity=same, unseen_identity=unseen, other_dataset=other)

    target = model(spec.target, "target")
    shadow = model(spec.shadow, "shadow") if spec.shadow else None
    split = MembershipSplit(target=target, shadow=shadow, spec=spec.to_dict())
    split.check_disjoint()
    return split


def standard_lfw_spec(shared: str | Path, *, seed: int = 0, target_identities: int | None = None,
                      unseen_identities: int = 150, other_identities: int = 50, shadow_identities: int | None = 150,
                      shadow_unseen_identities: int = 0, shadow_other_identities: int = 150,
                      max_per_identity: int | None = None) -> SplitSpec:
    """The documented real setup on the shared data (shared/README.md):

    target private: LFW identities with >= 10 images (158), half of each identity's images are members;
    target unseen: LFW identities with 5..9 images; target other_dataset: CelebA identities.
    shadow (attacker's auxiliary data, disjoint from all of the above): CelebA identities, half of each one's images
    as shadow members; shadow unseen: further CelebA identities (0 = reuse none: the shadow then evaluates
    unseen_identity on LFW identities with 2..4 images, still disjoint); shadow other_dataset: LFW identities with
    2..4 images.
    """
    shared = Path(shared)
    lfw = str(shared / "data" / "lfw-112")
    celeba = str(shared / "data" / "celeba-112")
    target = ModelSplitSpec(
        private=PoolSpec(lfw, min_images=10, identities=target_identities, max_per_identity=max_per_identity),
        unseen=PoolSpec(lfw, min_images=5, max_images=9, identities=unseen_identities),
        other=PoolSpec(celeba, min_images=2, identities=other_identities),
    )
    shadow = None
    if shadow_identities:
        shadow = ModelSplitSpec(
            private=PoolSpec(celeba, min_images=10, identities=shadow_identities, max_per_identity=max_per_identity),
            unseen=(PoolSpec(celeba, min_images=2, identities=shadow_unseen_identities) if shadow_unseen_identities
                    else PoolSpec(lfw, min_images=3, max_images=4, identities=shadow_other_identities)),
            other=PoolSpec(lfw, min_images=2, max_images=2, identities=shadow_other_identities),
        )
    return SplitSpec(target=target, shadow=shadow, seed=seed)


def samples_of(split: ModelSplit, roles: Iterable[str]) -> list[Sample]:
    return [s for r in roles for s in split.role(r)]
