"""MTCNN face detector with five landmarks, in plain PyTorch (no torchvision).

Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional Networks",
IEEE SPL 2016 (arXiv 1604.02878). Three networks run as a cascade:

1. P-Net, fully convolutional, slides a 12x12 window (stride 2) over an image pyramid and proposes boxes;
2. R-Net re-scores 24x24 crops of the proposals and regresses their boxes;
3. O-Net re-scores 48x48 crops, regresses the boxes once more and predicts five landmarks
   (left eye, right eye, nose tip, left mouth corner, right mouth corner, as seen in the image).

Between stages: non-maximum suppression (NMS), box calibration by the regressed offsets, squaring of boxes.

Weights: the ``pnet.pt`` / ``rnet.pt`` / ``onet.pt`` state_dicts shipped in facenet-pytorch 2.6.0 (MIT), which are a
conversion of the authors' Caffe models. Their conventions, which this file follows (module names match, so the
state_dicts load with ``strict=True``):

* input pixels normalised as ``(x - 127.5) * 0.0078125``, RGB, (N, 3, H, W);
* R-Net / O-Net flatten their last feature map in (W, H, C) order (a permute to (N, W, H, C) before ``view``): the
  Caffe models were trained on column-major (MATLAB) images, and the conversion kept the dense weights as they were;
* box offsets are (dx1, dy1, dx2, dy2) relative to the box width / height; landmarks come as five x then five y,
  relative to the O-Net input box.

Weights are looked up (never downloaded) in: the ``weights_dir`` argument, ``$FRLEAK_SHARED/weights/mtcnn``, then the
``data`` folder of an installed facenet-pytorch package.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from frleak.errors import CheckpointError
from frleak.io import safe_torch_load
from frleak.paths import shared_dir

# Normalisation the converted Caffe weights expect: (x - 127.5) / 128.
_MEAN = 127.5
_SCALE = 0.0078125
# Pixels per P-Net pass (images of one size are stacked up to this): bounds memory for batches of large photos.
_PNET_PIXELS = 1 << 24


class PNet(nn.Module):
    """Proposal net: (N, 3, H, W) -> face probability (N, H', W') and box offsets (N, 4, H', W'),
    H' = ceil((H - 2) / 2) - 4, one output per 12x12 window at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # face / non-face logits
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return prob, self.conv4_2(x)


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C): the flatten order of the converted column-major Caffe dense weights."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> face probability (N,) and box offsets (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_caffe(x)))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> face probability (N,), box offsets (N, 4), landmarks (N, 10) as x1..x5, y1..y5
    in [0, 1] relative to the input box."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_caffe(x)))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


@dataclass(frozen=True)
class Face:
    """One detection. box: (4,) float32 [x1, y1, x2, y2] in pixels; score: O-Net face probability;
    landmarks: (5, 2) float32 (x, y) in pixels, order left eye, right eye, nose, left mouth, right mouth
    (image left/right, i.e. the subject's right eye comes first), the order of the ArcFace template."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @property
    def center(self) -> tuple[float, float]:
        return float((self.box[0] + self.box[2]) / 2), float((self.box[1] + self.box[3]) / 2)


# ----------------------------------------------------------------------------------------------------------------
# Box utilities. Boxes are (K, 4) float tensors [x1, y1, x2, y2] with inclusive pixel ends, as in the original
# MATLAB code: width = x2 - x1 + 1.


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Greedy non-maximum suppression: indices (into ``boxes``) of the kept boxes, by decreasing score.

    mode "union": overlap = intersection / union (IoU); "min": intersection / smaller area (MTCNN's last stage,
    which removes a small box lying inside a larger one). A box is dropped when its overlap with a kept,
    higher-scoring box exceeds ``threshold``. O(K * kept) time, O(K) memory.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0)
        ih = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0)
        inter = iw * ih
        denom = torch.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return torch.stack(keep)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
                mode: str = "union") -> torch.Tensor:
    """NMS within each group (image, or image and scale) independently: shift each group's boxes far apart so that
    boxes of different groups never overlap, then run one NMS."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    span = boxes.max() - boxes.min() + 2
    shifted = boxes + (groups.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, threshold, mode)


def calibrate(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Box regression: move each side by its offset times the box width / height. (K, 4), (K, 4) -> (K, 4)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + offsets * torch.stack([w, h, w, h], dim=1)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square of side max(w, h) around the same centre (R- and O-Net take square crops)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + (w - side) / 2
    y1 = boxes[:, 1] + (h - side) / 2
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def crop_resize(images: Sequence[torch.Tensor], image_idx: torch.Tensor, boxes: torch.Tensor,
                size: int) -> torch.Tensor:
    """Crop integer boxes (inclusive ends) out of images (3, H, W) (uint8 or float), zero-padding whatever lies
    outside the image as the original MTCNN does, and area-resize each crop to (size, size).
    Returns float32 (K, 3, size, size) in [0, 255]."""
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.float32, device=boxes.device)
    for k, (b, (x1, y1, x2, y2)) in enumerate(zip(image_idx.tolist(), boxes.long().tolist())):
        img = images[b]
        h, w = img.shape[1:]
        patch = torch.zeros((3, y2 - y1 + 1, x2 - x1 + 1), dtype=torch.float32, device=img.device)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            patch[:, sy1 - y1: sy2 - y1 + 1, sx1 - x1: sx2 - x1 + 1] = img[:, sy1: sy2 + 1, sx1: sx2 + 1]
        out[k] = F.interpolate(patch[None], size=(size, size), mode="area")[0]
    return out


# ----------------------------------------------------------------------------------------------------------------


def default_weights_dir() -> Path:
    """Where MTCNN weights are found without a ``weights_dir``: shared/weights/mtcnn, else facenet-pytorch's data
    folder (located without importing the package, which would need torchvision). Raises CheckpointError."""
    tried = []
    root = shared_dir()
    if root is not None:
        cand = root / "weights" / "mtcnn"
        if _has_weights(cand):
            return cand
        tried.append(str(cand))
    else:
        tried.append("$FRLEAK_SHARED/weights/mtcnn (no shared folder found)")
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / "data"
            if _has_weights(cand):
                return cand
            tried.append(str(cand))
    else:
        tried.append("facenet_pytorch/data (package not installed)")
    raise CheckpointError(
        "MTCNN weights (pnet.pt, rnet.pt, onet.pt) not found; looked in: " + "; ".join(tried)
        + ". Pass --weights DIR (Python: weights_dir=...), set FRLEAK_SHARED, or `pip install facenet-pytorch` "
        "(its data folder holds them). frleak never downloads weights at run time."
    )


def _has_weights(folder: Path) -> bool:
    return all((folder / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet"))


def _load(net: nn.Module, path: Path) -> nn.Module:
    state = safe_torch_load(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not an MTCNN {type(net).__name__} state_dict: {first}") from None
    return net.eval()


class MTCNN:
    """The MTCNN cascade: ``detect(list of PIL images) -> list (per image) of Face, best score first``.

    min_face_size: smallest face side searched, in pixels (sets the first pyramid scale 12 / min_face_size).
    thresholds: face-probability thresholds of P-, R- and O-Net. factor: pyramid scale step.
    Images of equal size share P-Net passes; R- and O-Net run on the crops of a whole batch at once.
    """

    def __init__(self, weights_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709) -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 (the P-Net window), got {min_face_size}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must hold three probabilities (P-, R-, O-Net), got {thresholds}")
        self.weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
        if not _has_weights(self.weights_dir):
            raise CheckpointError(f"{self.weights_dir} must hold pnet.pt, rnet.pt and onet.pt (MTCNN weights)")
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.pnet = _load(PNet(), self.weights_dir / "pnet.pt").to(self.device)
        self.rnet = _load(RNet(), self.weights_dir / "rnet.pt").to(self.device)
        self.onet = _load(ONet(), self.weights_dir / "onet.pt").to(self.device)

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: from 12 / min_face_size down by ``factor`` while the shorter side stays >= 12 px."""
        scale = 12.0 / self.min_face_size
        side = min(height, width) * scale
        out = []
        while side >= 12:
            out.append(scale)
            scale *= self.factor
            side *= self.factor
        return out

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """Faces in each image (any size, any mode; converted to RGB), sorted by decreasing score."""
        tensors = [
            torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
            .to(self.device)  # uint8: a batch of large photos stays small; floats are made per pass
            for im in images
        ]
        if not tensors:
            return []
        boxes, idx = self._propose(tensors)
        boxes, idx = self._refine(tensors, boxes, idx)
        boxes, scores, marks, idx = self._output(tensors, boxes, idx)
        faces: list[list[Face]] = [[] for _ in tensors]
        b_np, s_np, m_np = boxes.cpu().numpy(), scores.cpu().numpy(), marks.cpu().numpy()
        for k in np.argsort(-s_np, kind="stable"):
            faces[int(idx[k])].append(Face(b_np[k].astype(np.float32), float(s_np[k]), m_np[k].astype(np.float32)))
        return faces

    def _propose(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over the pyramid; NMS 0.5 within each (image, scale) and 0.7 within each image, both on
        the raw 12x12 windows mapped back to the image; calibrate; square; truncate to integer pixels.
        Returns boxes (K, 4) and their image indices (K,)."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(images):
            by_size.setdefault((int(t.shape[1]), int(t.shape[2])), []).append(i)
        all_boxes, all_scores, all_reg, all_img = [], [], [], []
        groups = [(h, w, part) for (h, w), members in by_size.items()
                  for part in _split(members, max(1, _PNET_PIXELS // (h * w)))]
        for h, w, members in groups:
            batch = torch.stack([images[i] for i in members]).float()
            members_t = torch.tensor(members, device=self.device)
            for scale in self.scales(h, w):
                hs, ws = math.ceil(h * scale), math.ceil(w * scale)
                x = F.interpolate(batch, size=(hs, ws), mode="area")
                prob, reg = self.pnet((x - _MEAN) * _SCALE)
                n, r, c = torch.nonzero(prob >= self.thresholds[0], as_tuple=True)
                if n.numel() == 0:
                    continue
                # The 12x12 window of output cell (r, c) starts at (2c, 2r) in the scaled image.
                x1 = torch.floor(2 * c.float() / scale)
                y1 = torch.floor(2 * r.float() / scale)
                x2 = torch.floor((2 * c.float() + 12) / scale) - 1
                y2 = torch.floor((2 * r.float() + 12) / scale) - 1
                windows = torch.stack([x1, y1, x2, y2], dim=1)
                scores = prob[n, r, c]
                keep = batched_nms(windows, scores, n, 0.5)
                all_boxes.append(windows[keep])
                all_scores.append(scores[keep])
                all_reg.append(reg[n, :, r, c][keep])
                all_img.append(members_t[n[keep]])
        if not all_boxes:
            return torch.empty((0, 4), device=self.device), torch.empty(0, dtype=torch.long, device=self.device)
        boxes, scores, img = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_img)
        keep = batched_nms(boxes, scores, img, 0.7)
        boxes = calibrate(boxes[keep], torch.cat(all_reg)[keep])
        return torch.trunc(square(boxes)), img[keep]

    def _refine(self, images: list[torch.Tensor], boxes: torch.Tensor,
                img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net on 24x24 crops; threshold; NMS 0.7 per image; calibrate; square; integer pixels."""
        if len(boxes) == 0:
            return boxes, img
        crops = crop_resize(images, img, boxes, 24)
        prob, reg = _batched(self.rnet, (crops - _MEAN) * _SCALE)
        ok = prob > self.thresholds[1]
        boxes, prob, reg, img = boxes[ok], prob[ok], reg[ok], img[ok]
        keep = batched_nms(boxes, prob, img, 0.7)
        return torch.trunc(square(calibrate(boxes[keep], reg[keep]))), img[keep]

    def _output(self, images: list[torch.Tensor], boxes: torch.Tensor,
                img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net on 48x48 crops; threshold; landmarks (relative to the crop box); calibrate; NMS 0.7 with
        the "min" overlap per image. Returns boxes (K, 4), scores (K,), landmarks (K, 5, 2), image indices (K,)."""
        if len(boxes) == 0:
            return boxes, boxes.new_empty(0), boxes.new_empty((0, 5, 2)), img
        crops = crop_resize(images, img, boxes, 48)
        prob, reg, pts = _batched(self.onet, (crops - _MEAN) * _SCALE)
        ok = prob > self.thresholds[2]
        boxes, prob, reg, pts, img = boxes[ok], prob[ok], reg[ok], pts[ok], img[ok]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        marks = torch.stack([boxes[:, :1] + w * pts[:, :5], boxes[:, 1:2] + h * pts[:, 5:]], dim=2)
        boxes = calibrate(boxes, reg)
        keep = batched_nms(boxes, prob, img, 0.7, mode="min")
        return boxes[keep], prob[keep], marks[keep], img[keep]


def _split(items: list[int], n: int) -> list[list[int]]:
    return [items[i: i + n] for i in range(0, len(items), n)]


def _batched(net: nn.Module, x: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, ...]:
    """Run ``net`` on ``x`` in chunks (bounded memory on GPUs) and concatenate each output."""
    outs = [net(part) for part in x.split(chunk)]
    return tuple(torch.cat(o) for o in zip(*outs))
