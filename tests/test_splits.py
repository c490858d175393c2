"""Membership splits: deterministic under a seed, disjoint across roles, refusing overlaps, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import small_identity_folder

from frleak.config import DataConfig, PoolConfig
from frleak.data.folder import Sample, scan_identity_folder
from frleak.data.prepare import build_split
from frleak.data.splits import ROLES, MembershipSplit, ModelSplit
from frleak.errors import DataError


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("splits")
    a = small_identity_folder(shared / "data" / "lfw-112", root / "a", identities=12, per_identity=6, min_images=6)
    b = small_identity_folder(shared / "data" / "celeba-112", root / "b", identities=12, per_identity=6, min_images=6)
    return a, b


def _cfg(a: Path, b: Path) -> DataConfig:
    return DataConfig(
        target=PoolConfig(str(a), min_images=6, identities=6), unseen=PoolConfig(str(a), 2, None, 3),
        other=PoolConfig(str(b), 2, None, 3), shadow=PoolConfig(str(b), 6, None, 5),
        shadow_unseen=PoolConfig(str(b), 2, None, 2), shadow_other=PoolConfig(str(a), 2, None, 2),
        member_fraction=0.5, verification=None)


def test_split_is_deterministic_and_seed_dependent(two_sources: tuple[Path, Path]) -> None:
    a, b = two_sources
    s1, s2, s3 = build_split(_cfg(a, b), 0), build_split(_cfg(a, b), 0), build_split(_cfg(a, b), 1)
    assert s1.to_dict() == s2.to_dict() and s1.digest() == s2.digest()
    assert s1.digest() != s3.digest()


def test_roles_are_disjoint_and_sized(two_sources: tuple[Path, Path]) -> None:
    a, b = two_sources
    split = build_split(_cfg(a, b), 0)
    t = split.target
    assert len(t.member_identities()) == 6
    for ident in t.member_identities():  # half of each private identity's 6 images are members
        assert sum(s.identity == ident for s in t.members) == 3
        assert sum(s.identity == ident for s in t.same_identity) == 3
    paths = [s.path for ms in split.models().values() for r in ROLES for s in ms.role(r)]
    assert len(paths) == len(set(paths))
    target_ids = {s.identity for r in ROLES for s in t.role(r) if Path(s.path).is_relative_to(a)}
    assert split.shadow is not None
    shadow_ids = {s.identity for r in ROLES for s in split.shadow.role(r) if Path(s.path).is_relative_to(a)}
    assert not target_ids & shadow_ids


def test_overlap_is_refused() -> None:
    s = Sample("alice", "/data/x/alice/1.jpg")
    other = Sample("alice", "/data/x/alice/2.jpg")
    bad = MembershipSplit(target=ModelSplit(members=[s], same_identity=[other]),
                          shadow=ModelSplit(members=[Sample("bob", "/data/x/bob/1.jpg")], unseen_identity=[s]))
    with pytest.raises(DataError, match="overlap"):
        bad.check_disjoint()
    shadow_same_person = MembershipSplit(target=ModelSplit(members=[s]),
                                         shadow=ModelSplit(members=[other]))
    with pytest.raises(DataError, match="identity 'alice'"):
        shadow_same_person.check_disjoint()


def test_json_round_trip(two_sources: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_sources
    split = build_split(_cfg(a, b), 0)
    split.save(tmp_path / "split.json")
    back = MembershipSplit.load(tmp_path / "split.json")
    assert back.to_dict() == split.to_dict() and back.digest() == split.digest()


def test_too_many_identities_is_a_clear_error(two_sources: tuple[Path, Path]) -> None:
    a, b = two_sources
    cfg = _cfg(a, b)
    bad = DataConfig(**{**cfg.__dict__, "target": PoolConfig(str(a), min_images=6, identities=500)})
    with pytest.raises(DataError, match="asked for 500 identities"):
        build_split(bad, 0)


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        scan_identity_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="no identity sub-folders"):
        scan_identity_folder(tmp_path)
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        scan_identity_folder(tmp_path)
