"""The discrete-time DDPM variational bound (memgeo.models.ddpm_bound) against a closed form.

For the exact score of a Gaussian N(m, C) (GaussianScore) the bound is a lower bound on the exact
log-density log N(x; m, C) for every grid, and approaches it as the grid is refined.
"""

from __future__ import annotations

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.models.ddpm_bound import ddpm_variational_bound
from memgeo.models.reference import GaussianScore


def _setup():
    mean = torch.tensor([0.3, -0.2], dtype=torch.float64)
    cov = torch.tensor([[0.5, 0.1], [0.1, 0.2]], dtype=torch.float64)
    x = torch.tensor([[0.1, 0.0], [1.0, -0.5], [0.3, -0.2], [-0.6, 0.4]], dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    return GaussianScore(mean, cov), x, exact


def test_bound_below_and_close_to_exact_gaussian_log_density():
    model, x, exact = _setup()
    gen = torch.Generator().manual_seed(0)
    reps = 300  # Monte-Carlo draws as repeated rows: one batched network call per grid step

    def bound(n_steps: int) -> torch.Tensor:
        b = ddpm_variational_bound(model, x.repeat(reps, 1), n_steps=n_steps, generator=gen)
        return b.reshape(reps, x.shape[0]).mean(0)

    coarse, fine = bound(10), bound(1000)
    assert coarse.dtype == torch.float64 and coarse.shape == (4,)
    # a coarse grid is a loose bound: clearly below the exact value at every point
    assert torch.all(coarse < exact - 0.5)
    # a fine grid is tight: mean gap over the points within Monte-Carlo error of 0 (and not above exact)
    gap = (exact - fine).mean()
    assert -0.1 < float(gap) < 0.25
    assert float((exact - fine).mean()) < float((exact - coarse).mean())


def test_bound_refuses_bad_settings():
    model, x, _ = _setup()
    with pytest.raises(MemgeoError):
        ddpm_variational_bound(model, x, n_steps=1)
    with pytest.raises(MemgeoError):
        ddpm_variational_bound(model, x, t_min=0.0)
    with pytest.raises(MemgeoError):
        ddpm_variational_bound(model, x[:, :1])
