"""Obtain public face datasets through maintained fetchers, then align them (``frleak data NAME --out DIR``).

LFW (Huang et al., "Labeled Faces in the Wild", UMass TR 07-49, 2007) comes through scikit-learn's public
``fetch_lfw_people``. Its arrays are small grey crops that are useless here, but as a documented side effect it
downloads and extracts the original 250x250 photos into ``DATA_HOME/lfw_home/lfw_funneled`` (``lfw`` for the
un-funneled originals), one folder per identity; frleak aligns that folder with :func:`align_folder`. Only the public
API is called (private sklearn helpers change without notice); the folder layout has been stable since 2011 and is
checked, with a clear error if it ever moves.

No network: a quick probe (``timeout`` seconds) fails with :class:`NetworkUnavailable`, whose message says how to
download by hand, where to put the extracted folder so that this command finds it offline, and how to point frleak
at an existing aligned copy. A folder already in the cache is used without touching the network.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frleak.data.align import AlignReport, align_folder
from frleak.errors import ConfigError, DataError


class NetworkUnavailable(DataError):
    """The dataset host cannot be reached; the message explains the offline routes."""


@dataclass(frozen=True)
class DatasetSource:
    """A public dataset frleak knows how to fetch. ``folder``: the extracted image folder inside
    ``DATA_HOME/lfw_home``; ``url``: the archive sklearn downloads (also the manual route); ``funneled``: which
    sklearn variant."""

    name: str
    description: str
    url: str
    archive: str
    folder: str
    funneled: bool
    licence: str


DATASETS: dict[str, DatasetSource] = {
    "lfw": DatasetSource(
        "lfw", "Labeled Faces in the Wild, funneled 250x250 photos (5749 identities, 13233 images, ~233 MB)",
        "https://ndownloader.figshare.com/files/5976015", "lfw-funneled.tgz", "lfw_funneled", True,
        "research use; cite Huang et al. 2007"),
    "lfw-original": DatasetSource(
        "lfw-original", "Labeled Faces in the Wild, original (un-funneled) 250x250 photos (~180 MB)",
        "https://ndownloader.figshare.com/files/5976018", "lfw.tgz", "lfw", False,
        "research use; cite Huang et al. 2007"),
}


@dataclass
class FetchResult:
    """raw_dir: the identity folders of original photos; out: the aligned copy (None with ``align=False``)."""

    name: str
    raw_dir: Path
    out: Path | None
    downloaded: bool
    report: AlignReport | None


def check_online(url: str, timeout: float = 5.0) -> None:
    """Raise NetworkUnavailable unless ``url``'s host answers within ``timeout`` seconds (any HTTP status counts
    as reachable: the question is the network, not the file)."""
    try:
        req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "frleak"})
        with urllib.request.urlopen(req, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkUnavailable(f"cannot reach {url} within {timeout:g} s ({reason})") from None


def default_cache_dir() -> Path:
    from sklearn.datasets import get_data_home

    return Path(get_data_home())


def raw_folder(source: DatasetSource, cache_dir: Path) -> Path:
    """Where sklearn keeps the extracted photos of ``source`` under ``cache_dir``."""
    return cache_dir / "lfw_home" / source.folder


def offline_help(source: DatasetSource, cache_dir: Path, out: Path) -> str:
    """The steps to take on a machine without internet."""
    return (
        f"To use {source.name} offline:\n  (1) on a machine with internet, download {source.url} "
        f"(saved as {source.archive}; also linked from http://vis-www.cs.umass.edu/lfw/) and copy it here;\n  "
        f"(2) extract it (`tar xzf {source.archive}`) and either align it yourself with "
        f"`frleak align {source.folder} {out}`, or place the extracted folder at {raw_folder(source, cache_dir)} "
        f"and re-run this command;\n  (3) if you already have an aligned copy, skip this step: pass it with --data DIR "
        "to the commands that read faces, or set FRLEAK_SHARED to a folder holding data/lfw-112."
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """sklearn's downloader sets no timeout: bound every socket read so that a stalled transfer fails (and is
    retried by sklearn) instead of hanging."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _has_identities(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())


def fetch_raw(name: str, *, cache_dir: str | Path | None = None, timeout: float = 5.0,
              download_timeout: float = 120.0, probe_url: str | None = None,
              out_hint: str | Path = "ALIGNED_DIR") -> tuple[Path, bool]:
    """The folder of original photos of dataset ``name``, downloading it when not cached.

    Returns (folder, downloaded). ``probe_url`` overrides the host checked before downloading (tests use an
    unreachable one); ``out_hint`` names the aligned folder in the offline instructions.
    Raises NetworkUnavailable (offline), ConfigError (unknown name), DataError (layout changed).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    source = DATASETS[name]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = raw_folder(source, cache)
    if _has_identities(folder):
        return folder, False
    try:
        check_online(probe_url or source.url, timeout)
    except NetworkUnavailable as exc:
        raise NetworkUnavailable(f"{exc}: this machine seems to have no internet access. "
                                 + offline_help(source, cache, Path(out_hint))) from None
    from sklearn.datasets import fetch_lfw_people

    try:
        with _socket_timeout(download_timeout):
            # min_faces_per_person=100 keeps sklearn's (unused) array loading to ~1100 small images.
            fetch_lfw_people(data_home=str(cache), funneled=source.funneled, resize=0.2, min_faces_per_person=100,
                             download_if_missing=True)
    except OSError as exc:
        raise NetworkUnavailable(f"downloading {source.url} failed ({exc}). " + offline_help(
            source, cache, Path(out_hint))) from None
    if not _has_identities(folder):
        raise DataError(f"scikit-learn finished but {folder} holds no identity folders; its cache layout may have "
                        f"changed: look under {cache / 'lfw_home'} and run `frleak align` on the photo folder")
    return folder, True


def fetch_dataset(name: str, out: str | Path, *, cache_dir: str | Path | None = None, timeout: float = 5.0,
                  probe_url: str | None = None, align: bool = True, **align_kw: Any) -> FetchResult:
    """Obtain dataset ``name`` and align it into ``out`` (identity folders of 112x112 faces, see
    :func:`frleak.data.align.align_folder`, whose options ``align_kw`` are passed on)."""
    raw, downloaded = fetch_raw(name, cache_dir=cache_dir, timeout=timeout, probe_url=probe_url, out_hint=out)
    if not align:
        return FetchResult(name, raw, None, downloaded, None)
    report = align_folder(raw, out, **align_kw)
    return FetchResult(name, raw, Path(out), downloaded, report)
