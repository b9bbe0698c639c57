"""Copy metrics that scale: the searches restricted to the training rows a metric needs give the same
numbers as the full train -> train search; hashed de-duplication equals numpy's exact one; memory maps
are shared, not copied; the widened pre-selection of the exact search keeps it exact; the max_train
subsamples of PRDC / FLD / C_T are seeded, stated, and equal to the full computation below the cap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memgeo.data import neighbors as nb
from memgeo.data.neighbors import as_points, nearest_neighbors, unique_inverse, unique_rows
from memgeo.memorization.copy_metrics import COPY_METRICS, CopyData, compute_copy_metrics


def mixture(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, size=(10, dim))
    return (centres[rng.integers(0, 10, n)] + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def triple() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train = mixture(600, 16, 0)
    train[50] = train[7]  # a duplicated row
    train[51] = -0.0 * train[7] + train[7]  # equal values, another object
    test = mixture(200, 16, 1)
    gen = np.concatenate([train[:30], mixture(170, 16, 2)])  # 30 exact copies
    return train, test, gen


def brute_nn_other(x: np.ndarray) -> np.ndarray:
    """Nearest other distinct row of each row, normalized l2, from all pairwise differences."""
    x64 = x.astype(np.float64)
    d = np.sqrt(((x64[:, None, :] - x64[None, :, :]) ** 2).mean(axis=2))
    d[d == 0] = np.inf  # itself and exact duplicates
    return d.min(axis=1)


def test_nn_other_of_some_rows_equals_the_full_search_and_brute_force(triple):
    train, test, gen = triple
    data = CopyData(train, test, gen, n_boot=0)
    rows = np.array([3, 7, 50, 51, 599, 3])
    d_part, i_part = data.train_nn_other(rows, 2)
    full = CopyData(train, test, gen, n_boot=0)
    d_full, i_full = full.train_train_nn(2)
    np.testing.assert_array_equal(d_part, d_full[rows])
    np.testing.assert_array_equal(i_part, i_full[rows])
    np.testing.assert_allclose(d_part[:, 0], brute_nn_other(train)[rows], rtol=1e-12)
    # Only the distinct rows asked for were searched.
    store = data._train_store[("nn_other", "l2")]
    assert int(store["done"].sum()) == len(np.unique(data.train_inverse[rows]))
    assert ("knn", "train", "train", True, "l2") not in data._cache


def test_authenticity_and_dcr_unchanged_without_the_n_by_n_search(triple):
    train, test, gen = triple
    fast = compute_copy_metrics(train, test, gen, ["authenticity", "dcr"], n_boot=50)
    # Reference: the full train -> train search cached first, which both metrics then read.
    data = CopyData(train, test, gen, n_boot=50)
    data.train_train_nn(1)
    for name in ("authenticity", "dcr"):
        ref = COPY_METRICS.build(name).evaluate(data)
        got = fast[name]
        assert got.value == ref.value and got.baseline == ref.baseline
        np.testing.assert_array_equal(got.per_sample, ref.per_sample)
        assert (got.ci_low, got.ci_high) == (ref.ci_low, ref.ci_high)
    # Exact copies are never authentic: 30 of 200 generations are copies.
    assert fast["authenticity"].value <= 170 / 200
    assert not fast["authenticity"].per_sample[:30].any()
    assert fast["dcr"].extra["spacing_rows"] == 598 and not fast["dcr"].extra["spacing_subsampled"]


def test_dcr_spacing_subsample_is_seeded_and_close_and_leaves_verdicts_unchanged(triple):
    train, test, gen = triple
    full = compute_copy_metrics(train, test, gen, ["dcr"], n_boot=0)["dcr"]
    sub = compute_copy_metrics(train, test, gen, ["dcr"], n_boot=0, options={"dcr": {"spacing_rows": 200}})["dcr"]
    again = compute_copy_metrics(train, test, gen, ["dcr"], n_boot=0, options={"dcr": {"spacing_rows": 200}})["dcr"]
    assert sub.extra["spacing_subsampled"] and sub.extra["spacing_rows"] == 200
    assert sub.extra["train_spacing"] == again.extra["train_spacing"]
    # The verdicts do not depend on the spacing; the subsampled median is an estimate of the full one.
    np.testing.assert_array_equal(sub.flagged, full.flagged)
    assert sub.value == full.value and sub.baseline == full.baseline
    assert abs(sub.extra["train_spacing"] / full.extra["train_spacing"] - 1) < 0.1
    # ... and equals the median over exactly the drawn rows, computed by brute force.
    data = CopyData(train, test, gen, n_boot=0)
    rows = data.train_first[data.train_subsample(200, "spacing")]
    assert sub.extra["train_spacing"] == pytest.approx(float(np.median(brute_nn_other(train)[rows])), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hashed_unique_equals_numpy_unique(dtype):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((200, 9)).astype(dtype)
    x = base[rng.integers(0, 200, 700)]
    x[5] = 0.0
    x[6] = -0.0  # numerically equal to row 5
    _, first, inv = np.unique(x, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    # Numbering by first appearance, as unique_rows documents.
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    np.testing.assert_array_equal(unique_inverse(x), rank[inv])
    uniq, inverse = unique_rows(x)
    np.testing.assert_array_equal(uniq[inverse], x)
    assert uniq.shape[0] == first.size and inverse[6] == inverse[5]


def test_hash_collisions_are_resolved_exactly(monkeypatch):
    # Force every row into one hash group: the exact check must still separate distinct rows.
    x = np.array([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]], dtype=np.float32)

    class Zero:
        def integers(self, lo, hi, size, dtype):
            return np.zeros(size, dtype=dtype)

    monkeypatch.setattr(nb.np.random, "default_rng", lambda seed: Zero())
    np.testing.assert_array_equal(unique_inverse(x), [0, 1, 0, 2, 1])


def test_memory_map_is_shared_not_copied(tmp_path):
    x = mixture(300, 8, 4)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    t = as_points(mm, "x")
    assert isinstance(nb._copy_on_write_view(mm), np.memmap)  # re-opened copy-on-write, not copied
    np.testing.assert_array_equal(t.numpy(), x)
    sub = as_points(mm[100:200], "x")  # a view of the map: the right rows
    np.testing.assert_array_equal(sub.numpy(), x[100:200])
    t[0, 0] = 123.0  # copy-on-write: the file is not changed
    assert np.load(path)[0, 0] == x[0, 0]
    # CopyData keeps the distinct rows as the training tensor itself when nothing repeats.
    data = CopyData(mm, x[:20], x[20:40], n_boot=0)
    assert data.train_unique.data_ptr() == data.train.data_ptr()


def test_widened_preselection_stays_exact_on_near_ties():
    # Many reference points at nearly the same distance (points on a sphere around the queries):
    # the first k + 8 candidates fail the rounding guard and are widened; results equal brute force.
    rng = np.random.default_rng(5)
    dim = 64
    q = rng.standard_normal((20, dim)).astype(np.float32)
    u = rng.standard_normal((3000, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = (q[rng.integers(0, 20, 3000)] + 10.0 * u * (1 + 1e-7 * rng.standard_normal((3000, 1)))).astype(np.float32)
    q64, r64 = q.astype(np.float64), r.astype(np.float64)
    full = np.sqrt(((q64[:, None, :] - r64[None, :, :]) ** 2).mean(axis=2))
    i_ref = np.argsort(full, axis=1, kind="stable")[:, :50]
    calls = []
    real = nb._rerank

    def spy(*a, **kw):
        out = real(*a, **kw)
        calls.append(int(out[2].numel()))
        return out

    nb._rerank = spy
    try:
        for backend in ("faiss", "torch"):
            if backend == "faiss" and not nb.faiss_available():
                continue
            d, i = nearest_neighbors(q, r, k=50, backend=backend, block_size=1000)
            np.testing.assert_array_equal(i.numpy(), i_ref)
            np.testing.assert_allclose(d.numpy(), np.take_along_axis(full, i_ref, 1), rtol=1e-12)
    finally:
        nb._rerank = real
    assert max(calls) > 0  # the guard did fire: the widening path was exercised


def test_prdc_fld_ct_max_train(triple):
    train, test, gen = triple
    names = ["precision", "density", "coverage", "fld", "ct"]
    full = compute_copy_metrics(train, test, gen, names, n_boot=0, baseline=False)
    capped = compute_copy_metrics(train, test, gen, names, n_boot=0, baseline=False,
                                  options={"precision": {"max_train": 5000}, "density": {"max_train": 5000},
                                           "coverage": {"max_train": 5000}, "fld": {"max_train": 5000},
                                           "ct": {"max_train": 5000}})
    for n in names:  # below the cap: identical
        assert capped[n].value == full[n].value, n
    opts = {"precision": {"max_train": 300}, "fld": {"max_train": 300, "max_iter": 20}, "ct": {"max_train": 300}}
    sub = compute_copy_metrics(train, test, gen, list(opts), n_boot=0, baseline=True, options=opts)
    assert sub["precision"].extra["train_subsampled"] and sub["precision"].extra["n_real"] == 300
    assert sub["fld"].extra["train_subsampled"] and sub["fld"].extra["n_train_used"] == 300
    assert sub["ct"].extra["partition_subsampled"]
    assert sum(c["n_train"] for c in sub["ct"].extra["cells"]) == 600  # every training row still counted
    # PRDC on the subsample equals PRDC computed directly on those rows.
    data = CopyData(train, test, gen, n_boot=0)
    rows = data.train_subsample(300, "prdc")
    direct = compute_copy_metrics(data.train_unique[torch.from_numpy(rows)].numpy(), test, gen, ["precision"],
                                  n_boot=0, baseline=False)["precision"]
    assert sub["precision"].value == direct.value
    # FLD's O_j training index points into the full training set.
    assert sub["fld"].nearest_index.max() < 600
    np.testing.assert_array_equal(sub["fld"].nearest_index[:30] >= 0, True)
