"""Prompt-level memorization scores: identities, ground truth on the exact toy, costs, seeds."""

from __future__ import annotations

import pytest
import torch
from prompt_toys import TinyPromptNet, caption_benchmark

from memgeo.errors import MemgeoError
from memgeo.geometry.jacobian import ScoreJacobianOperator
from memgeo.geometry.lid.flipd import FLIPD
from memgeo.memorization.evaluation import auroc
from memgeo.memorization.prompt_scores import (
    PROMPT_SCORES,
    CountingPromptModel,
    SamplingSettings,
    generation_noise,
    get_prompt_score,
    parse_score_names,
)
from memgeo.memorization.prompt_scores.sampled import generated_samples

pytestmark = pytest.mark.usefixtures("single_thread")

FIRST_STEP = ["wen", "jeon", "jeon_vjp", "asthana", "hessian_diff", "sharpness"]


@pytest.fixture(scope="module")
def toy():
    model, mem, gen = caption_benchmark(n_memorized=4, n_classes=4)
    prompts = mem + gen
    labels = torch.tensor([1] * len(mem) + [0] * len(gen))
    return model, prompts, labels


@pytest.fixture(scope="module")
def net():
    return TinyPromptNet(["a", "photo", "of", "cat", "dog", "zebra"])


def test_registry_lists_every_score_and_rejects_unknown_names():
    assert set(PROMPT_SCORES) == {"wen", "jeon", "jeon_vjp", "asthana", "hessian_diff", "sharpness",
                                  "flipd_cond", "flipd_uncond"}
    assert parse_score_names("wen, jeon,wen") == ["wen", "jeon"]
    with pytest.raises(MemgeoError, match="unknown prompt score"):
        parse_score_names("wen,nope")
    with pytest.raises(MemgeoError, match="bad options"):
        get_prompt_score("wen", bogus=1)


def test_wen_norm_is_sigma_times_score_difference_norm(toy):
    model, prompts, _ = toy
    settings = SamplingSettings(t_max=0.4)
    cond = model.encode(prompts)
    x = generation_noise(model, range(len(prompts)), 1)[:, 0]
    res = get_prompt_score("wen").compute(model, cond, x, sampling=settings)
    s_c = model.score(x, 0.4, cond)
    s_u = model.score(x, 0.4, model.null_cond(cond))
    sigma = float(model.schedule.sigma(torch.tensor(0.4, dtype=torch.float64)))
    expected = sigma * (s_c - s_u).reshape(len(prompts), -1).norm(dim=1)
    torch.testing.assert_close(res.values, expected, rtol=1e-10, atol=0)


def test_wen_window_averages_the_norms_along_the_guided_path(net):
    settings = SamplingSettings(steps=5, guidance=2.0)
    cond = net.encode(["a photo of cat"])
    x = generation_noise(net, [3], 1)[:, 0]
    res = get_prompt_score("wen", window=(1, 3)).compute(net, cond, x, sampling=settings)
    ts = settings.grid(net).ts.tolist()
    norms = []
    from memgeo.models.sampling import ddim_step
    for k in range(3):
        e_c, e_u = net.eps(x, ts[k], cond), net.eps(x, ts[k], net.null_cond(cond))
        norms.append(float((e_c - e_u).norm()))
        x = ddim_step(net, x, ts[k], ts[k + 1], e_u + 2.0 * (e_c - e_u))[0]
    assert res.values.item() == pytest.approx((norms[1] + norms[2]) / 2, rel=1e-10)
    with pytest.raises(MemgeoError, match="window"):
        get_prompt_score("wen", window=(0, 9)).compute(net, cond, x, sampling=settings)


@pytest.mark.parametrize("name", ["wen", "jeon", "jeon_vjp", "hessian_diff"])
def test_difference_scores_vanish_when_the_condition_is_the_null_condition(net, name):
    cond = net.encode(["a photo of cat", "dog"])
    res = get_prompt_score(name).compute(net, net.null_cond(cond).clone(), generation_noise(net, [0, 1], 2))
    assert res.values.abs().max().item() == 0.0
    # ... and not for a real prompt (the test could fail)
    assert get_prompt_score(name).compute(net, cond, generation_noise(net, [0, 1], 2)).values.min().item() > 1e-6


def _fd_difference_product(model, x, t, cond, v, h=1e-4):
    """(H_c - H_u) v by central differences of the score difference, (B, D)."""
    null = model.null_cond(cond)

    def g(y):
        return (model.score(y, t, cond) - model.score(y, t, null)).reshape(y.shape[0], -1)

    vv = v.reshape(x.shape)
    return (g(x + h * vv) - g(x - h * vv)) / (2 * h)


@pytest.mark.parametrize("which", ["toy", "net"])
def test_jeon_jvp_agrees_with_finite_differences(toy, net, which):
    model = toy[0] if which == "toy" else net
    prompts = toy[1][:4] if which == "toy" else ["a photo of cat", "zebra dog"]
    t = 0.5
    cond = model.encode(prompts)
    x = generation_noise(model, range(len(prompts)), 1)[:, 0]
    res = get_prompt_score("jeon").compute(model, cond, x, sampling=SamplingSettings(t_max=t))
    sigma = float(model.schedule.sigma(torch.tensor(t, dtype=torch.float64)))
    d_s = -(model.eps(x, t, cond) - model.eps(x, t, model.null_cond(cond))).reshape(len(prompts), -1) / sigma
    fd = _fd_difference_product(model, x, t, cond, d_s).norm(dim=1)
    torch.testing.assert_close(res.values, fd, rtol=1e-2, atol=0)
    # and the raw JVP product against finite differences of the conditional score alone
    op = ScoreJacobianOperator(model, x, t, cond)
    jv = op.matvec(d_s)
    fd_c = (model.score(x + 1e-4 * d_s.reshape(x.shape), t, cond)
            - model.score(x - 1e-4 * d_s.reshape(x.shape), t, cond)).reshape(len(prompts), -1) / 2e-4
    assert float((jv - fd_c).norm() / fd_c.norm()) < 1e-2


def test_jvp_and_vjp_variants_agree_for_a_symmetric_jacobian_and_differ_otherwise(toy, net):
    model, prompts, _ = toy
    settings = SamplingSettings(t_max=0.5)
    cond = model.encode(prompts)
    x = generation_noise(model, range(len(prompts)), 1)
    jvp_v = get_prompt_score("jeon").compute(model, cond, x, sampling=settings).values
    vjp_v = get_prompt_score("jeon_vjp").compute(model, cond, x, sampling=settings).values
    torch.testing.assert_close(jvp_v, vjp_v, rtol=1e-8, atol=1e-14)  # exact score: H symmetric
    cond = net.encode(["a photo of cat", "dog"])
    x = generation_noise(net, [0, 1], 1)
    a = get_prompt_score("jeon").compute(net, cond, x).values
    b = get_prompt_score("jeon_vjp").compute(net, cond, x).values
    assert ((a - b).abs() / a).max().item() > 1e-3  # the network's Jacobian is not symmetric


def test_jeon_falls_back_to_reverse_mode_where_forward_mode_fails(net):
    no_fwd = TinyPromptNet(["a", "photo", "of", "cat", "dog", "zebra"], forward_mode=False)
    cond = net.encode(["a photo of cat", "dog"])
    x = generation_noise(net, [0, 1], 2)
    ref = get_prompt_score("jeon").compute(net, cond, x)
    res = get_prompt_score("jeon").compute(no_fwd, cond, x)
    torch.testing.assert_close(res.values, ref.values, rtol=1e-10, atol=0)
    assert res.extra["vjp_fallback"].min().item() == 1.0 and ref.extra["vjp_fallback"].max().item() == 0.0
    assert res.derivative_passes == 2 * ref.derivative_passes  # a double VJP is two passes


@pytest.mark.parametrize("name", FIRST_STEP)
def test_memorized_prompts_score_higher_on_the_exact_toy(toy, name):
    model, prompts, labels = toy
    cond = model.encode(prompts)
    res = get_prompt_score(name).compute(model, cond, generation_noise(model, range(len(prompts)), 2))
    if name == "asthana":  # its norm term at t_max separates; the low-noise cosine on pure noise need not
        vals = res.extra["norm"].mean(1)
    else:
        vals = res.values
    assert auroc(vals, labels) == 1.0


@pytest.mark.parametrize("name,window,forward", [("wen", (0, 1), 2), ("wen", (1, 3), 6), ("jeon", None, 4),
                                                 ("jeon_vjp", None, 2), ("asthana", None, 4),
                                                 ("hessian_diff", None, 2)])
def test_cost_matches_counted_network_evaluations(net, name, window, forward):
    counter = CountingPromptModel(net)
    cond = net.encode(["a photo of cat", "dog", "zebra"])
    x = generation_noise(net, [0, 1, 2], 2)
    score = get_prompt_score(name, window=window) if window else get_prompt_score(name)
    res = score.compute(counter, cond, x, sampling=SamplingSettings(steps=4))
    assert res.forward_evals == forward * 2  # two generations per prompt
    assert counter.rows / 3 == res.forward_evals
    assert res.evals_per_prompt == res.forward_evals + res.derivative_passes


def test_scores_do_not_depend_on_batching_or_order(net):
    prompts = ["a photo of cat", "dog", "zebra of"]
    seeds = [11, 12, 13]
    cond = net.encode(prompts)
    x = generation_noise(net, seeds, 3)
    torch.testing.assert_close(generation_noise(net, [13], 3)[0], x[2], rtol=0, atol=0)
    torch.testing.assert_close(generation_noise(net, [12], 1)[0, 0], x[1, 0], rtol=0, atol=0)
    for name in ("wen", "jeon", "asthana"):
        full = get_prompt_score(name).compute(net, cond, x).values
        alone = get_prompt_score(name).compute(net, cond[1:2], x[1:2]).values
        torch.testing.assert_close(alone, full[1:2], rtol=1e-12, atol=1e-15)


def test_flipd_scores_negate_flipd_of_the_shared_generation(net):
    settings = SamplingSettings(steps=6, guidance=2.0)
    cond = net.encode(["a photo of cat", "dog"])
    x = generation_noise(net, [0, 1], 1)
    cache: dict = {}
    res_c = get_prompt_score("flipd_cond").compute(net, cond, x, sampling=settings, cache=cache)
    x0 = cache["x0"]
    res_u = get_prompt_score("flipd_uncond").compute(net, cond, x, sampling=settings, cache=cache)
    assert cache["x0"] is x0  # sampled once, shared
    assert torch.equal(generated_samples(net, cond, x[:, 0], settings, {}), x0)
    torch.testing.assert_close(res_c.values, -FLIPD(t0=0.05).estimate(net, x0, cond=cond).double())
    torch.testing.assert_close(res_u.values, -FLIPD(t0=0.05).estimate(net, x0, cond=net.null_cond(cond)).double())
    assert res_c.forward_evals == 2 * 7 + 2 and res_c.derivative_passes == net.dim


def test_sharpness_reports_flat_directions_and_bad_shapes_are_rejected(net):
    cond = net.encode(["a photo of cat"])
    res = get_prompt_score("sharpness").compute(net, cond, generation_noise(net, [0], 1))
    assert 0 <= res.extra["n_flat"].item() <= net.dim
    with pytest.raises(MemgeoError, match="initial noise"):
        get_prompt_score("wen").compute(net, cond, torch.zeros(2, 1, 1, 4, 4, dtype=torch.float64))


def test_dense_jacobian_and_flipd_fall_back_where_vmap_is_refused(net):
    from memgeo.geometry.jacobian import score_jacobian
    from memgeo.memorization.prompt_scores.base import dense_score_jacobian
    from memgeo.memorization.prompt_scores.sampled import exact_flipd

    strict = TinyPromptNet(["a", "photo", "of", "cat", "dog", "zebra"], validate=True)
    cond = net.encode(["a photo of cat", "dog"])
    x = generation_noise(net, [0, 1], 1)[:, 0]
    with pytest.raises(RuntimeError, match="vmap"):
        score_jacobian(strict, x, 0.3, cond)
    torch.testing.assert_close(dense_score_jacobian(strict, x, 0.3, cond), score_jacobian(net, x, 0.3, cond))
    torch.testing.assert_close(exact_flipd(strict, x, 0.05, cond),
                               FLIPD(t0=0.05).estimate(net, x, cond=cond).double())
    settings = SamplingSettings(steps=3)
    for name in ("sharpness", "flipd_cond"):
        a = get_prompt_score(name).compute(strict, cond, x[:, None], sampling=settings).values
        b = get_prompt_score(name).compute(net, cond, x[:, None], sampling=settings).values
        torch.testing.assert_close(a, b)


def test_denoise_pair_takes_a_per_row_time(net):
    """denoise_pair stacks the cond and null rows; a (B,) time is stacked with them: row i at its own t_i
    equals a call with the scalar t_i."""
    from memgeo.models.base import denoise_pair

    cond = net.encode(["a photo of cat", "dog"])
    x = torch.randn(2, *net.data_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    per_row = denoise_pair(net, x, torch.tensor([0.3, 0.6]), cond)
    for i, t in enumerate((0.3, 0.6)):
        alone = denoise_pair(net, x[i:i + 1], t, cond[i:i + 1])
        for a, b in zip(per_row, alone):
            torch.testing.assert_close(a[i:i + 1], b, rtol=1e-6, atol=1e-7)
