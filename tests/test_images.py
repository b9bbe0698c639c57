"""Image folders and the sample-set resolver (memgeo.data.images): round trips through PNG/JPEG,
the documented mode/size/resampling policy checked against PIL directly, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from memgeo.data.images import SampleSet, list_images, load_image_folder, load_sample_set
from memgeo.errors import MemgeoError


def to_levels(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8 levels, the inverse of the loader's v / 127.5 - 1."""
    return np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)


def test_round_trip_grey_pngs_in_sorted_order(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, 1, 6, 7)).astype(np.float32)
    for i in (3, 0, 4, 1, 2):  # written out of order
        Image.fromarray(to_levels(x[i, 0])).save(tmp_path / f"img{i:02d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    arr, names = load_image_folder(tmp_path)
    assert names == [f"img{i:02d}.png" for i in range(5)]
    assert arr.shape == (5, 1, 6, 7) and arr.dtype == np.float32
    # Within half a level of the original, and exactly v / 127.5 - 1 for the stored levels.
    assert np.abs(arr - x).max() <= 0.5 / 127.5 + 1e-6
    np.testing.assert_array_equal(arr, to_levels(x).astype(np.float32) / np.float32(127.5) - np.float32(1))
    assert arr.min() >= -1 and arr.max() <= 1


def test_mixed_sizes_and_modes_follow_the_policy(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (20, 16), dtype=np.uint8)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(grey).save(tmp_path / "b.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "c.png")
    yy, xx = np.mgrid[0:10, 0:12]
    smooth = np.stack([yy * 20, xx * 20, 255 - yy * 10 - xx * 5], axis=2).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "d.jpg", quality=95)

    # Defaults from the first image: RGB, 10 x 12.
    arr, names = load_image_folder(tmp_path)
    assert names == ["a.png", "b.png", "c.png", "d.jpg"] and arr.shape == (4, 3, 10, 12)
    np.testing.assert_array_equal(arr[0], rgb.transpose(2, 0, 1) / np.float32(127.5) - 1)  # no resampling
    expect_b = np.asarray(Image.fromarray(grey).convert("RGB").resize((12, 10), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(arr[1], expect_b.transpose(2, 0, 1) / np.float32(127.5) - 1)
    assert np.array_equal(arr[1][0], arr[1][1])  # grey repeated in the 3 channels
    expect_c = np.asarray(Image.fromarray(rgba, mode="RGBA").convert("RGB").resize((12, 10), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(arr[2], expect_c.transpose(2, 0, 1) / np.float32(127.5) - 1)
    # JPEG (lossy) at quality 95 of a smooth image: within a few levels.
    assert np.abs(arr[3] - (smooth.transpose(2, 0, 1) / np.float32(127.5) - 1)).mean() < 3 / 127.5

    # Defaults from like (the train set): grey 4 x 4; area resampling is the block mean.
    like = np.zeros((2, 1, 4, 4), np.float32)
    arr, _ = load_image_folder(tmp_path, like=like, resample="area")
    assert arr.shape == (4, 1, 4, 4)
    grey_l = np.asarray(Image.fromarray(grey), dtype=np.float64)  # 20 x 16 -> 4 x 4: 5 x 4 blocks
    block_mean = grey_l.reshape(4, 5, 4, 4).mean(axis=(1, 3))
    assert np.abs((arr[1, 0] + 1) * 127.5 - block_mean).max() <= 1.0  # PIL rounds in fixed point
    luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)  # ITU-R 601-2 luma
    assert np.allclose(luma, rgb @ np.array([0.299, 0.587, 0.114]), atol=1)

    # Explicit options beat like.
    arr, _ = load_image_folder(tmp_path, like=like, mode="RGB", size=(5, 3), resample="nearest")
    assert arr.shape == (4, 3, 5, 3)


def test_sixteen_bit_grey_is_scaled(tmp_path):
    levels16 = np.array([[0, 65535], [32768, 13107]], dtype=np.uint16)
    Image.fromarray(levels16).save(tmp_path / "x.png")
    arr, _ = load_image_folder(tmp_path)
    assert arr.shape == (1, 1, 2, 2)
    np.testing.assert_allclose((arr[0, 0] + 1) * 127.5, levels16 / 65535 * 255, atol=1e-3)


def test_load_sample_set_every_input_kind(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.uniform(-1, 1, (6, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "train.npy", train)
    s = load_sample_set(tmp_path / "train.npy", name="--train")
    assert s.kind == "npy" and isinstance(s.x, np.memmap) and s.shape == (6, 1, 8, 8) and s.is_image
    np.testing.assert_array_equal(np.asarray(s), train)

    folder = tmp_path / "gen"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    g = load_sample_set(folder, like=s, name="--gen")  # resized to the train set's 8 x 8
    assert g.kind == "folder" and g.shape == (3, 1, 8, 8) and g.names == ["0.png", "1.png", "2.png"]

    t = load_sample_set(torch.from_numpy(train[:2]).to(torch.float16), like=train)
    assert t.kind == "array" and t.x.dtype == np.float32 and t.shape == (2, 1, 8, 8)

    calls = []

    def draw(n):
        calls.append(n)
        return torch.zeros((n, 1, 8, 8))

    d = load_sample_set(draw, like=train, n=4)
    assert d.kind == "generator" and d.shape == (4, 1, 8, 8) and calls == [4]
    assert load_sample_set(d).x is d.x and isinstance(d, SampleSet)


def test_bad_inputs_are_one_line_errors(tmp_path):
    train = np.zeros((4, 1, 8, 8), np.float32)
    cases = [
        (lambda: load_sample_set(tmp_path / "nope"), "does not exist"),
        (lambda: load_sample_set(tmp_path / "nope.npy"), "does not exist"),
        (lambda: list_images(tmp_path), "holds no PNG/JPEG"),
        (lambda: load_sample_set(lambda n: np.zeros((n, 1, 8, 8)), name="--gen"), "no number of samples"),
        (lambda: load_sample_set(lambda n: np.zeros((n - 1, 1, 8, 8)), n=3), "returned 2 samples"),
        (lambda: load_sample_set(lambda n: 1 / 0, n=3), "generator failed: ZeroDivisionError"),
        (lambda: load_sample_set(np.zeros((3, 1, 4, 4)), like=train, name="--test"), r"shape \(1, 4, 4\)"),
        (lambda: load_sample_set(np.array(["a", "b"])), "non-numeric"),
        (lambda: load_sample_set(np.zeros((0, 3))), "no samples"),
        (lambda: load_sample_set(3.5), "is a float"),
    ]
    (tmp_path / "x.txt").write_text("hi")
    cases.append((lambda: load_sample_set(tmp_path / "x.txt"), "neither a .npy file nor a folder"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    cases.append((lambda: load_image_folder(bad), "cannot read image .*broken.png"))
    cases.append((lambda: load_image_folder(bad, mode="CMYK"), "unknown image mode"))
    cases.append((lambda: load_image_folder(bad, resample="fancy"), "unknown resampling filter"))
    cases.append((lambda: load_image_folder(bad, size=(0, 4)), "size H"))
    cases.append((lambda: load_image_folder(bad, like=np.zeros((2, 64))), "not images"))
    for fn, match in cases:
        with pytest.raises(MemgeoError, match=match) as info:
            fn()
        assert "\n" not in str(info.value)
