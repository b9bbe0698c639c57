"""The cached score-Jacobian operator: same numbers as uncached products, fewer forwards, batched probes.

Ground truths: the dense Jacobian by torch.autograd.functional.jacobian row by row (independent of
torch.func), the uncached operator, and a CountingModel that counts network forwards.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.geometry import ScoreJacobianOperator, sharpness_spectrum
from memgeo.geometry import jacobian as jacobian_module
from memgeo.geometry.sharpness import LANCZOS_MIN_DIM, resolve_spectrum_method
from memgeo.models import MLPConfig, MLPEps
from memgeo.models.counting import CountingModel

F64 = torch.float64
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("single_thread")]


def _mlp(dim: int = 6, classes: int | None = 3) -> MLPEps:
    torch.manual_seed(0)
    model = MLPEps(MLPConfig(data_shape=(dim,), hidden=16, depth=2, time_dim=8, num_classes=classes)).to(F64).eval()
    with torch.no_grad():  # random but not tiny weights: J far from symmetric
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=F64))
    return model


def _setup(b: int = 4, dim: int = 6):
    model = _mlp(dim)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, dim, generator=g, dtype=F64)
    t = torch.linspace(0.1, 0.9, b, dtype=F64)
    cond = torch.arange(b) % 3
    jac = torch.stack([torch.autograd.functional.jacobian(
        lambda xi, i=i: model.score(xi[None], t[i:i + 1], cond[i:i + 1])[0], x[i]) for i in range(b)])
    return model, x, t, cond, jac


@pytest.mark.parametrize("mode", ["jvp", "vjp", "linearize"])
def test_cached_products_equal_dense_and_uncached(mode):
    model, x, t, cond, jac = _setup()
    g = torch.Generator().manual_seed(2)
    v, w = torch.randn(2, *x.shape, generator=g, dtype=F64)
    jv, jtw = torch.einsum("bij,bj->bi", jac, v), torch.einsum("bji,bj->bi", jac, w)
    cached = ScoreJacobianOperator(model, x, t, cond, mode=mode)
    plain = ScoreJacobianOperator(model, x, t, cond, mode="vjp" if mode == "linearize" else mode, cache=False)
    for _ in range(2):  # the second round reuses the cached graphs (an uncached linearize: ~1 s per product)
        for op in (cached, plain):
            torch.testing.assert_close(op.matvec(v), jv, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(op.rmatvec(w), jtw, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(op.sym_matvec(v), 0.5 * (jv + torch.einsum("bji,bj->bi", jac, v)),
                                       rtol=1e-10, atol=1e-10)
    assert cached.n_matvecs == plain.n_matvecs == 2 * 4
    with torch.no_grad():
        torch.testing.assert_close(cached.score(), model.score(x, t, cond))


def test_forward_count_cached_vs_uncached():
    model, x, t, cond, _ = _setup()
    v = torch.ones_like(x)
    counted = CountingModel(model)
    op = ScoreJacobianOperator(counted, x, t, cond, mode="vjp")
    s = op.score()  # one forward, kept with its graph
    for _ in range(5):
        op.rmatvec(v)
        op.matvec(v)
    op.sym_matvec(v)
    assert counted.calls == op.n_forwards == 1 and op.n_matvecs == 12
    torch.testing.assert_close(s, model.score(x, t, cond).detach())
    counted.calls = 0
    plain = ScoreJacobianOperator(counted, x, t, cond, mode="vjp", cache=False)
    for _ in range(5):
        plain.rmatvec(v)
    assert counted.calls == plain.n_forwards == 5
    counted.calls = 0
    fwd = ScoreJacobianOperator(counted, x, t, cond, mode="jvp")
    fwd.matvec(v)
    fwd.matvec(v)
    fwd.rmatvec(v)
    fwd.rmatvec(v)
    assert counted.calls == fwd.n_forwards == 3  # forward mode recomputes the primal; the pullback is cached


@pytest.mark.parametrize("mode", ["jvp", "vjp", "linearize"])
def test_probe_stacks_share_one_graph(mode):
    model, x, t, cond, jac = _setup()
    vs = torch.randn(7, *x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    counted = CountingModel(model)
    op = ScoreJacobianOperator(counted, x, t, cond, mode=mode)
    jv = op.matvec(vs)
    jtw = op.rmatvec(vs)
    assert jv.shape == jtw.shape == (7, 4, 6) and op.n_matvecs == 14
    torch.testing.assert_close(jv, torch.einsum("bij,pbj->pbi", jac, vs), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jtw, torch.einsum("bji,pbj->pbi", jac, vs), rtol=1e-10, atol=1e-10)
    # jvp: one primal per call; linearize: its primal and traced jvp, then the pullback for J^T w
    assert counted.calls == op.n_forwards == {"jvp": 2, "vjp": 1, "linearize": 3}[mode]


def test_probe_stack_falls_back_to_a_loop_without_vmap(monkeypatch):
    model, x, t, cond, jac = _setup()
    vs = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    op = ScoreJacobianOperator(model, x, t, cond, mode="vjp")
    op.rmatvec(vs[0])  # build the graph first

    def no_vmap(*a, **k):
        raise RuntimeError("vmap: no batching rule (simulated)")

    monkeypatch.setattr(jacobian_module, "vmap", no_vmap)
    torch.testing.assert_close(op.rmatvec(vs), torch.einsum("bji,pbj->pbi", jac, vs), rtol=1e-10, atol=1e-10)


def test_close_and_drop_free_the_graph():
    model, x, t, cond, _ = _setup()
    v = torch.ones_like(x)
    counted = CountingModel(model)
    with ScoreJacobianOperator(counted, x, t, cond, mode="vjp") as op:
        op.matvec(v)
        ref = weakref.ref(op._pullback)
        ref_g = weakref.ref(op._pull_g)
    gc.collect()
    assert ref() is None and ref_g() is None  # freed at the end of the with block
    first = op.rmatvec(v)  # still usable: rebuilds on demand
    assert op.n_forwards == 2
    ref = weakref.ref(op._pullback)
    del op
    gc.collect()
    assert ref() is None  # and when the operator is dropped
    torch.testing.assert_close(first, ScoreJacobianOperator(model, x, t, cond, cache=False).rmatvec(v))


def test_bad_vector_stacks_raise():
    model, x, t, cond, _ = _setup()
    op = ScoreJacobianOperator(model, x, t, cond)
    with pytest.raises(MemgeoError, match="vector batch"):
        op.matvec(torch.ones(2, 3, 4, 6, dtype=F64))
    with pytest.raises(MemgeoError, match="vector batch"):
        op.rmatvec(torch.ones(2, 5, 6, dtype=F64))
    with pytest.raises(MemgeoError, match="mode"):
        ScoreJacobianOperator(model, x, t, cond, mode="forward")


# ============================================================================ sharpness: dense or Lanczos


def test_sharpness_lanczos_matches_dense_extremes():
    model = _mlp(dim=40, classes=None)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(5), dtype=F64)
    full = sharpness_spectrum(model, x, 0.3)
    assert full.method == "dense" and full.complete and full.eigenvalues_sigma2.shape == (3, 40)
    for which, ref in (("smallest", full.eigenvalues_sigma2[:, :4]), ("largest", full.eigenvalues_sigma2[:, -4:])):
        lz = sharpness_spectrum(model, x, 0.3, k=4, which=which, method="lanczos", tol=1e-8)
        assert lz.method == "lanczos" and not lz.complete and lz.eigenvalues_sigma2.shape == (3, 4)
        radius = full.eigenvalues_sigma2.abs().amax(1, keepdim=True)
        assert float(((lz.eigenvalues_sigma2 - ref).abs() / radius).max()) < 1e-6
        assert bool(torch.isnan(lz.asymmetry).all()) and 0 < lz.n_matvecs <= 40
        dense_k = sharpness_spectrum(model, x, 0.3, k=4, which=which, method="dense")
        torch.testing.assert_close(dense_k.eigenvalues_sigma2, ref)
        assert not dense_k.complete
    with pytest.raises(MemgeoError, match="whole spectrum"):
        _ = lz.sharpness
    assert set(lz.to_records()[0]) == {"t", "sigma", "eigenvalues_sigma2", "method"}


def test_spectrum_auto_rule():
    assert resolve_spectrum_method("auto", 4096, None) == "dense"  # all eigenvalues: always dense
    assert resolve_spectrum_method("auto", LANCZOS_MIN_DIM - 1, 5) == "dense"
    assert resolve_spectrum_method("auto", LANCZOS_MIN_DIM, 5) == "lanczos"
    assert resolve_spectrum_method("dense", 4096, 5) == "dense"
    with pytest.raises(MemgeoError, match="Lanczos"):
        resolve_spectrum_method("lanczos", 64, None)
    with pytest.raises(MemgeoError, match="spectrum method"):
        resolve_spectrum_method("arpack", 64, 5)


# ============================================================================ sub-batch operators (active-set Lanczos)


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
def test_sub_operator_equals_rows_of_the_parent_and_counts_into_it(mode):
    model, x, t, cond, jac = _setup(b=5)
    counted = CountingModel(model)
    op = ScoreJacobianOperator(counted, x, t, cond, mode=mode)
    v = torch.randn(5, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    op.sym_matvec(v)
    before_m, before_f, calls = op.n_matvecs, op.n_forwards, counted.calls
    idx = torch.tensor([1, 3, 4])
    sub = op.sub(idx)
    sym = 0.5 * (jac + jac.transpose(1, 2))
    torch.testing.assert_close(sub.sym_matvec(v[idx]), torch.einsum("bij,bj->bi", sym[idx], v[idx]),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.restrict(idx)(v[idx]), torch.einsum("bij,bj->bi", sym[idx], v[idx]),
                               rtol=1e-10, atol=1e-10)
    # the sub-operators' products and forwards show up in the parent's counters
    assert sub.n_matvecs == 2 and op.n_matvecs == before_m + 4
    assert op.n_forwards - before_f == counted.calls - calls >= 2
    assert sub.n_forwards == (1 if mode == "vjp" else 2)  # vjp: one cached graph; jvp: one forward per J v too
    with pytest.raises(MemgeoError, match="out of range"):
        op.sub(torch.tensor([0, 5]))
    with pytest.raises(MemgeoError, match="indices"):
        op.sub(torch.tensor([], dtype=torch.long))


def test_sharpness_style_lanczos_with_restrict_matches_dense():
    model = _mlp(dim=40, classes=3)
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(7), dtype=F64)
    cond = torch.arange(6) % 3
    t = torch.full((6,), 0.3, dtype=F64)
    jac = torch.stack([torch.autograd.functional.jacobian(
        lambda xi, i=i: model.score(xi[None], t[i:i + 1], cond[i:i + 1])[0], x[i]) for i in range(6)])
    ref = torch.linalg.eigvalsh(0.5 * (jac + jac.transpose(1, 2)))[:, :3]
    seen = []
    op = ScoreJacobianOperator(model, x, t, cond, mode="vjp")

    def restrict(idx):
        seen.append(idx.tolist())
        return op.restrict(idx)

    from memgeo.geometry import lanczos_extreme
    res = lanczos_extreme(op.sym_matvec, 6, 40, k=3, n_iter=40, which="smallest", tol=1e-8, dtype=F64,
                          generator=torch.Generator().manual_seed(0), bound="gap", restrict=restrict)
    radius = ref.abs().amax(1, keepdim=True)
    assert float(((res.eigenvalues - ref).abs() / radius).max()) < 1e-6
    assert seen and op.n_forwards == 1 + len(seen)  # one graph for the batch, one per restriction
    for idx in seen:
        assert bool((res.n_steps[idx] > res.n_steps.min()).all())
