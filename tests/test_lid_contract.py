"""The LID estimator contract (model-based / data-based bases), generator-Jacobian LID and density sharpness.

Ground truths: a linear generator G(z) = A z + b (rank from NumPy, singular values from NumPy's SVD,
the Gaussian N(b, A A^T) on col(A) evaluated by scipy in an orthonormal basis of the subspace, the
least-squares latent from NumPy's lstsq); a linear VAE whose decoder Jacobian is its weight matrix;
Gaussian log-densities N(0, S) with Hessian -S^{-1}, and log p = -sum x^4 / 4 with Hessian diag(-3 x^2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from memgeo.errors import MemgeoError
from memgeo.geometry.density import density_sharpness, log_density_hessian
from memgeo.geometry.lid import (
    LID_ESTIMATORS,
    DataLIDEstimator,
    GeneratorLID,
    LIDEstimator,
    ModelLIDEstimator,
    get_lid_estimator,
)
from memgeo.models.generators import Generator
from memgeo.models.vae import VAE, VAEConfig

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


class LinearGenerator(Generator):
    """G(z) = A z + b with a standard normal prior; no encoder."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__((a.shape[0],), a.shape[1])
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def sample(self, n: int, cond: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(self.prior_sample(n, generator))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.a.T + self.b

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, dtype=self.a.dtype)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)


class LinearAutoencoder(LinearGenerator):
    """The linear generator with the exact encoder mean pinv(A) (x - b)."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = (x - self.b) @ torch.linalg.pinv(self.a).T
        return mu, torch.zeros_like(mu)


class NoDecode(Generator):
    def sample(self, n: int, cond: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.zeros(n, *self.data_shape)


def _matrix(big_d: int, d: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(big_d, rank, generator=g, dtype=F64) @ torch.randn(rank, d, generator=g, dtype=F64)


def _gen(big_d: int, d: int, rank: int, cls: type[LinearGenerator] = LinearGenerator) -> LinearGenerator:
    a = _matrix(big_d, d, rank)
    b = torch.linspace(-1, 1, big_d, dtype=F64)
    return cls(a, b)


def _z(n: int, d: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --- the contract ---------------------------------------------------------------------------------
def test_abstract_bases_refuse_incomplete_subclasses():
    class NoEstimate(ModelLIDEstimator):
        name = "x"

    class NoFit(DataLIDEstimator):
        def estimate(self, x):
            return torch.zeros(len(x))

    class NoDataEstimate(DataLIDEstimator):
        def fit(self, reference):
            return self

    for cls in (NoEstimate, NoFit, NoDataEstimate, ModelLIDEstimator, DataLIDEstimator):
        with pytest.raises(TypeError):
            cls()

    class Complete(ModelLIDEstimator):
        def estimate(self, model, x, cond=None):
            return torch.zeros(x.shape[0], dtype=F64)

    class CompleteData(NoFit):
        def fit(self, reference):
            return self

    assert Complete().needs_model is True and CompleteData().needs_model is False
    assert CompleteData().fit(None).estimate([1, 2]).shape == (2,)


def test_every_registered_estimator_has_exactly_one_base():
    assert "generator_jacobian" in LID_ESTIMATORS
    kinds = {}
    for name in LID_ESTIMATORS:
        cls = LID_ESTIMATORS[name]
        is_model, is_data = issubclass(cls, ModelLIDEstimator), issubclass(cls, DataLIDEstimator)
        assert issubclass(cls, LIDEstimator) and is_model != is_data, name
        assert cls.needs_model is is_model, name
        assert not getattr(cls, "__abstractmethods__", None), name
        kinds[name] = "model" if is_model else "data"
    expected = {"flipd": "model", "fpregress": "model", "normal_bundle": "model", "generator_jacobian": "model",
                "cfdm": "data", "lpca": "data", "mle": "data", "twonn": "data"}
    assert {k: kinds[k] for k in expected} == expected
    # only the kNN estimators can leave an in-sample query's copy out
    assert {n for n in expected if getattr(LID_ESTIMATORS[n], "supports_exclude_self", False)} == {"lpca", "mle",
                                                                                                     "twonn"}


def test_callers_use_the_bases():
    from memgeo.workflows.lid_runs import estimate_lid, reference_typical_lid

    ref = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    cfdm = get_lid_estimator("cfdm", t0=0.05).fit(ref)
    assert reference_typical_lid(cfdm, ref) is None  # CFDM cannot leave the query's own copy out
    lpca = get_lid_estimator("lpca", k=10).fit(ref)
    assert reference_typical_lid(lpca, ref) is not None
    model = _gen(5, 3, 2)
    z = _z(4, 3)
    lid = estimate_lid(get_lid_estimator("generator_jacobian", latents="encoder"), model.decode(z),
                       model=_gen(5, 3, 2, LinearAutoencoder))
    assert lid.tolist() == [2.0] * 4


# --- generator-Jacobian LID ------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_generator_lid_with_given_latents_is_rank_of_a(rank):
    model = _gen(6, 4, rank)
    z = _z(5, 4)
    est = GeneratorLID()
    lid = est.estimate(model, model.decode(z), z=z)
    assert lid.dtype == F64 and lid.tolist() == [float(np.linalg.matrix_rank(model.a.numpy()))] * 5 == [rank] * 5
    res = est.result_
    assert res.latent_source == "given" and torch.equal(res.z, z)
    ref_sv = np.linalg.svd(model.a.numpy(), compute_uv=False)
    np.testing.assert_allclose(res.singular_values.numpy(), np.tile(ref_sv, (5, 1)), rtol=1e-10, atol=1e-12)
    assert torch.isinf(res.log_density).all()  # rank < d: the local volume is zero
    assert float(res.reconstruction_error.max()) < 1e-12


def test_generator_lid_pushforward_density_is_the_gaussian_on_the_subspace():
    model = _gen(6, 3, 3)
    z = _z(7, 3)
    x = model.decode(z)
    est = GeneratorLID()
    assert est.estimate(model, x, z=z).tolist() == [3.0] * 7
    a = model.a.numpy()
    u, _, _ = np.linalg.svd(a, full_matrices=False)  # orthonormal basis of col(A)
    y = (x.numpy() - model.b.numpy()) @ u  # coordinates on the subspace
    ref = multivariate_normal(mean=np.zeros(3), cov=u.T @ a @ a.T @ u).logpdf(y)
    np.testing.assert_allclose(est.result_.log_density.numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("rank", [2, 3])
def test_generator_lid_by_latent_inversion(rank):
    model = _gen(6, 3, rank)
    z0 = _z(6, 3)
    x = model.decode(z0)
    est = GeneratorLID(latents="auto")  # no encoder, no z: inversion
    lid = est.estimate(model, x)
    res = est.result_
    assert res.latent_source == "inversion"
    assert lid.tolist() == [float(rank)] * 6
    assert float(res.reconstruction_error.max()) < 1e-4 * float(x.norm(dim=1).min())
    if rank == 3:  # injective: the least-squares latent is z0 itself
        lstsq = np.linalg.lstsq(model.a.numpy(), (x - model.b).numpy().T, rcond=None)[0].T
        np.testing.assert_allclose(res.z.numpy(), lstsq, atol=1e-3)
        np.testing.assert_allclose(lstsq, z0.numpy(), atol=1e-8)


def test_generator_lid_via_encoder():
    model = _gen(6, 4, 2, LinearAutoencoder)
    z0 = _z(5, 4)
    x = model.decode(z0)
    est = GeneratorLID()
    assert est.estimate(model, x).tolist() == [2.0] * 5
    assert est.result_.latent_source == "encoder"
    np.testing.assert_allclose(model.decode(est.result_.z).numpy(), x.numpy(), atol=1e-10)


def test_generator_lid_of_a_linear_vae_is_rank_of_its_decoder_weight():
    vae = VAE(VAEConfig(data_shape=(5,), latent_dim=3, hidden=(), decoder_variance="fixed")).double().eval()
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    est = GeneratorLID()
    lid = est.estimate(vae, x)
    w = vae.decoder_net[0].weight.detach().numpy()  # the decoder mean is W z + c
    assert est.result_.latent_source == "encoder"
    assert lid.tolist() == [float(np.linalg.matrix_rank(w))] * 4 == [3.0] * 4
    np.testing.assert_allclose(est.result_.singular_values[0].numpy(), np.linalg.svd(w, compute_uv=False), rtol=1e-10)


def test_generator_lid_refuses_bad_input():
    model = _gen(4, 2, 2)
    x = model.decode(_z(3, 2))
    with pytest.raises(MemgeoError, match="unconditional"):
        GeneratorLID().estimate(model, x, torch.zeros(3))
    with pytest.raises(MemgeoError, match="no decode"):
        GeneratorLID().estimate(NoDecode((4,), 2), x)
    with pytest.raises(MemgeoError, match="no z"):
        GeneratorLID(latents="given").estimate(model, x)
    with pytest.raises(MemgeoError, match="encoder"):
        GeneratorLID(latents="encoder").estimate(model, x)
    with pytest.raises(MemgeoError, match="shape"):
        GeneratorLID().estimate(model, x[:, :3])
    with pytest.raises(MemgeoError):
        GeneratorLID(latents="nope").estimate(model, x)


# --- density sharpness ------------------------------------------------------------------------------
def _spd(d: int, seed: int = 3) -> torch.Tensor:
    m = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return m @ m.T + 0.5 * torch.eye(d, dtype=F64)


@pytest.mark.parametrize("shape", [(4,), (2, 3)])
def test_gaussian_hessian_and_sharpness_closed_form(shape):
    d = int(np.prod(shape))
    s = _spd(d)
    dist = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=F64), covariance_matrix=s)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        return dist.log_prob(x.reshape(x.shape[0], -1))

    x = torch.randn((5,) + shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    h = log_density_hessian(log_prob, x, chunk_size=2)
    s_inv = np.linalg.inv(s.numpy())
    assert h.shape == (5, d, d)
    np.testing.assert_allclose(h.numpy(), np.broadcast_to(-s_inv, (5, d, d)), rtol=1e-9, atol=1e-12)
    sharp = density_sharpness(log_prob, x, scale=0.3)
    np.testing.assert_allclose(sharp.numpy(), 0.3 * np.trace(s_inv) / d, rtol=1e-10)
    # mean eigenvalue form, with the Hessian given
    np.testing.assert_allclose(density_sharpness(None, x, hess=h).numpy(),
                               -np.linalg.eigvalsh(-s_inv).mean(), rtol=1e-10)


def test_isotropic_gaussian_sharpness_is_scale_over_variance():
    v = 0.25
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    lp = lambda y: -0.5 * (y * y).sum(1) / v  # noqa: E731
    np.testing.assert_allclose(density_sharpness(lp, x, scale=v).numpy(), [1.0] * 3, rtol=1e-12)


def test_non_quadratic_hessian_varies_with_x():
    x = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.5, -0.2]], dtype=F64)
    h = log_density_hessian(lambda y: -(y ** 4).sum(1) / 4, x)
    np.testing.assert_allclose(h.numpy(), np.stack([np.diag(-3 * r ** 2) for r in x.numpy()]), atol=1e-12)
    np.testing.assert_allclose(density_sharpness(None, x, hess=h).numpy(), (3 * x.numpy() ** 2).mean(1), rtol=1e-12)


def test_density_refuses_bad_input():
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(MemgeoError):
        density_sharpness(None, x)
    with pytest.raises(MemgeoError):
        density_sharpness(None, x, hess=torch.zeros(2, 2, 2, dtype=F64))
    with pytest.raises(MemgeoError):
        density_sharpness(lambda y: -(y * y).sum(1), x, scale=0.0)
    with pytest.raises(MemgeoError):
        log_density_hessian(lambda y: -(y * y), x)  # (n, D) instead of (n,)


# --- memgeo lid / memgeo audit on a generator (the loader is replaced by the in-memory model) --------
def _linear_vae(rank_data: int = 2) -> tuple[VAE, np.ndarray]:
    vae = VAE(VAEConfig(data_shape=(4,), latent_dim=2, hidden=(), decoder_variance="fixed")).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    z = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    return vae, vae.decode(z).numpy()


def test_run_lid_and_audit_accept_a_generator(tmp_path, monkeypatch):
    import json

    from memgeo.workflows import lid_runs

    vae, pts = _linear_vae()
    monkeypatch.setattr(lid_runs, "load", lambda spec, *a, **k: vae)
    np.save(tmp_path / "pts.npy", pts)
    train = np.concatenate([pts[:3], np.random.default_rng(0).normal(size=(30, 4))]).astype(np.float32)
    np.save(tmp_path / "train.npy", train)
    lid_runs.run_lid(lid_runs.LIDRunConfig(points=str(tmp_path / "pts.npy"), estimator="generator_jacobian",
                                           model="vae-ckpt"), tmp_path / "lid")
    res = json.loads((tmp_path / "lid" / "lid.json").read_text())
    w = vae.decoder_net[0].weight.numpy()
    assert res["lid"] == [float(np.linalg.matrix_rank(w))] * 12 == [2.0] * 12
    assert res["latent_source"] == "encoder" and len(res["pushforward_log_density"]) == 12
    with pytest.raises(MemgeoError, match="generator_jacobian"):
        lid_runs.run_lid(lid_runs.LIDRunConfig(points=str(tmp_path / "pts.npy"), estimator="flipd",
                                               model="vae-ckpt"), tmp_path / "lid2")
    with pytest.raises(MemgeoError, match="unconditional"):
        lid_runs.run_lid(lid_runs.LIDRunConfig(points=str(tmp_path / "pts.npy"), estimator="generator_jacobian",
                                               model="vae-ckpt", cond=1), tmp_path / "lid3")
    summary = lid_runs.run_audit(lid_runs.AuditConfig(model="vae-ckpt", points=str(tmp_path / "pts.npy"),
                                                      train_data=str(tmp_path / "train.npy"),
                                                      lid_data_params={"k": 5}), tmp_path / "audit")
    assert summary["lid_model_estimator"] == "generator_jacobian" and summary["n"] == 12
    rows = json.loads((tmp_path / "audit" / "audit.json").read_text())["samples"]
    assert [r["lid_model"] for r in rows] == [2.0] * 12 and all(r["n_flat"] == 0 for r in rows)
    # the pushforward density of the linear decoder, N(c, W W^T) on col(W), at the decoded encoder means
    # (the untrained encoder does not invert the decoder, so these are not the samples themselves)
    u = np.linalg.svd(w, full_matrices=False)[0]
    c = vae.decoder_net[0].bias.numpy()
    mu = vae.encode(torch.from_numpy(pts))[0].numpy()
    ref = multivariate_normal(mean=np.zeros(2), cov=u.T @ w @ w.T @ u).logpdf((mu @ w.T) @ u)
    np.testing.assert_allclose([r["sharpness"] for r in rows], ref, rtol=1e-4)
    assert (tmp_path / "audit" / "report.html").is_file()
