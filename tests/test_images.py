"""Image reading: grey and any-size images are handled as documented; corrupt files give a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frleak.data.images import InputSpec, load_uint8, read_image, to_network_array
from frleak.errors import DataError


def test_grey_image_becomes_three_equal_channels(tmp_path: Path) -> None:
    Image.fromarray(np.arange(92 * 112, dtype=np.uint8).reshape(112, 92) % 251, "L").save(tmp_path / "g.pgm")
    arr = to_network_array(read_image(tmp_path / "g.pgm"), InputSpec(size=(64, 64)))
    assert arr.shape == (64, 64, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_mobilefacenet_crop_takes_columns_8_to_104(tmp_path: Path) -> None:
    img = np.zeros((112, 112, 3), dtype=np.uint8)
    img[:, :8] = 255
    img[:, 104:] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    arr = to_network_array(read_image(tmp_path / "a.png"), InputSpec(size=(112, 96), crop=(0, 8, 112, 96)))
    assert arr.shape == (112, 96, 3) and arr.max() == 0


def test_corrupt_and_missing_images_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(DataError, match="not found"):
        load_uint8([tmp_path / "nope.jpg"], InputSpec())
