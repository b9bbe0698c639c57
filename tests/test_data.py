"""Tests for memgeo.data: containers, loaders, toy fixtures, memorization injection and the registry."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from memgeo.data import (
    DATASETS,
    Dataset,
    duplicate_points,
    load_dataset,
    load_digits,
    load_mnist,
    load_points,
    make_patch_with_duplicate,
    make_toy2d,
    read_idx,
    replace_class_with_copies,
)
from memgeo.errors import MemgeoError

# The real MNIST test split lives in the shared folder beside the repository, when it is there at all.
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
HAVE_MNIST = (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file() and (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file()

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode ``arr`` in the IDX format by hand (independently of the reader under test)."""
    header = bytes([0, 0, _IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray, split: str = "t10k", gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    enc = gzip.compress if gz else (lambda b: b)
    img = folder / f"{split}-images-idx3-ubyte{suffix}"
    img.write_bytes(enc(idx_bytes(images)))
    (folder / f"{split}-labels-idx1-ubyte{suffix}").write_bytes(enc(idx_bytes(labels)))
    return img


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture
def small_mnist() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    labels = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    return images, labels


# ---------------------------------------------------------------------------- Dataset
def test_dataset_defaults_and_shapes() -> None:
    x = torch.randn(6, 1, 2, 3)
    ds = Dataset(x=x, name="t")
    assert ds.n == len(ds) == 6
    assert ds.data_shape == (1, 2, 3) and ds.dim == 6
    assert ds.flat().shape == (6, 6)
    assert torch.equal(ds.source_index, torch.arange(6)) and ds.source_index.dtype == torch.int64
    assert not ds.is_duplicate.any() and ds.is_duplicate.dtype == torch.bool
    assert ds.y is None and ds.meta == {}
    assert "n=6" in repr(ds)


def test_dataset_is_duplicate_derived_from_source_index() -> None:
    ds = Dataset(x=torch.zeros(5, 2), y=torch.tensor([0, 1, 1, 2, 2], dtype=torch.int32),
                 source_index=torch.tensor([0, 1, 1, 3, 4]))
    assert ds.y.dtype == torch.int64
    assert ds.is_duplicate.tolist() == [False, True, True, False, False]
    assert ds.n_sources == 4
    u = ds.unique()
    assert u.n == 4 and u.source_index.tolist() == [0, 1, 3, 4]
    assert u.meta["copies"].tolist() == [1, 2, 1, 1] and not u.is_duplicate.any()
    # A subset that keeps one member of a group is no longer a duplicate.
    assert not ds.subset([0, 1, 3]).is_duplicate.any()
    assert ds.subset(torch.tensor([True, True, True, False, False])).is_duplicate.tolist() == [False, True, True]
    assert ds.subset(slice(1, 3)).n == 2
    with pytest.raises(MemgeoError, match="disagrees"):
        Dataset(x=torch.zeros(3, 2), source_index=torch.tensor([0, 0, 1]), is_duplicate=torch.zeros(3, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": torch.tensor([[0.0, float("nan")], [1.0, 2.0]])}, "NaN"),
        ({"x": torch.tensor([[0.0, float("inf")]])}, "NaN/inf"),
        ({"x": torch.zeros(3, 2, 2)}, "3-D"),
        ({"x": torch.zeros(3, 2, dtype=torch.uint8)}, "floating point"),
        ({"x": torch.zeros(0, 2)}, "no data"),
        ({"x": torch.zeros(3, 2), "y": torch.zeros(4, dtype=torch.long)}, "y has shape"),
        ({"x": torch.zeros(3, 2), "y": torch.zeros(3)}, "integer"),
        ({"x": torch.zeros(3, 2), "source_index": torch.tensor([0, 1])}, "source_index has shape"),
        ({"x": torch.zeros(3, 2), "source_index": torch.tensor([0, -1, 2])}, "negative"),
        ({"x": torch.zeros(3, 2), "is_duplicate": torch.zeros(3, dtype=torch.long)}, "is_duplicate"),
        ({"x": [[0.0, 1.0]]}, "torch.Tensor"),
    ],
)
def test_dataset_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(MemgeoError, match=match):
        Dataset(**kwargs)


def test_dataset_is_frozen_and_subset_checks_range() -> None:
    ds = Dataset(x=torch.zeros(4, 2), meta={"a": 1})
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    with pytest.raises(MemgeoError, match="out of range"):
        ds.subset([0, 4])
    with pytest.raises(MemgeoError, match="mask"):
        ds.subset(torch.ones(3, dtype=torch.bool))
    with pytest.raises(MemgeoError, match="empty"):
        ds.subset([])
    assert ds.subset([-1]).source_index.tolist() == [3]
    sub = ds.subset([0])
    sub.meta["a"] = 2
    assert ds.meta["a"] == 1  # meta is copied, not shared
    moved = ds.to("cpu")
    assert moved.x.device.type == "cpu" and moved.meta == ds.meta


# ---------------------------------------------------------------------------- digits
def test_digits_shape_range_labels(digits: Dataset) -> None:
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == torch.float32
    assert digits.x.min() == -1.0 and digits.x.max() == 1.0
    # Raw values are integers 0..16, so scaled values lie on the grid k/8 - 1.
    assert torch.equal((digits.x + 1) * 8, ((digits.x + 1) * 8).round())
    assert digits.y.dtype == torch.int64 and sorted(digits.y.unique().tolist()) == list(range(10))
    assert int(torch.bincount(digits.y).sum()) == 1797
    assert digits.name == "digits" and not digits.is_duplicate.any()


# ---------------------------------------------------------------------------- IDX / MNIST
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: type) -> None:
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4) if dtype != np.uint8 else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    # Compression is detected from the content, so the names deliberately do not say it.
    path = tmp_path / "array.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path: Path) -> None:
    arr = np.arange(10, dtype=np.uint8)
    plain_named_gz = tmp_path / "labels.gz"
    plain_named_gz.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(plain_named_gz), arr)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d[:-5], "truncated"),
        (lambda d: d[:6], "truncated inside its header"),
        (lambda d: d + b"\x00", "longer than its header"),
        (lambda d: b"\x08\x03" + d[2:], "bad magic"),
        (lambda d: b"", "bad magic"),
        (lambda d: d[:2] + b"\x07" + d[3:], "dtype code"),
        (lambda d: gzip.compress(d)[:-12], "gzip"),
        (lambda d: gzip.compress(d[:-5]), "truncated"),
    ],
)
def test_read_idx_rejects_broken_files(tmp_path: Path, make, match: str) -> None:
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(make(idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))))
    with pytest.raises(MemgeoError, match=match) as info:
        read_idx(path)
    assert "broken-images-idx3-ubyte" in str(info.value)  # the message names the file


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MemgeoError, match="nothere"):
        read_idx(tmp_path / "nothere")


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_folder_and_file(tmp_path: Path, small_mnist, gz: bool) -> None:
    images, labels = small_mnist
    img_file = write_mnist(tmp_path, images, labels, gz=gz)
    for path in (tmp_path, img_file, str(tmp_path)):
        ds = load_mnist(path)
        assert ds.x.shape == (7, 1, 28, 28) and ds.x.dtype == torch.float32
        assert torch.all(ds.x[0] == -1.0) and torch.all(ds.x[1] == 1.0)
        np.testing.assert_allclose(ds.x[2, 0].numpy(), images[2] / 127.5 - 1.0, atol=1e-6)
        assert ds.y.tolist() == labels.tolist() and ds.y.dtype == torch.int64
    assert load_mnist(tmp_path, limit=3).n == 3


def test_load_mnist_train_split_and_errors(tmp_path: Path, small_mnist) -> None:
    images, labels = small_mnist
    write_mnist(tmp_path, images, labels, split="train", gz=False)
    assert load_mnist(tmp_path, split="train").name == "mnist-train"
    with pytest.raises(MemgeoError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)  # only the train split is there
    with pytest.raises(MemgeoError, match="split"):
        load_mnist(tmp_path, split="validation")
    with pytest.raises(MemgeoError, match="limit"):
        load_mnist(tmp_path, split="train", limit=0)
    with pytest.raises(MemgeoError, match="does not exist"):
        load_mnist(tmp_path / "missing")
    # Image and label counts must agree.
    write_mnist(tmp_path / "bad", images, labels[:5])
    with pytest.raises(MemgeoError, match="7 images but"):
        load_mnist(tmp_path / "bad")
    # Images without labels beside them.
    (tmp_path / "nolabels").mkdir()
    img = tmp_path / "nolabels" / "t10k-images-idx3-ubyte"
    img.write_bytes(idx_bytes(images))
    with pytest.raises(MemgeoError, match="labels"):
        load_mnist(img)


def test_load_mnist_env_var(tmp_path: Path, small_mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = small_mnist
    monkeypatch.delenv("MEMGEO_DATA", raising=False)
    with pytest.raises(MemgeoError, match="MEMGEO_DATA"):
        load_mnist()
    with pytest.raises(MemgeoError, match="MEMGEO_DATA"):
        load_dataset("mnist")
    # MEMGEO_DATA may hold the files directly ...
    write_mnist(tmp_path / "direct", images, labels)
    monkeypatch.setenv("MEMGEO_DATA", str(tmp_path / "direct"))
    assert load_mnist().n == 7
    # ... or be a general data folder with an mnist/ subfolder.
    write_mnist(tmp_path / "root" / "mnist", images[:4], labels[:4])
    monkeypatch.setenv("MEMGEO_DATA", str(tmp_path / "root"))
    assert load_mnist().n == 4
    assert load_dataset("mnist").n == 4
    monkeypatch.setenv("MEMGEO_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(MemgeoError, match="not a folder"):
        load_mnist()


@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST test split not found in {MNIST_DIR}")
def test_real_mnist_t10k() -> None:
    ds = load_mnist(MNIST_DIR)
    assert ds.x.shape == (10000, 1, 28, 28)
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0
    counts = torch.bincount(ds.y, minlength=10)
    assert counts.numel() == 10 and int(counts.sum()) == 10000 and int(counts.min()) > 800
    assert load_dataset(f"mnist:{MNIST_DIR}").n == 10000


# ---------------------------------------------------------------------------- injection
def test_duplicate_points_bookkeeping(digits: Dataset) -> None:
    out = duplicate_points(digits, [3, 10, 500], copies=5)
    assert out.n == digits.n + 3 * 4
    assert int(out.is_duplicate.sum()) == 3 * 5
    for row in (3, 10, 500):
        group = out.source_index == row
        assert int(group.sum()) == 5
        assert torch.equal(out.x[group], digits.x[row].expand(5, 1, 8, 8))
        assert torch.all(out.y[group] == digits.y[row])
    assert out.unique().n == digits.n
    assert torch.equal(out.x[: digits.n], digits.x)  # the original rows are untouched
    assert out.meta["injection"]["copies"] == 5
    assert not digits.is_duplicate.any()  # input unchanged
    assert duplicate_points(digits, [3], copies=1).n == digits.n


@pytest.mark.parametrize(
    "indices, copies, match",
    [([0, 0], 3, "repeated"), ([1797], 3, "out of range"), ([-1], 3, "out of range"),
     ([], 3, "empty"), ([1], 0, "copies"), ([1.5], 2, "ints")],
)
def test_duplicate_points_errors(digits: Dataset, indices, copies: int, match: str) -> None:
    with pytest.raises(MemgeoError, match=match):
        duplicate_points(digits, indices, copies)


def test_replace_whole_class(digits: Dataset) -> None:
    cls = 3
    size = int((digits.y == cls).sum())
    out = replace_class_with_copies(digits, cls, seed=1)
    rec = out.meta["injection"]
    assert out.n == digits.n and int((out.y == cls).sum()) == size  # class size unchanged by default
    members = out.y == cls
    assert torch.all(out.source_index[members] == rec["source_index"])
    assert torch.all(out.x[members] == digits.x[rec["source_row"]])
    assert int(digits.y[rec["source_row"]]) == cls
    assert int(out.is_duplicate.sum()) == size == rec["n_copies"] and rec["n_kept_originals"] == 0
    assert out.unique().n == digits.n - size + 1
    # Other classes are untouched.
    for c in range(10):
        if c != cls:
            assert torch.equal(out.x[out.y == c], digits.x[digits.y == c])


def test_replace_fraction_keeps_originals(digits: Dataset) -> None:
    cls, fraction = 7, 0.25
    size = int((digits.y == cls).sum())
    n_replaced = round(fraction * size)
    out = replace_class_with_copies(digits, cls, fraction=fraction, seed=0)
    rec = out.meta["injection"]
    assert rec["n_replaced"] == n_replaced and rec["n_kept_originals"] == size - n_replaced
    members = out.y == cls
    assert int(members.sum()) == size
    copies = members & (out.source_index == rec["source_index"])
    originals = members & ~copies
    assert int(copies.sum()) == n_replaced
    assert int(originals.sum()) == size - n_replaced
    assert not out.is_duplicate[originals].any()
    # The kept originals are class members of the input, each exactly once.
    kept = out.source_index[originals]
    assert torch.all(digits.y[kept] == cls) and kept.unique().numel() == kept.numel()
    assert out.unique().n == digits.n - n_replaced + 1
    start, stop = rec["copy_rows"]
    assert torch.all(out.source_index[start:stop] == rec["source_index"]) and stop == out.n


def test_replace_with_explicit_counts_and_source(digits: Dataset) -> None:
    cls = 0
    size = int((digits.y == cls).sum())
    src = int(torch.nonzero(digits.y == cls)[5])
    out = replace_class_with_copies(digits, cls, n_copies=50, fraction=0.5, source_index=src)
    n_replaced = round(0.5 * size)
    assert int((out.y == cls).sum()) == size - n_replaced + 50
    assert int((out.source_index == src).sum()) == 50  # the source's own row counts as replaced
    assert out.meta["injection"]["source_index"] == src
    # A source from another class keeps its own row as well: 10 copies + 1 original.
    other = int(torch.nonzero(digits.y == 1)[0])
    out2 = replace_class_with_copies(digits, cls, n_copies=10, fraction=1.0, source_index=other)
    assert int((out2.source_index == other).sum()) == 11
    assert int((out2.y == cls).sum()) == 10
    # Injections chain, and the history is kept.
    out3 = duplicate_points(out, [0], copies=3)
    assert [r["kind"] for r in out3.meta["injections"]] == ["replace_class_with_copies", "duplicate_points"]


def test_replace_is_seeded(digits: Dataset) -> None:
    a = replace_class_with_copies(digits, 4, fraction=0.3, seed=5)
    b = replace_class_with_copies(digits, 4, fraction=0.3, seed=5)
    c = replace_class_with_copies(digits, 4, fraction=0.3, seed=6)
    assert torch.equal(a.source_index, b.source_index)
    assert not torch.equal(a.source_index, c.source_index)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"cls": 10}, "does not occur"), ({"cls": 1, "fraction": 0.0}, "fraction"), ({"cls": 1, "fraction": 1.5}, "fraction"),
     ({"cls": 1, "n_copies": 0}, "n_copies"), ({"cls": 1, "source_index": 1797}, "source_index"),
     ({"cls": 1, "source_index": -1}, "source_index"), ({"cls": 1, "seed": "x"}, "seed")],
)
def test_replace_errors(digits: Dataset, kwargs: dict, match: str) -> None:
    with pytest.raises(MemgeoError, match=match):
        replace_class_with_copies(digits, **kwargs)


def test_replace_needs_labels() -> None:
    with pytest.raises(MemgeoError, match="no labels"):
        replace_class_with_copies(Dataset(x=torch.zeros(4, 2)), 0)


# ---------------------------------------------------------------------------- toys
def test_toy2d() -> None:
    ds = make_toy2d(n=1000, n_duplicates=50, duplicate_point=(0.0, 0.0), seed=0)
    assert ds.x.shape == (1050, 2) and ds.x.dtype == torch.float32
    assert int(ds.is_duplicate.sum()) == 50 and ds.unique().n == 1001
    start, stop = ds.meta["duplicate_rows"]
    assert (start, stop) == (1000, 1050) and ds.meta["duplicate_point"] == (0.0, 0.0)
    assert torch.all(ds.x[start:stop] == 0.0) and torch.all(ds.source_index[start:stop] == 1000)
    blobs = ds.x[:start]
    assert blobs.abs().max() < 1.3 and blobs.std(0).min() > 0.4  # spread out over roughly [-1, 1]^2
    # The duplicate sits in a low-density region: no blob point near it.
    assert torch.cdist(blobs, ds.x[start:start + 1]).min() > 0.15
    # Same seed, same data; float64 describes the same points.
    again = make_toy2d(n=1000, n_duplicates=50, seed=0, dtype=torch.float64)
    torch.testing.assert_close(again.x.float(), ds.x)
    assert make_toy2d(n=10, n_duplicates=0).n == 10
    with pytest.raises(MemgeoError, match="duplicate_point"):
        make_toy2d(duplicate_point=(0.0, 0.0, 1.0))
    with pytest.raises(MemgeoError, match="n=0 must"):
        make_toy2d(n=0)


def test_patch_with_duplicate_geometry() -> None:
    ds = make_patch_with_duplicate(n_patch=1000, dim=16, patch_dim=2, n_duplicates=30, seed=3, dtype=torch.float64)
    meta = ds.meta
    basis, origin, point = meta["basis"], meta["origin"], meta["duplicate_point"]
    assert ds.x.shape == (1030, 16) and basis.shape == (16, 2) and origin.shape == (16,)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2, dtype=torch.float64))
    patch = ds.x[:1000]
    coords = (patch - origin) @ basis
    # Patch points lie on the affine plane and inside the square of side `scale`.
    residual = (patch - origin) - coords @ basis.T
    assert residual.norm(dim=1).max() < 1e-10
    assert coords.abs().max() <= meta["scale"] / 2 and coords.abs().max() > 0.45
    # Neighbours are closely spaced: nearest-neighbour distances are of the order of meta["spacing"].
    d = torch.cdist(coords, coords) + torch.eye(1000, dtype=torch.float64) * 10
    nn = d.min(dim=1).values.median()
    assert 0.2 * meta["spacing"] < nn < 2 * meta["spacing"] < 0.1
    # The duplicate is at distance 1 from the plane, above the patch centre, and >= 1 from every patch point.
    off = point - origin
    assert abs(float((off - (off @ basis) @ basis.T).norm()) - 1.0) < 1e-10
    assert (off @ basis).abs().max() < 1e-10
    assert torch.cdist(patch, point[None]).min() >= 1.0 - 1e-10
    assert int(ds.is_duplicate.sum()) == 30 and torch.all(ds.x[1000:] == point)
    assert ds.unique().n == 1001


def test_patch_defaults_float32_and_errors() -> None:
    ds = make_patch_with_duplicate()
    assert ds.x.shape == (4200, 64) and ds.x.dtype == torch.float32
    coords = (ds.x[:4000] - ds.meta["origin"]) @ ds.meta["basis"]
    residual = (ds.x[:4000] - ds.meta["origin"]) - coords @ ds.meta["basis"].T
    assert residual.norm(dim=1).max() < 1e-5
    with pytest.raises(MemgeoError, match="patch_dim"):
        make_patch_with_duplicate(dim=4, patch_dim=4)
    with pytest.raises(MemgeoError, match="scale"):
        make_patch_with_duplicate(scale=0.0)


# ---------------------------------------------------------------------------- registry / points
def test_load_points(tmp_path: Path) -> None:
    good = np.random.default_rng(0).normal(size=(5, 3))
    np.save(tmp_path / "p.npy", good)
    pts = load_points(tmp_path / "p.npy")
    assert pts.shape == (5, 3) and pts.dtype == torch.float32
    np.save(tmp_path / "img.npy", np.zeros((2, 1, 4, 4), dtype=np.uint8))
    assert load_points(tmp_path / "img.npy").shape == (2, 1, 4, 4)
    assert load_points(tmp_path / "p.npy", dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda d: d / "missing.npy", "does not exist"),
        (lambda d: (np.savetxt(d / "p.txt", np.zeros((2, 2))), d / "p.txt")[1], "not a .npy"),
        (lambda d: ((d / "c.npy").write_bytes(b"garbage, not numpy"), d / "c.npy")[1], "cannot read"),
        (lambda d: (np.save(d / "n.npy", np.array([[0.0, np.nan]])), d / "n.npy")[1], "NaN"),
        (lambda d: (np.save(d / "three.npy", np.zeros((2, 2, 2))), d / "three.npy")[1], "3-D"),
        (lambda d: (np.save(d / "one.npy", np.zeros(4)), d / "one.npy")[1], "1-D"),
        (lambda d: (np.save(d / "o.npy", np.array([[{}]], dtype=object)), d / "o.npy")[1], "cannot read"),
        (lambda d: (np.save(d / "s.npy", np.array([["a"]])), d / "s.npy")[1], "not real numbers"),
        (lambda d: (np.save(d / "e.npy", np.zeros((0, 3))), d / "e.npy")[1], "empty"),
    ],
)
def test_load_points_errors(tmp_path: Path, setup, match: str) -> None:
    path = setup(tmp_path)
    with pytest.raises(MemgeoError, match=match):
        load_points(path)


def test_load_dataset_specs(tmp_path: Path, small_mnist) -> None:
    assert set(DATASETS) >= {"digits", "mnist", "toy2d", "npy"}
    assert load_dataset("digits").x.shape == (1797, 1, 8, 8)
    assert load_dataset("toy2d").meta["n_duplicates"] == 200
    np.save(tmp_path / "pts.npy", np.ones((4, 2)))
    for spec in (f"npy:{tmp_path / 'pts.npy'}", str(tmp_path / "pts.npy")):
        ds = load_dataset(spec)
        assert ds.x.shape == (4, 2) and ds.name == "pts"
    images, labels = small_mnist
    write_mnist(tmp_path / "m", images, labels)
    assert load_dataset(f"mnist:{tmp_path / 'm'}").n == 7
    with pytest.raises(MemgeoError, match="choose one of: digits"):
        load_dataset("cifar")
    with pytest.raises(MemgeoError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npy"))
