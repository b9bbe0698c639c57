"""Likelihood memorization score by repeated K-fold training (van den Burg & Williams, NeurIPS 2021).

The score asks, for every training point, how much more likely the learning algorithm makes it
when the point is part of the training data than when it is not. It adapts Feldman's (2019)
stability-based memorization to density estimation: for a training set ``D`` and an algorithm
``A`` (random initialisation, mini-batch order, ...) the memorization of ``x_i`` is

.. math::

    M(A, D, i) = \\log p(x_i \\mid A(D)) - \\log p(x_i \\mid A(D \\setminus \\{i\\})),

where ``p(x | A(D)) = E_A[p_theta(x)]`` is the density *averaged over the algorithm's
randomness* (the expectation is taken of the density, not of its logarithm). Training ``n``
leave-one-out models is too costly, so the paper estimates both terms with ``L`` repeats of a
``K``-fold split: in repeat ``l`` the indices ``[n]`` are split at random into ``K`` disjoint
folds ``I_{l,1}, ..., I_{l,K}``, and model ``theta_{l,k}`` is trained on ``D \\ I_{l,k}``. Every
model is evaluated on every training point. With ``In_i = {(l, k): i not in I_{l,k}}`` (the
``L (K - 1)`` models that saw ``x_i``) and ``Out_i = {(l, k): i in I_{l,k}}`` (the ``L`` models
that did not), the estimate is

.. math::

    \\hat M_i = \\log \\frac{1}{|In_i|} \\sum_{(l,k) \\in In_i} p_{\\theta_{l,k}}(x_i)
              - \\log \\frac{1}{|Out_i|} \\sum_{(l,k) \\in Out_i} p_{\\theta_{l,k}}(x_i),

i.e. log-mean-exp of the in-fold log-likelihoods minus log-mean-exp of the out-of-fold ones
(the estimator of the paper and of its reference scripts; *not* the difference of mean
log-likelihoods, which is a lower value by Jensen's inequality for each term). ``M_i`` near 0:
the model does not need ``x_i`` to explain it; ``M_i`` large and positive: ``x_i`` is likely
only when it was trained on (memorized). Note that the in-fold models see ``(K - 1)/K`` of the
data, not all of it, as the paper accepts for its K-fold estimator.

The score is model-agnostic: the caller passes ``fit(train_indices) -> model`` and
``log_likelihood(model, indices) -> log p(x_indices)`` (an exact log-density, or a bound such as
an ELBO / importance-weighted bound for VAEs and diffusion models, as the paper uses importance
sampling). The ``K * L`` trainings are independent tasks (each depends only on its own index
set), so they could run in parallel; this implementation runs them sequentially and accepts only
``n_jobs=1`` for now.

Cost: ``K * L`` trainings and ``K * L`` evaluations of all ``n`` points. The paper uses
``K = 10``, ``L = 10``; ``K = 2, L = 1`` (two trainings) is the cheap setting, validated against
the full one in ``tests/test_kfold.py`` (rank correlation of the score vectors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from memgeo.errors import MemgeoError, check_scalar

__all__ = [
    "MemorizationScores",
    "kfold_assignments",
    "kfold_memorization_score",
    "scores_from_log_likelihoods",
]


@dataclass(frozen=True)
class MemorizationScores:
    """Per-point K-fold memorization scores and what they are made of.

    Attributes
    ----------
    scores : numpy.ndarray, shape (n,)
        ``M_i = log_p_in[i] - log_p_out[i]`` (nats); higher = more memorized.
    log_p_in : numpy.ndarray, shape (n,)
        Log-mean-exp of ``log p(x_i)`` over the models trained on ``x_i``.
    log_p_out : numpy.ndarray, shape (n,)
        Log-mean-exp of ``log p(x_i)`` over the models not trained on ``x_i``.
    n_in, n_out : numpy.ndarray, shape (n,), int64
        How many models entered each term (``repeats * (k - 1)`` and ``repeats``).
    log_likelihoods : numpy.ndarray, shape (repeats * k, n)
        ``log p_{theta_m}(x_i)`` of every model ``m`` (row ``l * k + j`` = repeat ``l``, fold ``j``)
        at every point.
    trained_on : numpy.ndarray, shape (repeats * k, n), bool
        Whether model ``m`` was trained on point ``i``.
    folds : numpy.ndarray, shape (repeats, n), int64
        The fold (``0 .. k - 1``) of every point in every repeat.
    k, repeats : int
        Number of folds and of repeats.
    seed : int
        Seed of the fold assignments.
    """

    scores: np.ndarray
    log_p_in: np.ndarray
    log_p_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    log_likelihoods: np.ndarray
    trained_on: np.ndarray
    folds: np.ndarray
    k: int
    repeats: int
    seed: int

    @property
    def n(self) -> int:
        """Number of training points."""
        return int(self.scores.shape[0])

    def settings(self) -> dict[str, int]:
        """The settings as a plain dict (for reports and provenance)."""
        return {"n": self.n, "k": self.k, "repeats": self.repeats, "seed": self.seed,
                "n_models": int(self.log_likelihoods.shape[0])}


def kfold_assignments(n: int, k: int, repeats: int, seed: int) -> np.ndarray:
    """Random balanced K-fold assignments, one independent partition per repeat.

    Parameters
    ----------
    n : int
        Number of points (``>= 2``).
    k : int
        Number of folds, ``2 <= k <= n``; ``k = n`` is leave-one-out.
    repeats : int
        Number of independent partitions (``>= 1``).
    seed : int
        Seed of :func:`numpy.random.default_rng` (``>= 0``).

    Returns
    -------
    numpy.ndarray, shape (repeats, n), int64
        ``folds[l, i]`` = the fold of point ``i`` in repeat ``l``; each fold holds
        ``floor(n / k)`` or ``ceil(n / k)`` points.
    """
    n = check_scalar(n, "n", int, min=2)
    k = check_scalar(k, "k", int, min=2, max=n, fix=f"pass k as an integer in [2, n={n}] (k = n is leave-one-out)")
    repeats = check_scalar(repeats, "repeats", int, min=1)
    seed = check_scalar(seed, "seed", int, min=0)
    rng = np.random.default_rng(seed)
    folds = np.empty((repeats, n), dtype=np.int64)
    base = np.arange(n, dtype=np.int64) % k  # balanced fold labels
    for r in range(repeats):
        folds[r, rng.permutation(n)] = base
    return folds


def scores_from_log_likelihoods(log_likelihoods: np.ndarray, trained_on: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The memorization estimate from a table of per-model log-likelihoods.

    Useful on its own when the models were trained elsewhere (e.g. one job per fold).

    Parameters
    ----------
    log_likelihoods : numpy.ndarray, shape (n_models, n)
        ``log p_{theta_m}(x_i)``; ``-inf`` is allowed (a density of 0), NaN and ``+inf`` are not.
    trained_on : numpy.ndarray, shape (n_models, n), bool
        Whether model ``m`` saw point ``i`` during training.

    Returns
    -------
    scores, log_p_in, log_p_out : numpy.ndarray, shape (n,)
        ``log_p_in - log_p_out`` and the two log-mean-exp terms (see the module docstring).
    n_in, n_out : numpy.ndarray, shape (n,), int64
        Number of models in each term.

    Raises
    ------
    MemgeoError
        On mismatched shapes, NaN/``+inf`` values, or a point that no model saw or every model saw.
    """
    ll = np.asarray(log_likelihoods, dtype=np.float64)
    seen = np.asarray(trained_on)
    if ll.ndim != 2 or seen.shape != ll.shape or seen.dtype != np.bool_:
        raise MemgeoError(f"log_likelihoods {ll.shape} and trained_on {seen.shape} ({seen.dtype}) must be a float "
                          "and a bool array of the same shape (n_models, n)",
                          "pass one row per model and one column per training point")
    bad = np.isnan(ll) | (ll == np.inf)
    if bad.any():
        m, i = np.argwhere(bad)[0]
        raise MemgeoError(f"log_likelihoods holds {int(bad.sum())} NaN/+inf value(s) (first: model {m}, point {i})",
                          "check the model's log_likelihood (a log-density is finite or -inf)")
    n_in = seen.sum(axis=0).astype(np.int64)
    n_out = (~seen).sum(axis=0).astype(np.int64)
    if (n_in == 0).any() or (n_out == 0).any():
        i = int(np.flatnonzero((n_in == 0) | (n_out == 0))[0])
        raise MemgeoError(f"point {i} was seen by {n_in[i]} and held out from {n_out[i]} models; the score needs both",
                          "use folds in which every point is both trained on and held out")
    with np.errstate(divide="ignore"):
        log_p_in = logsumexp(np.where(seen, ll, -np.inf), axis=0) - np.log(n_in)
        log_p_out = logsumexp(np.where(seen, -np.inf, ll), axis=0) - np.log(n_out)
    with np.errstate(invalid="ignore"):
        scores = log_p_in - log_p_out
    return scores, log_p_in, log_p_out, n_in, n_out


def fold_log_likelihoods(folds: np.ndarray, r: int, j: int, fit: Callable[[np.ndarray], Any],
                         log_likelihood: Callable[[Any, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Model (r, j) of the K-fold score: fit on every point outside fold j of repeat r, then log p of all points.

    Parameters
    ----------
    folds : numpy.ndarray, shape (L, n), int
        Fold of each point per repeat (:func:`kfold_assignments`).
    r, j : int
        Repeat and held-out fold.
    fit, log_likelihood
        As in :func:`kfold_memorization_score`.

    Returns
    -------
    trained_on : numpy.ndarray, shape (n,), bool
    log_likelihoods : numpy.ndarray, shape (n,), float64
    """
    n = folds.shape[1]
    seen = folds[r] != j
    model = fit(np.flatnonzero(seen).astype(np.int64))
    out = np.asarray(log_likelihood(model, np.arange(n, dtype=np.int64)), dtype=np.float64)
    if out.shape != (n,):
        raise MemgeoError(f"log_likelihood returned shape {out.shape} for {n} indices (repeat {r}, fold {j})",
                          f"return one log p(x_i) per index, shape ({n},)")
    return seen, out


def kfold_memorization_score(
    n: int,
    fit: Callable[[np.ndarray], Any],
    log_likelihood: Callable[[Any, np.ndarray], np.ndarray],
    *,
    k: int = 10,
    repeats: int = 10,
    seed: int = 0,
    n_jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> MemorizationScores:
    """Repeated K-fold likelihood memorization score of every training point.

    For each repeat ``l`` (an independent random partition of ``0 .. n-1`` into ``k`` balanced
    folds) and each fold ``j``, a model is trained on the *other* folds with
    ``fit(train_indices)`` and evaluated on all ``n`` points with
    ``log_likelihood(model, np.arange(n))``. Each point is then held out once per repeat and
    trained on ``k - 1`` times, and

    ``M_i = logmeanexp_{models trained on i} log p(x_i) - logmeanexp_{models not trained on i} log p(x_i)``

    (van den Burg & Williams 2021; see the module docstring for the equation).

    Parameters
    ----------
    n : int
        Number of training points (``>= 2``); points are referred to by index only.
    fit : callable
        ``fit(train_indices) -> model``; ``train_indices`` is a sorted int64 array, shape
        ``(m,)`` with ``m = n - |fold|``. Must train a fresh model (no state shared between calls).
    log_likelihood : callable
        ``log_likelihood(model, indices) -> array, shape (len(indices),)``: ``log p(x_i)`` under the
        model (exact, or a bound such as the ELBO / importance-weighted bound).
    k : int, default 10
        Folds per repeat, ``2 <= k <= n`` (``k = n``: leave-one-out). ``k = 2, repeats = 1`` is
        the cheap setting (2 trainings).
    repeats : int, default 10
        Independent K-fold partitions (``L`` in the paper).
    seed : int, default 0
        Seed of the fold assignments (the trainings' own randomness is ``fit``'s business).
    n_jobs : int, default 1
        Only 1 is supported: the ``k * repeats`` trainings are independent tasks but run here one
        after another.
    progress : callable, optional
        ``progress(done, total)`` after each model.

    Returns
    -------
    MemorizationScores
        Scores, the in/out terms, counts, the per-model log-likelihood table, the folds and the
        settings.

    Raises
    ------
    MemgeoError
        Bad settings, or a ``log_likelihood`` result of the wrong shape or holding NaN/``+inf``.
    """
    n = check_scalar(n, "n", int, min=2)
    check_scalar(n_jobs, "n_jobs", int, min=1, max=1,
                 fix="pass n_jobs=1 (the trainings are independent tasks; run folds in separate jobs and combine "
                     "them with scores_from_log_likelihoods to parallelise)")
    folds = kfold_assignments(n, k, repeats, seed)
    k, repeats, seed = int(k), int(repeats), int(seed)
    n_models = repeats * k
    ll = np.empty((n_models, n), dtype=np.float64)
    seen = np.empty((n_models, n), dtype=bool)
    for r in range(repeats):
        for j in range(k):
            m = r * k + j
            seen[m], ll[m] = fold_log_likelihoods(folds, r, j, fit, log_likelihood)
            if progress is not None:
                progress(m + 1, n_models)
    scores, log_p_in, log_p_out, n_in, n_out = scores_from_log_likelihoods(ll, seen)
    return MemorizationScores(scores=scores, log_p_in=log_p_in, log_p_out=log_p_out, n_in=n_in, n_out=n_out,
                              log_likelihoods=ll, trained_on=seen, folds=folds, k=k, repeats=repeats, seed=seed)
