"""Model-free LID_data (local PCA, MLE, TwoNN through scikit-dimension) with out-of-sample queries."""

from __future__ import annotations

import numpy as np
import pytest
import skdim
import torch

from memgeo.errors import MemgeoError
from memgeo.geometry.lid.base import LID_ESTIMATORS
from memgeo.geometry.lid.modelfree import (
    MLE,
    MODEL_FREE_ESTIMATORS,
    KNNIndex,
    LocalPCA,
    TwoNN,
)

AMBIENT = 20


def flat_data(d: int, n: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """n reference and m fresh query points, uniform on the unit cube of a random d-dim affine subspace of R^20."""
    g = np.random.default_rng(seed)
    basis = np.linalg.qr(g.standard_normal((AMBIENT, d)))[0]  # (20, d), orthonormal columns
    offset = g.standard_normal(AMBIENT)
    ref = g.uniform(0, 1, (n, d)) @ basis.T + offset
    queries = g.uniform(0, 1, (m, d)) @ basis.T + offset
    return torch.from_numpy(ref), torch.from_numpy(queries), basis


@pytest.fixture(scope="module", params=[2, 5])
def fitted(request):
    d = request.param
    ref, queries, basis = flat_data(d, 2000, 500, seed=d)
    index = KNNIndex(ref)
    ests = {name: cls().fit(ref, index=index) for name, cls in MODEL_FREE_ESTIMATORS.items()}
    return d, ref, queries, basis, index, ests


# Measured means over 500 fresh queries (N = 2000, default k; queries over the whole cube, boundary
# included): d=2: lpca 2.000, mle 1.993, twonn 2.023; d=5: lpca 5.000, mle 4.790, twonn 4.682.
@pytest.mark.parametrize("name", ["lpca", "mle", "twonn"])
def test_out_of_sample_mean_near_d(fitted, name):
    d, ref, queries, _, _, ests = fitted
    assert torch.cdist(queries, ref).min() > 1e-6  # genuinely out of sample
    est = ests[name].estimate(queries)
    assert est.shape == (500,) and est.dtype == torch.float64 and torch.isfinite(est).all()
    assert abs(float(est.mean()) - d) < 0.15 * d, (name, float(est.mean()))
    if name == "lpca":  # noise-free flat patches: Fukunaga-Olsen is exact
        assert torch.equal(est, torch.full_like(est, float(d)))


def test_shared_index_searched_once():
    ref, queries, _ = flat_data(3, 500, 100, seed=6)
    index = KNNIndex(ref)
    # smallest k first: fit reserved k_max = 50, so the first search already serves the others
    ests = [MLE(k=20).fit(index=index), LocalPCA(k=50).fit(ref, index=index), TwoNN(k=30).fit(index=index)]
    assert index.k_max == 50
    for e in ests:
        e.estimate(queries)
    e.estimate(queries, exclude_self=True)  # in-sample mode reuses the same search too
    assert index.n_queries == 1
    ests[0].estimate(queries[:10])  # a new batch is a new search
    assert index.n_queries == 2
    q = queries.clone()
    ests[0].estimate(q)
    q[0] += 1.0  # in-place edit of a tensor invalidates the cache
    ests[0].estimate(q)
    assert index.n_queries == 4
    # a plain query() never uses the cache and agrees with neighbors()
    d1, i1 = index.query(q, 7)
    d2, i2 = index.neighbors(q, 7)
    assert index.n_queries == 5 and torch.equal(i1, i2) and torch.allclose(d1, d2)


def test_duplicated_point_gives_zero():
    ref, _, _ = flat_data(3, 2000, 0, seed=1)
    ref = ref.clone()
    atom = ref[7].clone()
    ref[100:150] = atom  # the point is now in the reference 51 times (row 7 and rows 100..149)
    index = KNNIndex(ref)
    ests = [cls().fit(ref, index=index) for cls in MODEL_FREE_ESTIMATORS.values()]
    assert max(e.k for e in ests) <= 50
    q = torch.stack([atom.clone(), atom + 1e-3 * torch.randn(AMBIENT, dtype=torch.float64)])
    for e in ests:
        assert e.estimate(q).tolist() == [0.0, 0.0], e.name  # on the atom and next to it
    # in-sample: dropping the query's own copy still leaves >= 50 identical neighbours
    for e in ests:
        assert e.estimate(ref[100:103], exclude_self=True).tolist() == [0.0] * 3, e.name


def test_exact_copy_and_exclude_self():
    ref, queries, _ = flat_data(2, 500, 5, seed=2)
    index = KNNIndex(ref)
    d0, i0 = index.query(ref[:5], 4)
    assert torch.equal(i0[:, 0], torch.arange(5)) and (d0[:, 0] == 0).all()
    d1, i1 = index.query(ref[:5], 4, exclude_self=True)
    assert torch.equal(i1[:, :3], i0[:, 1:]) and (d1 > 0).all()
    # off-reference queries: exclude_self changes nothing
    a, b = index.query(queries, 4), index.query(queries, 4, exclude_self=True)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    # Euclidean (not normalized) distances
    assert torch.allclose(a[0][:, 0], torch.cdist(queries, ref).min(1).values)
    # a query equal to a (single) reference row: MLE sees R_1 = 0 -> 0, the patch estimators see d
    mle, lpca = MLE().fit(index=index), LocalPCA(k=20).fit(index=index)
    assert (mle.estimate(ref[:5]) == 0).all()
    assert (mle.estimate(ref[:5], exclude_self=True) > 0.5).all()
    assert (lpca.estimate(ref[:5]) == 2).all()


@pytest.mark.parametrize("name", ["lpca", "mle", "twonn"])
def test_in_sample_matches_skdim_pointwise(name):
    """exclude_self=True on reference rows reproduces scikit-dimension's own pointwise estimates."""
    ref, _, _ = flat_data(3, 80, 0, seed=3)  # small: skdim fits one kNN model per point
    ref = ref + 0.01 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k, x = 20, ref.numpy()
    ours = MODEL_FREE_ESTIMATORS[name](k=k).fit(ref).estimate(ref, exclude_self=True).numpy()
    if name == "lpca":
        theirs = skdim.id.lPCA().fit_pw(x, n_neighbors=k).dimension_pw_
    elif name == "mle":
        theirs = skdim.id.MLE().fit(x, n_neighbors=k).dimension_pw_
    else:
        theirs = skdim.id.TwoNN().fit_pw(x, n_neighbors=k).dimension_pw_
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


def test_off_manifold_query_is_finite(fitted):
    d, _, queries, basis, _, ests = fitted
    normal = np.linalg.qr(np.hstack([basis, np.eye(AMBIENT)]))[0][:, d]  # orthogonal to the subspace
    far = queries[:20] + torch.from_numpy(3.0 * normal)
    for e in ests.values():
        est = e.estimate(far)
        assert torch.isfinite(est).all() and (est > 0).all(), e.name
    assert (ests["lpca"].estimate(far) == d).all()  # the patch is still on the subspace


def test_inputs_shapes_and_registry():
    ref, queries, _ = flat_data(2, 400, 3, seed=4)
    images = ref.float().reshape(400, 1, 4, 5)  # (N, C, H, W) is flattened
    est = MLE().fit(images.numpy())
    assert est.estimate(queries.float().reshape(3, 1, 4, 5)).shape == (3,)
    assert est.estimate(queries[:1].float()).shape == (1,)  # a single query
    assert est.estimate(queries[:0].float()).shape == (0,)
    assert LocalPCA(version="ratio").fit(ref).estimate(queries).tolist() == [2.0] * 3
    for name, cls in MODEL_FREE_ESTIMATORS.items():
        assert cls.name == name and cls.needs_model is False and LID_ESTIMATORS[name] is cls
    assert LocalPCA(k=30, threshold=0.1).params() == {"k": 30, "threshold": 0.1, "version": "FO"}


def test_errors():
    ref, queries, _ = flat_data(2, 100, 3, seed=5)
    bad = ref.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(MemgeoError, match="NaN"):
        KNNIndex(bad)
    with pytest.raises(MemgeoError, match="NaN"):
        MLE().fit(bad)
    est = MLE().fit(ref)
    qbad = queries.clone()
    qbad[0, 0] = float("nan")
    with pytest.raises(MemgeoError, match="NaN"):
        est.estimate(qbad)
    with pytest.raises(MemgeoError, match="dimension"):
        est.estimate(queries[:, :5])
    with pytest.raises(MemgeoError, match="k=100"):
        LocalPCA(k=100).fit(ref)  # k >= N
    with pytest.raises(MemgeoError, match="k=100"):
        KNNIndex(ref).query(queries, 100)
    with pytest.raises(MemgeoError, match="before fit"):
        TwoNN().estimate(queries)
    with pytest.raises(MemgeoError):
        TwoNN(k=2)
    with pytest.raises(MemgeoError):
        LocalPCA(threshold=1.5)
    with pytest.raises(MemgeoError):
        LocalPCA(version="maxgap")
    with pytest.raises(MemgeoError):
        TwoNN(method="huber")
    with pytest.raises(MemgeoError):
        MLE(k=2.5)
    with pytest.raises(MemgeoError, match="other points"):
        MLE().fit(ref[:50], index=KNNIndex(ref))
    with pytest.raises(MemgeoError, match="neither"):
        MLE().fit()
    with pytest.raises(MemgeoError, match="at least 2 features"):
        MLE().fit(ref[:, :1])
