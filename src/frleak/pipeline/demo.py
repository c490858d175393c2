"""``frleak demo``: the embedded default audit on the shared LFW data and pretrained weights.

The config ships inside the package (``frleak/configs/demo.yaml``, identical to ``configs/demo.yaml`` of the
repository), so the demo runs from any directory. Without the shared data the user gets one message saying how to
obtain it, instead of a traceback halfway through.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from frleak.errors import DataError

#: what the demo needs from the shared folder
REQUIRED = ("data/lfw-112", "data/celeba-112", "weights/mobilefacenet_casia_arcface.ckpt",
            "weights/dcgan32_celeba_generator.pt")

HOW_TO_GET_DATA = """\
frleak demo needs the shared face data and pretrained weights: {problem}.
  * If you have the shared folder (data/lfw-112, data/celeba-112, weights/), point to it:
        export FRLEAK_SHARED=/path/to/shared      (default: ../shared beside the project)
  * Or build the data yourself where there is internet:
        frleak data lfw --out DATA/lfw-112        (downloads LFW through scikit-learn and aligns it to 112x112)
        frleak align --help                       (align any identity-folder photo set, e.g. CelebA, the same way)
    then run `frleak audit` with a config whose data paths point there (see configs/ and docs/audit.md).
  * The pretrained weights (weights/mobilefacenet_casia_arcface.ckpt, weights/dcgan32_celeba_generator.pt) are
    described in the shared folder's README.md; without them, set inversion.enabled: false."""


def demo_config_path() -> Path:
    """The packaged demo config (a real file inside the installed package)."""
    return Path(str(resources.files("frleak") / "configs" / "demo.yaml"))


def check_demo_prerequisites() -> Path:
    """The shared folder, or a DataError explaining how to obtain what is missing."""
    from frleak.paths import shared_dir

    root = shared_dir()
    if root is None:
        raise DataError(HOW_TO_GET_DATA.format(problem="no shared folder was found ($FRLEAK_SHARED or ../shared)"))
    missing = [r for r in REQUIRED if not (root / r).exists()]
    if missing:
        raise DataError(HOW_TO_GET_DATA.format(problem=f"{root} lacks {', '.join(missing)}"))
    return root
