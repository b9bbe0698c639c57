"""Tests for memgeo.geometry.generator: generator Jacobians, singular values, LID_model, pushforward density.

Ground truths: a linear generator G(z) = A z + b (Jacobian A, NumPy's SVD and rank of A, the Gaussian
N(b, A A^T) on col(A) evaluated by scipy in an orthonormal basis of the subspace); the map
z -> (z, sin z) with its analytic Jacobian [I; diag(cos z)] and volume prod sqrt(1 + cos^2 z_i);
MLPs behind an exact rank-r bottleneck for the rank threshold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from memgeo.errors import MemgeoError
from memgeo.geometry.generator import (
    LID_RTOL,
    DecoderJacobianOperator,
    decoder_jacobian,
    generator_lid,
    generator_singular_values,
    pushforward_log_density,
    standard_normal_log_prob,
)

F64 = torch.float64
DATA_SHAPE = (3, 4)  # D = 12, exercised as a non-flat data shape

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("single_thread")]


def _matrix(big_d: int, d: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(big_d, rank, generator=g, dtype=F64) @ torch.randn(rank, d, generator=g, dtype=F64)


def _linear(a: torch.Tensor, b: torch.Tensor, shape: tuple[int, ...] | None = None):
    def decode(z: torch.Tensor) -> torch.Tensor:
        x = z @ a.T + b
        return x.reshape((z.shape[0],) + shape) if shape else x

    return decode


def _latents(n: int, d: int, seed: int = 1, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _sin_map(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, torch.sin(z)], dim=1)


# --- dense and matrix-free Jacobians -----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["auto", "fwd", "rev"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_dense_jacobian_of_linear_generator_is_a(mode, chunk):
    a = _matrix(12, 5, 2)
    decode = _linear(a, torch.arange(12, dtype=F64), DATA_SHAPE)
    z = _latents(5, 5)
    jac = decoder_jacobian(decode, z, chunk_size=chunk, mode=mode)
    assert jac.shape == (5, 12, 5)
    torch.testing.assert_close(jac, a.expand(5, 12, 5), rtol=0, atol=1e-12)


def test_dense_jacobian_of_nonlinear_map_is_analytic():
    z = _latents(6, 4)
    expected = torch.cat([torch.eye(4, dtype=F64).expand(6, 4, 4), torch.diag_embed(torch.cos(z))], dim=1)
    for mode in ("fwd", "rev"):
        torch.testing.assert_close(decoder_jacobian(_sin_map, z, mode=mode), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
def test_operator_products_of_linear_generator(mode):
    a = _matrix(12, 5, 3)
    decode = _linear(a, torch.ones(12, dtype=F64), DATA_SHAPE)
    z = _latents(4, 5)
    op = DecoderJacobianOperator(decode, z, mode=mode)
    assert op.shape == (4, 12, 5)
    v, w = _latents(4, 5, seed=2), _latents(4, 12, seed=3)
    torch.testing.assert_close(op.matvec(v), v @ a.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.rmatvec(w), w @ a, rtol=0, atol=1e-12)
    # data-space vectors may come in the data shape
    torch.testing.assert_close(op.rmatvec(w.reshape(4, *DATA_SHAPE)), w @ a, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.gram_matvec(v), v @ a.T @ a, rtol=0, atol=1e-12)
    assert op.n_matvecs == 5


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
def test_operator_matches_analytic_jacobian_and_adjoint_identity(mode):
    z = _latents(5, 3)
    op = DecoderJacobianOperator(_sin_map, z, mode=mode)
    v, w = _latents(5, 3, seed=4), _latents(5, 6, seed=5)
    jv, jtw = op.matvec(v), op.rmatvec(w)
    cos = torch.cos(z)
    torch.testing.assert_close(jv, torch.cat([v, cos * v], dim=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(jtw, w[:, :3] + cos * w[:, 3:], rtol=0, atol=1e-12)
    # <J v, w> = <v, J^T w> per sample
    torch.testing.assert_close((jv * w).sum(1), (v * jtw).sum(1), rtol=1e-12, atol=1e-12)
    assert op.n_matvecs == 2


# --- singular values and LID_model ---------------------------------------------------------------------
@pytest.mark.parametrize(("big_d", "d", "rank"), [(12, 5, 2), (12, 5, 5), (3, 6, 3), (3, 6, 1)])
def test_singular_values_and_lid_of_linear_generator(big_d, d, rank):
    a = _matrix(big_d, d, rank, seed=big_d + d + rank)
    decode = _linear(a, torch.zeros(big_d, dtype=F64))
    z = _latents(4, d)
    s = generator_singular_values(decode, z)
    ref = np.linalg.svd(a.numpy(), compute_uv=False)
    assert s.shape == (4, min(big_d, d))
    np.testing.assert_allclose(s.numpy(), np.broadcast_to(ref, (4, ref.size)), rtol=1e-10, atol=1e-10)
    assert bool((s[:, :-1] >= s[:, 1:]).all())  # descending
    assert np.linalg.matrix_rank(a.numpy()) == rank
    assert generator_lid(s).tolist() == [rank] * 4
    # the strict round-off rule agrees on an exactly rank-r float64 map
    strict = torch.finfo(F64).eps * max(big_d, d)
    assert generator_lid(s, rtol=strict).tolist() == [rank] * 4


def test_lid_threshold_on_known_rank_nonlinear_map():
    """Smooth float32 MLPs behind an exact rank-r bottleneck: both rank rules find r; the documented margins."""
    torch.manual_seed(0)
    for d, r, big_d, h in [(4, 2, 3, 32), (6, 3, 5, 64), (16, 5, 64, 128)]:
        p = torch.linalg.qr(torch.randn(d, r))[0].T  # (r, d), orthonormal rows: Jacobian rank <= r
        w1, w2 = torch.randn(h, r) / math.sqrt(r), torch.randn(h, h) / math.sqrt(h)
        w3 = torch.randn(big_d, h) / math.sqrt(h)

        def decode(z, p=p, w1=w1, w2=w2, w3=w3):
            return torch.nn.functional.softplus(torch.sin(z @ p.T @ w1.T) @ w2.T) @ w3.T

        s = generator_singular_values(decode, torch.randn(100, d))
        assert s.dtype == torch.float32
        rel = s / s[:, :1]
        assert float(rel[:, r - 1].min()) > 1e-2          # live directions well above 1e-3
        assert float(rel[:, r:].max()) < 1e-6             # round-off well below 1e-3
        assert generator_lid(s).unique().tolist() == [r]
        strict = torch.finfo(torch.float32).eps * max(big_d, d)
        assert generator_lid(s, rtol=strict).unique().tolist() == [r]


def test_lid_default_counts_near_collapsed_directions_as_flat():
    """Directions shrunk to 1e-5 of the strongest: flat for the default rtol, live for the round-off rule."""
    d, r = 5, 2

    def decode(z):
        return torch.cat([torch.sin(z[:, :r]) + 2 * z[:, :r], 1e-5 * z[:, r:], z[:, :1] ** 2], dim=1)

    s = generator_singular_values(decode, _latents(8, d))
    assert LID_RTOL == 1e-3
    assert generator_lid(s).tolist() == [r] * 8
    assert generator_lid(s, rtol=torch.finfo(F64).eps * 6).tolist() == [d] * 8


def test_lid_edge_cases_and_bad_input():
    s = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2e-3, 5e-4]])
    assert generator_lid(s).tolist() == [2, 0, 2]
    assert generator_lid(s, rtol=0.0).tolist() == [2, 0, 3]
    with pytest.raises(MemgeoError, match="rtol"):
        generator_lid(s, rtol=1.5)
    with pytest.raises(MemgeoError, match="negative"):
        generator_lid(-s)
    with pytest.raises(MemgeoError, match="shape"):
        generator_lid(s[0])


# --- pushforward density ----------------------------------------------------------------------------
def test_pushforward_density_of_linear_gaussian_generator():
    """x = A z + b, z ~ N(0, I_d): the density on col(A) is N_d(U^T (x - b); 0, U^T A A^T U)."""
    big_d, d = 12, 4
    a = _matrix(big_d, d, d, seed=7)
    b = torch.linspace(-1, 1, big_d, dtype=F64)
    decode = _linear(a, b, DATA_SHAPE)
    z = _latents(6, d, seed=8)
    got = pushforward_log_density(decode, z)
    # independent reference: orthonormal basis of the column space, Gaussian coordinates in it
    u = np.linalg.svd(a.numpy(), full_matrices=False)[0]  # (D, d)
    x = (z @ a.T + b).numpy()
    y = (x - b.numpy()) @ u
    cov = u.T @ a.numpy() @ a.numpy().T @ u
    ref = multivariate_normal(mean=np.zeros(d), cov=cov).logpdf(y)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)
    # the formula written out: log N_d(z; 0, I) - 1/2 log det(A^T A)
    formula = multivariate_normal(mean=np.zeros(d)).logpdf(z.numpy()) - 0.5 * np.linalg.slogdet(
        a.numpy().T @ a.numpy())[1]
    np.testing.assert_allclose(got.numpy(), formula, rtol=1e-10, atol=1e-10)
    # precomputed singular values give the same
    s = generator_singular_values(decode, z)
    torch.testing.assert_close(pushforward_log_density(decode, z, singular_values=s), got)


def test_pushforward_density_of_sin_map_and_custom_prior():
    z = _latents(5, 3, seed=9)

    def prior(zz):  # N(0, 4 I)
        return standard_normal_log_prob(zz / 2) - zz.shape[1] * math.log(2)

    got = pushforward_log_density(_sin_map, z, prior)
    # J^T J = I + diag(cos^2 z)
    ref = multivariate_normal(mean=np.zeros(3), cov=4 * np.eye(3)).logpdf(z.numpy()) - 0.5 * np.log(
        1 + np.cos(z.numpy()) ** 2).sum(1)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)
    assert got.dtype == F64


def test_pushforward_density_is_inf_where_volume_collapses():
    z = _latents(3, 5)
    rank_deficient = _linear(_matrix(12, 5, 3), torch.zeros(12, dtype=F64))
    assert torch.isinf(pushforward_log_density(rank_deficient, z)).all()
    wide = _linear(_matrix(3, 5, 3), torch.zeros(3, dtype=F64))  # D < d: never full column rank
    out = pushforward_log_density(wide, z)
    assert out.shape == (3,) and bool((out == math.inf).all())
    # pointwise collapse: G(z) = (z1, z2^3) has J = diag(1, 3 z2^2), singular at z2 = 0 only

    def cube(zz):
        return torch.stack([zz[:, 0], zz[:, 1] ** 3], dim=1)

    zz = torch.tensor([[0.3, 0.0], [0.3, 0.5]], dtype=F64)
    out = pushforward_log_density(cube, zz)
    assert out[0] == math.inf
    expected = float(standard_normal_log_prob(zz[1:])[0]) - math.log(3 * 0.25)
    assert abs(float(out[1]) - expected) < 1e-12
    # a larger collapse threshold turns a small but nonzero volume into +inf
    assert pushforward_log_density(cube, zz, collapse_rtol=0.9)[1] == math.inf


# --- input validation --------------------------------------------------------------------------------
def test_bad_inputs_raise_memgeo_error():
    decode = _linear(_matrix(6, 3, 3), torch.zeros(6, dtype=F64))
    with pytest.raises(MemgeoError, match="shape"):
        decoder_jacobian(decode, torch.zeros(3, dtype=F64))
    with pytest.raises(MemgeoError, match="NaN"):
        decoder_jacobian(decode, torch.full((2, 3), math.nan, dtype=F64))
    with pytest.raises(MemgeoError, match="mode"):
        decoder_jacobian(decode, _latents(2, 3), mode="sideways")
    with pytest.raises(MemgeoError, match="chunk_size"):
        decoder_jacobian(decode, _latents(2, 3), chunk_size=0)
    with pytest.raises(MemgeoError, match="decode returned"):
        decoder_jacobian(lambda z: z.sum(), _latents(2, 3))
    op = DecoderJacobianOperator(decode, _latents(2, 3))
    with pytest.raises(MemgeoError, match="latent-space vector"):
        op.matvec(torch.zeros(2, 6, dtype=F64))
    with pytest.raises(MemgeoError, match="data-space vector"):
        op.rmatvec(torch.zeros(2, 3, dtype=F64))
    with pytest.raises(MemgeoError, match="prior_log_prob"):
        pushforward_log_density(decode, _latents(2, 3), lambda z: z)
    with pytest.raises(MemgeoError, match="singular values"):
        pushforward_log_density(decode, _latents(2, 3), singular_values=torch.ones(2, 2, dtype=F64))
