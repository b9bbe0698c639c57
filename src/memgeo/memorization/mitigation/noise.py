"""Mitigations that change the initial noise x_T: SAIL (Jeon et al. 2025) and Han et al. (2025).

Both rest on the papers' premise: whether a memorized prompt reproduces its training image is
largely decided by where the deterministic sampler starts, and starting points where the
conditional and unconditional noise predictions already agree (small ||d_eps||,
d_eps = eps(x, t, c) - eps(x, t, null)) lead away from the memorized image. (On the digits
benchmark this holds at moderate guidance but not at guidance 4, where the copy is made in the
last low-noise steps; see docs/mitigation.md.)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_scalar
from memgeo.memorization.mitigation.base import (
    CostTally, Mitigation, MitigationResult, adam_minimise_rows, row_norm, sample_evals, sample_guided,
    start_first_step,
)
from memgeo.models.base import DiffusionModel
from memgeo.models.sampling import sample_ddim


class SAIL(Mitigation):
    """SAIL, sharpness-aware initialisation (Jeon et al., ICML 2025), on the first sampling step.

    Jeon et al. show that the memorization score ``||d_eps(z + delta u)||`` with the look-ahead
    direction u = d_eps(z)/||d_eps(z)|| measures both the guidance magnitude and the sharpness of
    the conditional log-density along it (to first order ``||d_eps||^2 + 2 delta u^T J d_eps``, J the
    Jacobian of d_eps), and that initial noises where it is small are not pulled into the memorized
    image. SAIL chooses the initial noise z to minimise, at the first time t = 1,

        L(z) = ||d_eps(z + delta u(z))||^2 / s_0^2 + lam R(z),
        R(z) = (rho^2 - 1 - log rho^2) / 2,   rho = ||z|| / sqrt(D),

    where the regulariser keeps z a plausible N(0, I) sample. Our reading and choices, stated:
    (1) a penalty on ||z|| (or the Gaussian energy ||z||^2) pulls z towards the origin, an atypical
    point in high dimension; we use instead the negative log-density of the *norm* of a Gaussian
    draw (chi distribution, per dimension), which is 0 on the typical shell rho = 1 and grows on
    both sides, so it penalises leaving the shell in either direction; (2) the sharpness term is
    divided by its value s_0^2 at the baseline noise of the same generation, so that ``lam`` has
    the same meaning on every model (the raw ||d_eps|| at t = 1 scales with the signal level
    psi(1)); (3) the direction is normalised, so ``delta`` is a radius in noise units. Two ways to
    minimise, usable together: pick the best of ``n_candidates`` Gaussian draws (the first is the
    given x_T; the others come from ``generator``), then ``opt_steps`` Adam steps with learning
    rate ``lr`` on z, keeping the iterate with the lowest L. Sampling then is plain CFG DDIM from
    the chosen z.

    Cost per generation (counted): ``4 n_candidates + 4 opt_steps + 4 [opt_steps > 0]`` forward and
    ``4 opt_steps`` backward evaluations, plus the sampling's ``2 (steps + 1)``; a generation left
    alone by the ``target`` gate costs 4 forward evaluations plus sampling.

    Parameters
    ----------
    n_candidates : int >= 1, default 1
    opt_steps : int >= 0, default 10
    lr : float, default 0.05
        Adam learning rate on z (per coordinate, in noise units).
    delta : float, default 0.5
        Look-ahead radius.
    lam : float >= 0, default 0.5
        Weight of the norm regulariser R (R = 0 on the typical shell, about 0.01 at rho = 0.9).
    target : float, optional
        Detect-then-mitigate gate: only generations whose first-step guidance norm
        ||d_eps(x_T)|| (Wen et al.'s detection score, computed anyway) exceeds ``target`` are
        optimised; the others keep x_T. ``None`` optimises every generation.
    """

    name = "sail"
    summary = "initial noise minimising ||d_eps(z + delta u)||^2 + a Gaussian-norm penalty (Jeon et al. 2025)"

    def __init__(self, n_candidates: int = 1, opt_steps: int = 10, lr: float = 0.05, delta: float = 0.5,
                 lam: float = 0.5, target: float | None = None) -> None:
        self.n_candidates = check_scalar(n_candidates, "n_candidates", min=1)
        self.opt_steps = check_scalar(opt_steps, "opt_steps", min=0)
        self.lr = check_scalar(lr, "lr", float, min=0, include_min=False)
        self.delta = check_scalar(delta, "delta", float, min=0)
        self.lam = check_scalar(lam, "lam", float, min=0)
        self.target = None if target is None else check_scalar(target, "target", float, min=0)

    def sharpness(self, model: DiffusionModel, z: torch.Tensor, cond: torch.Tensor, tally: CostTally,
                  rows: np.ndarray, backward: bool = False, t1: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(||d_eps(z)||, ||d_eps(z + delta u(z))||) at the first time t1, each (b,); 4 forward evaluations per row."""
        d = tally.noise_difference(model, z, t1, cond, rows, backward)
        norm = row_norm(d)
        u = d / norm.clamp_min(1e-12).reshape((-1,) + (1,) * (z.ndim - 1))
        return norm, row_norm(tally.noise_difference(model, z + self.delta * u, t1, cond, rows, backward))

    def objective(self, sharp: torch.Tensor, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """L = sharp^2 / scale^2 + lam R(z) per row, shape (b,)."""
        rho2 = (z.flatten(1) ** 2).sum(1) / math.prod(z.shape[1:])
        return (sharp / scale) ** 2 + self.lam * 0.5 * (rho2 - 1 - rho2.clamp_min(1e-12).log())

    def generate(self, model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor, *, steps: int = 50,
                 guidance: float = 3.0, generator: torch.Generator | None = None,
                 clip: tuple[float, float] | None = None) -> MitigationResult:
        t1, tally = start_first_step(model, cond, x_T, steps)
        b = x_T.shape[0]
        with torch.no_grad():
            norm0, sharp0 = self.sharpness(model, x_T, cond, tally, np.arange(b), t1=t1)
            # Candidates are drawn for every row so that a row's draws do not depend on the others.
            extra = [torch.randn(x_T.shape, generator=generator, dtype=x_T.dtype, device=x_T.device)
                     for _ in range(self.n_candidates - 1)]
        flagged = np.ones(b, dtype=bool) if self.target is None else (norm0 > self.target).cpu().numpy()
        idx = np.flatnonzero(flagged)
        sel = torch.as_tensor(idx, dtype=torch.long)
        c, x0 = cond[sel], x_T[sel]
        scale = sharp0[sel].clamp_min(1e-12)
        with torch.no_grad():
            best_z = x0.clone()
            best_obj = self.objective(sharp0[sel], x0, scale)
            first_obj = best_obj.clone()
            for cand in extra if idx.size else []:
                z = cand[sel]
                obj = self.objective(self.sharpness(model, z, c, tally, idx, t1=t1)[1], z, scale)
                better = obj < best_obj
                best_z[better] = z[better]
                best_obj = torch.where(better, obj, best_obj)
        selected_obj = best_obj.clone()
        if self.opt_steps > 0 and idx.size:
            work = torch.float32 if best_z.dtype in (torch.float16, torch.bfloat16) else best_z.dtype
            z = best_z.clone().to(work)  # float32 master iterate and moments under reduced precision
            m, v = torch.zeros_like(z), torch.zeros_like(z)
            for k in range(1, self.opt_steps + 2):
                grad_step = k <= self.opt_steps  # the last evaluation only scores the final iterate
                with torch.enable_grad():
                    zg = z.to(best_z.dtype, copy=True).requires_grad_(grad_step)
                    sharp = self.sharpness(model, zg, c, tally, idx, backward=grad_step, t1=t1)[1]
                    obj = self.objective(sharp, zg, scale)
                    better = obj.detach() < best_obj
                    best_z[better] = zg.detach()[better]
                    best_obj = torch.where(better, obj.detach(), best_obj)
                    if not grad_step:
                        break
                    (g,) = torch.autograd.grad(obj.sum(), zg)
                g = g.to(work)
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                z = z - self.lr * (m / (1 - 0.9 ** k)) / ((v / (1 - 0.999 ** k)).sqrt() + 1e-8)
        noise = x_T.clone()
        noise[sel] = best_z
        with torch.no_grad():
            res = sample_ddim(model, noise, steps=steps, cond=cond, guidance=guidance, clip=clip)
        dim = x_T[0].numel()

        def full(values: torch.Tensor, fill: torch.Tensor) -> np.ndarray:
            out = fill.double().cpu().numpy().copy()
            out[idx] = values.double().cpu().numpy()
            return out

        obj0 = self.objective(sharp0, x_T, sharp0.clamp_min(1e-12)).detach()
        return MitigationResult(
            samples=res.x0, noise=noise, nfe=tally.nfe + sample_evals(model, steps, guidance), nbe=tally.nbe,
            diagnostics={"flagged": flagged.astype(float), "guidance_norm_initial": norm0.double().cpu().numpy(),
                         "objective_initial": full(first_obj, obj0), "objective_selected": full(selected_obj, obj0),
                         "objective_final": full(best_obj, obj0),
                         "noise_norm_ratio": (row_norm(noise) / math.sqrt(dim)).double().cpu().numpy(),
                         "noise_shift": (row_norm(noise - x_T) / math.sqrt(dim)).double().cpu().numpy()})


class InitialNoiseAdjustment(Mitigation):
    """Han et al. (NeurIPS 2025): adjust the initial noise so the trajectory leaves the basin early.

    Han et al. observe that the step at which a memorized prompt's trajectory escapes the attraction
    basin (Jain et al.) depends on the initial noise, and that noises with a small first-step
    guidance magnitude ||d_eps(x_T)|| escape earliest. Two strategies, as we read the paper and its
    description:

    ``mode="per_sample"``
        Minimise ||d_eps(x_T)|| at t = 1 for each generation with Adam (``lr``) for at most
        ``iters`` updates, stopping a generation once it is <= ``target`` (absolute; ``None`` runs
        all updates); then plain CFG sampling from the adjusted noise. Cost: ``2 (updates + 1)``
        forward and ``2 * backprops`` backward evaluations plus sampling.
    ``mode="batch"``
        A cheap gradient-free update applied to the whole batch ``iters`` times: with
        u = d_eps/||d_eps|| and g = d_eps(x + rho sqrt(D) u) - d_eps(x) (a finite-difference
        Jacobian-vector product along u, i.e. the sharpness-aware descent direction of ||d_eps||),
        x <- x - gamma sqrt(D) g / ||g||; then guidance is held off for the first ``delay_steps``
        steps (unconditional) and on afterwards. Our reading, stated: the paper steps by gamma g in
        Stable Diffusion's latent units; we normalise the step (length gamma sqrt(D), with rho and
        gamma relative to the typical noise norm sqrt(D)) so the same values work on any model.
        Cost: ``4 iters`` forward evaluations plus sampling (which evaluates both predictions at
        every step, 2 (steps + 1)).
    """

    name = "han_noise"
    summary = "initial noise adjusted to a small first-step guidance norm (Han et al. 2025)"

    def __init__(self, mode: str = "per_sample", iters: int = 10, lr: float = 0.05, target: float | None = None,
                 rho: float = 0.1, gamma: float = 0.1, delay_steps: int = 0) -> None:
        if mode not in ("per_sample", "batch"):
            raise MemgeoError(f"unknown han_noise mode {mode!r}", "use 'per_sample' or 'batch'")
        self.mode = mode
        self.iters = check_scalar(iters, "iters", min=0)
        self.lr = check_scalar(lr, "lr", float, min=0, include_min=False)
        self.target = None if target is None else check_scalar(target, "target", float, min=0)
        self.rho = check_scalar(rho, "rho", float, min=0, include_min=False)
        self.gamma = check_scalar(gamma, "gamma", float, min=0)
        self.delay_steps = check_scalar(delay_steps, "delay_steps", min=0)

    def generate(self, model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor, *, steps: int = 50,
                 guidance: float = 3.0, generator: torch.Generator | None = None,
                 clip: tuple[float, float] | None = None) -> MitigationResult:
        t1, tally = start_first_step(model, cond, x_T, steps)
        b = x_T.shape[0]
        shape = (-1,) + (1,) * (x_T.ndim - 1)
        if self.mode == "per_sample":
            def loss(z: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
                return row_norm(tally.noise_difference(model, z, t1, cond[torch.as_tensor(idx)], idx))

            z, first, last, updates, backprops = adam_minimise_rows(x_T, loss, iters=self.iters, lr=self.lr,
                                                                   target=self.target)
            tally.nbe += 2 * backprops
            with torch.no_grad():
                res = sample_ddim(model, z, steps=steps, cond=cond, guidance=guidance, clip=clip)
                samples, nfe = res.x0, tally.nfe + sample_evals(model, steps, guidance)
            diag = {"norm_initial": first, "norm_last": last, "updates": updates.astype(float)}
        else:
            z = x_T.clone()
            first = None
            with torch.no_grad():
                for _ in range(self.iters):
                    d = tally.noise_difference(model, z, t1, cond)
                    if first is None:
                        first = row_norm(d).double().cpu().numpy()
                    u = d / row_norm(d).clamp_min(1e-12).reshape(shape)
                    root_d = math.sqrt(z[0].numel())
                    g = tally.noise_difference(model, z + self.rho * root_d * u, t1, cond) - d
                    z = z - self.gamma * root_d * g / row_norm(g).clamp_min(1e-30).reshape(shape)
            samples, norms, _ = sample_guided(model, z, cond, tally, steps=steps, guidance=guidance,
                                              switch_step=np.full(b, self.delay_steps), pre_guidance=0.0, clip=clip)
            nfe = tally.nfe
            diag = {"norm_initial": norms[:, 0] if first is None else first, "norm_last": norms[:, 0]}
        dim = x_T[0].numel()
        diag["noise_norm_ratio"] = (row_norm(z) / math.sqrt(dim)).double().cpu().numpy()
        diag["noise_shift"] = (row_norm(z - x_T) / math.sqrt(dim)).double().cpu().numpy()
        return MitigationResult(samples=samples, noise=z, nfe=nfe, nbe=tally.nbe, diagnostics=diag)
