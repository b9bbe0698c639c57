"""kNN backends of memgeo.data.neighbors: exact faiss == exact torch == brute force (copies at
distance 0, ties by smaller index, blocks, memory maps), recall of the approximate faiss indexes,
and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from copy_metric_fixtures import brute_knn

from memgeo.data import neighbors as nb
from memgeo.data.neighbors import NeighborIndex, approximate_recall, nearest_neighbors
from memgeo.errors import MemgeoError

faiss = pytest.importorskip("faiss")


def tied_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference with a row duplicated 20 times (more than k + 8 ties at distance 0 for its copies) and
    +-e_i lattice points (2 D points all at distance exactly 1 from the origin); queries hold exact
    copies, the origin and fresh points."""
    rng = np.random.default_rng(seed)
    dim = 12
    base = rng.standard_normal((300, dim)).astype(np.float32)
    dup = np.repeat(base[5:6], 20, axis=0)
    lattice = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32)
    ref = np.concatenate([base[:100], dup, base[100:200], lattice, base[200:]])
    perm = rng.permutation(len(ref))
    ref = ref[perm]
    queries = np.concatenate([base[5:6], base[10:14], np.zeros((1, dim), np.float32),
                              rng.standard_normal((30, dim)).astype(np.float32)])
    return queries, ref


@pytest.mark.parametrize("k", [1, 3, 25])
@pytest.mark.parametrize("block_size", [None, 37])
def test_exact_faiss_equals_torch_equals_brute_force_with_copies_and_ties(k, block_size):
    q, r = tied_set()
    d_ref, i_ref = brute_knn(q, r, k)
    for backend in ("torch", "faiss", "auto"):
        d, i = nearest_neighbors(q, r, k=k, chunk_size=8, backend=backend, block_size=block_size)
        np.testing.assert_array_equal(i.numpy(), i_ref, err_msg=backend)
        np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-12, atol=0, err_msg=backend)
    # The copy of the 20-fold duplicated row: 20 neighbours at distance exactly 0, the smallest indices first.
    d, i = nearest_neighbors(q[:1], r, k=min(k, 20), backend="faiss", block_size=block_size)
    assert (d.numpy() == 0).all()
    dup_rows = np.flatnonzero((r == q[0]).all(axis=1))
    np.testing.assert_array_equal(i.numpy()[0], dup_rows[:min(k, 20)])
    # The origin: 2 D lattice points tie at exactly 1 (normalized 1/sqrt(12)); smallest indices first.
    d, i = nearest_neighbors(q[5:6], r, k=min(k, 24), backend="faiss", block_size=block_size)
    lattice_rows = np.flatnonzero(np.abs(r).sum(axis=1) == 1)
    assert len(lattice_rows) == 24
    np.testing.assert_array_equal(i.numpy()[0], lattice_rows[:min(k, 24)])
    assert (d.numpy() == 1 / np.sqrt(12)).all()


def test_exact_backends_agree_on_float64_and_images():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((23, 2, 3, 4))
    r = np.concatenate([q[:5] + 0.0, rng.standard_normal((70, 2, 3, 4))])  # float64, 5 exact copies
    d_ref, i_ref = brute_knn(q, r, 4)
    for backend in ("torch", "faiss"):
        d, i = nearest_neighbors(q, r, k=4, backend=backend, block_size=16)
        np.testing.assert_array_equal(i.numpy(), i_ref)
        np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-12, atol=0)
    assert (d[:5, 0] == 0).all()


def test_memmapped_reference_gives_the_in_ram_result(tmp_path):
    rng = np.random.default_rng(1)
    r = rng.random((500, 20), dtype=np.float32)
    q = np.concatenate([r[[3, 499]], rng.random((40, 20), dtype=np.float32)])
    path = tmp_path / "ref.npy"
    np.save(path, r)
    d0, i0 = nearest_neighbors(q, r, k=5)
    for ref in (np.load(path, mmap_mode="r"), path, str(path)):
        for backend in ("faiss", "torch"):
            d, i = nearest_neighbors(q, ref, k=5, block_size=64, backend=backend)
            np.testing.assert_array_equal(i.numpy(), i0.numpy())
            np.testing.assert_array_equal(d.numpy(), d0.numpy())
    idx = NeighborIndex(np.load(path, mmap_mode="r"), block_size=64)
    assert isinstance(idx.reference, np.memmap) or isinstance(idx.reference.base, np.memmap)
    assert d0[0, 0].item() == 0 and i0[1, 0].item() == 499


def test_auto_falls_back_to_torch_without_faiss(monkeypatch):
    q, r = tied_set(1)
    d0, i0 = nearest_neighbors(q, r, k=3, backend="faiss")
    monkeypatch.setattr(nb, "faiss_available", lambda: False)
    assert NeighborIndex(r).exact_backend() == "torch"
    d, i = nearest_neighbors(q, r, k=3)
    np.testing.assert_array_equal(i.numpy(), i0.numpy())
    np.testing.assert_array_equal(d.numpy(), d0.numpy())


def clustered(seed: int = 0, n: int = 4000, dim: int = 32, centres: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 4, (centres, dim))
    lab = rng.integers(0, centres, n + 300)
    x = (c[lab] + rng.standard_normal((n + 300, dim))).astype(np.float32)
    return x[:n], x[n:]


@pytest.mark.parametrize("backend,opts", [("faiss-ivf", {}), ("faiss-hnsw", {}), ("faiss-ivf", {"nlist": 40, "nprobe": 1})])
def test_approximate_backends_recall(backend, opts):
    ref, q = clustered()
    index = NeighborIndex(ref, backend=backend, **opts)
    assert not index.exact
    recall1 = approximate_recall(index, q, k=1)
    recall10 = approximate_recall(index, q, k=10, n_queries=100)
    if opts.get("nprobe") == 1:
        # One cell of 40 visited: recall drops below 1, still a valid fraction.
        assert 0.2 < recall10 < 1.0
        return
    assert recall1 > 0.9 and recall10 > 0.9
    # Returned distances are exact (re-ranked) and ascending; indices valid.
    d, i = index.search(q[:50], 10)
    d_ref = np.sqrt(((q[:50, None, :].astype(np.float64) - ref[i.numpy()].astype(np.float64)) ** 2).mean(axis=2))
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-12)
    assert (np.diff(d.numpy(), axis=1) >= 0).all()


def test_exact_index_recall_is_one_and_recall_counts_misses():
    ref, q = clustered(2, n=600, dim=8)
    assert approximate_recall(NeighborIndex(ref, backend="torch"), q, k=5) == 1.0

    class Shifted(NeighborIndex):  # returns neighbours 2..k+1: exactly 1 of the true k is missed per query
        def search(self, queries, k=2):
            d, i = super().search(queries, k + 1)
            return d[:, 1:], i[:, 1:]

    q_far = q + 100.0  # no ties among the sorted distances in practice
    assert approximate_recall(Shifted(ref, backend="torch"), q_far, k=4) == pytest.approx(0.75)


def test_bad_inputs(tmp_path):
    r = np.zeros((10, 4), np.float32)
    with pytest.raises(MemgeoError, match="unknown kNN backend"):
        nearest_neighbors(r, r, backend="annoy")
    with pytest.raises(MemgeoError, match="not a .npy"):
        nearest_neighbors(r, tmp_path / "ref.txt")
    with pytest.raises(MemgeoError, match="does not exist"):
        nearest_neighbors(r, tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(MemgeoError, match="cannot read"):
        nearest_neighbors(r, tmp_path / "bad.npy")
    big = np.zeros((100, 4), np.float32)
    big[73, 2] = np.nan
    np.save(tmp_path / "nan.npy", big)
    for backend in ("faiss", "torch"):
        with pytest.raises(MemgeoError, match="row 73"):
            nearest_neighbors(r, tmp_path / "nan.npy", block_size=16, backend=backend)
    with pytest.raises(MemgeoError, match="row 73"):
        NeighborIndex(tmp_path / "nan.npy", backend="faiss-hnsw", block_size=16)
    with pytest.raises(MemgeoError, match="dimension"):
        nearest_neighbors(np.zeros((2, 5)), r)
    with pytest.raises(MemgeoError, match="k="):
        nearest_neighbors(r, r, k=11, backend="faiss")
    with pytest.raises(MemgeoError, match="nprobe"):
        NeighborIndex(np.random.rand(100, 4), backend="faiss-ivf", nprobe=0)
    with pytest.raises(MemgeoError, match="not a NeighborIndex"):
        approximate_recall(object(), r)  # type: ignore[arg-type]


def test_empty_queries_and_torch_tensor_reference():
    r = torch.randn(30, 5)
    d, i = nearest_neighbors(torch.zeros((0, 5)), r, k=3, backend="faiss")
    assert d.shape == (0, 3) and i.shape == (0, 3)
    d, i = nearest_neighbors(r[:4], r, k=1, backend="faiss")
    assert (d == 0).all() and i.flatten().tolist() == [0, 1, 2, 3]
