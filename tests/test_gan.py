"""GAN (non-saturating) and WGAN-GP: closed-form losses and penalty, the optimal discriminator, training."""

import math

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.models.gan import (
    GAN,
    GANConfig,
    discriminator_loss,
    generator_loss_nonsaturating,
    gradient_penalty,
    train_gan,
    wgan_critic_loss,
    wgan_generator_loss,
)
from memgeo.models.generators import Generator


# --- config and protocol -------------------------------------------------------------------------
def test_config_defaults_follow_the_papers_and_overrides_stay():
    gan = GANConfig(data_shape=(2,))
    assert (gan.kind, gan.n_critic, gan.lr, gan.betas) == ("gan", 1, 2e-4, (0.5, 0.999))
    wgan = GANConfig(data_shape=(2,), kind="wgan-gp")
    assert (wgan.n_critic, wgan.lr, wgan.betas, wgan.gp_weight) == (5, 1e-4, (0.0, 0.9), 10.0)
    mine = GANConfig(data_shape=(2,), kind="wgan-gp", n_critic=3, lr=1e-3)
    assert (mine.n_critic, mine.lr, mine.betas) == (3, 1e-3, (0.0, 0.9))
    # round trip through JSON keeps everything (checkpoints save the config)
    assert GANConfig.model_validate_json(wgan.model_dump_json()) == wgan


@pytest.mark.parametrize("bad", [{"kind": "vae"}, {"data_shape": ()}, {"betas": (1.0, 0.9)}])
def test_config_refuses_bad_values(bad):
    with pytest.raises((MemgeoError, ValueError)):
        GANConfig(**({"data_shape": (2,)} | bad))


def test_protocol_shapes_prior_and_capabilities():
    model = GAN(GANConfig(data_shape=(1, 3, 2), latent_dim=4, hidden=16))
    assert isinstance(model, Generator)
    g = torch.Generator().manual_seed(0)
    z = model.prior_sample(5, g)
    assert z.shape == (5, 4)
    assert model.decode(z).shape == (5, 1, 3, 2)
    x = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert x.shape == (7, 1, 3, 2) and not x.requires_grad
    # same seed -> same samples; sample = decode(prior_sample)
    again = model.decode(model.prior_sample(7, torch.Generator().manual_seed(1)))
    torch.testing.assert_close(x, again.detach())
    assert model.critic(x).shape == (7,)
    # the standard normal log-density in closed form
    zz = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, 0.0]])
    want = torch.tensor([-2 * math.log(2 * math.pi), -2 * math.log(2 * math.pi) - 0.5 * (1 + 4 + 0.25)])
    torch.testing.assert_close(model.prior_log_prob(zz), want)
    for cap in ("decode", "prior_sample", "prior_log_prob"):
        assert model.has(cap)
    for cap in ("log_prob", "elbo", "iw_bound"):
        assert not model.has(cap)
    with pytest.raises(MemgeoError):
        model.sample(2, cond=torch.zeros(2))
    with pytest.raises(MemgeoError):
        model.decode(torch.zeros(2, 3))
    with pytest.raises(MemgeoError):
        model.critic(torch.zeros(2, 6))


def test_same_seed_same_weights_and_no_batch_coupling():
    cfg = GANConfig(data_shape=(3,), latent_dim=2, hidden=8)
    a, b = GAN(cfg), GAN(cfg)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    # each output row depends on its own input row only: the batched Jacobian is block diagonal
    z = torch.randn(4, 2)
    jac = torch.autograd.functional.jacobian(lambda u: a.decode(u), z)  # (4, 3, 4, 2)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert torch.count_nonzero(jac[i, :, j, :]) == 0


# --- losses in closed form ----------------------------------------------------------------------
def test_losses_closed_form():
    a = torch.tensor([0.0, 2.0, -1.0])
    b = torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    want_d = -torch.log(sig(a)).mean() - torch.log(1 - sig(b)).mean()
    torch.testing.assert_close(discriminator_loss(a, b), want_d)
    # at the uninformative discriminator (logit 0) the BCE is 2 log 2
    torch.testing.assert_close(discriminator_loss(torch.zeros(4), torch.zeros(4)), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(generator_loss_nonsaturating(b), -torch.log(sig(b)).mean())
    # large logits stay finite (softplus, not log of sigmoid)
    assert torch.isfinite(discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0])))
    torch.testing.assert_close(wgan_critic_loss(a, b), b.mean() - a.mean())
    torch.testing.assert_close(wgan_generator_loss(b), -b.mean())


def test_gradient_penalty_of_a_linear_critic_is_exact():
    torch.manual_seed(0)
    w = torch.tensor([3.0, -4.0, 0.0, 12.0])  # ||w|| = 13
    critic = lambda x: x.reshape(x.shape[0], -1) @ w + 0.7  # noqa: E731
    real, fake = torch.randn(16, 2, 2), torch.randn(16, 2, 2)
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(3))
    torch.testing.assert_close(gp, torch.tensor((13.0 - 1.0) ** 2))


def test_gradient_penalty_of_a_quadratic_critic_uses_the_interpolates():
    torch.manual_seed(1)
    critic = lambda x: 0.5 * (x.reshape(x.shape[0], -1) ** 2).sum(1)  # noqa: E731  grad = x
    real, fake = torch.randn(32, 3), 0.3 * torch.randn(32, 3) + 2.0
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(11))
    eps = torch.rand(32, generator=torch.Generator().manual_seed(11))[:, None]
    x_hat = eps * real + (1 - eps) * fake
    want = ((x_hat.norm(dim=1) - 1.0) ** 2).mean()
    torch.testing.assert_close(gp, want)
    # a different eps gives a different value, so the test above really pins the interpolates
    other = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(12))
    assert abs(other.item() - want.item()) > 1e-3


def test_gradient_penalty_is_differentiable_in_the_critic_parameters():
    w = torch.tensor([0.6, 0.0], requires_grad=True)  # ||w|| = 0.6: penalty (0.6 - 1)^2, d/dw = 2 (||w|| - 1) w/||w||
    gp = gradient_penalty(lambda x: x @ w, torch.randn(8, 2), torch.randn(8, 2))
    (g,) = torch.autograd.grad(gp, w)
    torch.testing.assert_close(g, torch.tensor([2 * (0.6 - 1.0), 0.0]))
    with pytest.raises(MemgeoError):
        gradient_penalty(lambda x: x @ w, torch.randn(8, 2), torch.randn(7, 2))


# --- the optimal discriminator (Goodfellow et al., Proposition 1) -------------------------------------
def _normal_pdf(x: torch.Tensor, mu: float, sd: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def test_discriminator_against_a_fixed_generator_approaches_the_optimum():
    torch.manual_seed(0)
    mu_d, sd_d, mu_g, sd_g = 0.0, 1.0, 1.0, 0.7
    model = GAN(GANConfig(data_shape=(1,), latent_dim=1, hidden=32, depth=2, seed=0))
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=3e-3)
    steps = 2500
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        real = mu_d + sd_d * torch.randn(512, 1, generator=g)
        fake = mu_g + sd_g * torch.randn(512, 1, generator=g)  # the FIXED generator: N(mu_g, sd_g^2)
        loss = discriminator_loss(model.critic(real), model.critic(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    grid = torch.linspace(-1.0, 2.0, 61)[:, None]
    pd, pg = _normal_pdf(grid, mu_d, sd_d), _normal_pdf(grid, mu_g, sd_g)
    d_star = (pd / (pd + pg)).squeeze(1)
    with torch.no_grad():
        d = torch.sigmoid(model.critic(grid))
    err = (d - d_star).abs().max()
    assert err < 0.05, f"max |D - D*| = {float(err):.3f}"
    # and D* is far from the trivial 1/2 here, so the check has teeth
    assert (d_star - 0.5).abs().max() > 0.3


# --- training -----------------------------------------------------------------------------------
def test_train_gan_moves_the_generated_mean_towards_the_data():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([2.0, -1.5])
    data = mean + 0.5 * torch.randn(1000, 2, generator=g)
    model = GAN(GANConfig(data_shape=(2,), latent_dim=2, hidden=32, seed=1, lr=1e-3))
    before = (model.sample(2000, generator=torch.Generator().manual_seed(9)).mean(0) - mean).norm()
    res = train_gan(model, data, steps=400, batch=128, generator=g)
    after = (model.sample(2000, generator=torch.Generator().manual_seed(9)).mean(0) - mean).norm()
    assert res.critic_steps == 400 and res.generator_steps == 400
    assert len(res.critic_loss) == 400 and res.gradient_penalty == []
    assert after < 0.4 * before, f"distance to the data mean {float(before):.3f} -> {float(after):.3f}"


def test_wgan_gp_training_honours_n_critic_and_stays_finite():
    g = torch.Generator().manual_seed(0)
    data = torch.tensor([1.0, 1.0]) + 0.3 * torch.randn(500, 2, generator=g)
    model = GAN(GANConfig(data_shape=(2,), kind="wgan-gp", latent_dim=2, hidden=32, n_critic=4, seed=2))
    calls = {"critic": 0, "generator": 0}
    model.discriminator.register_forward_hook(lambda *_: calls.__setitem__("critic", calls["critic"] + 1))
    model.generator_net.register_forward_hook(lambda *_: calls.__setitem__("generator", calls["generator"] + 1))
    # count the optimiser steps on the critic independently of train_gan's bookkeeping
    d_param = next(model.discriminator.parameters())
    d_before = d_param.detach().clone()
    steps = 30
    res = train_gan(model, data, steps=steps, batch=64, generator=g)
    # per critic step: D on real, fake and the interpolates; per generator step: D once more
    assert calls["critic"] == steps * (3 * 4 + 1)
    # G runs once per critic step (the fakes) and once per generator step
    assert calls["generator"] == steps * (4 + 1)
    assert res.critic_steps == steps * 4 and res.generator_steps == steps
    assert len(res.critic_loss) == len(res.gradient_penalty) == steps * 4
    assert len(res.generator_loss) == steps
    assert all(math.isfinite(v) for v in res.critic_loss + res.generator_loss + res.gradient_penalty)
    assert all(v >= 0 for v in res.gradient_penalty)
    assert not torch.equal(d_param.detach(), d_before)
    # a WGAN-GP also brings over the Adam state per network, with the paper's betas
    assert res.optimizers["critic"].param_groups[0]["betas"] == (0.0, 0.9)
    assert res.optimizers["critic"].param_groups[0]["lr"] == 1e-4


def test_train_gan_refuses_bad_input():
    model = GAN(GANConfig(data_shape=(2,), hidden=8))
    with pytest.raises(MemgeoError):
        train_gan(model, torch.zeros(10, 3), steps=1, batch=4)
    with pytest.raises(MemgeoError):
        train_gan(model, torch.zeros(10, 2), steps=0, batch=4)
