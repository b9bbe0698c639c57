"""The clique attack of Carlini et al. (2023, "Extracting training data from diffusion models", Sec. 4).

A memorized training image is generated again and again, nearly identically, for its prompt or
class; fresh generations are diverse. So: build the graph on the *generations* with an edge
between two of them when their distance is below a threshold, and report every maximal clique of
at least ``k`` generations (the paper: 500 generations per prompt, cliques of size 10, distance the
tiled l2 of :mod:`~memgeo.memorization.copy_metrics.local`). Each clique is then matched to the
training set through its *medoid* (the member with the smallest summed distance to the other
members), whose nearest training image is the candidate extracted image.

The attack works on the generations alone; the training set is only used to match the cliques,
and the held-out test set to set the default threshold: ``rel_threshold`` (default 1/3) x the
median distance of a held-out test sample to its nearest training sample, in the same distance.
Maximal cliques are enumerated by networkx (``find_cliques``, Bron-Kerbosch with pivoting) on the
sparse threshold graph.

The bootstrap CI of the flagged fraction resamples generations with the cliques held fixed (the
clique search is not repeated per replicate).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memgeo.errors import MemgeoError, check_scalar
from memgeo.memorization.copy_metrics.base import COPY_METRICS, CopyData, CopyMetric, MetricResult, rate_result
from memgeo.memorization.copy_metrics.local import held_out_scale, tile_index, tiled_nearest, tiled_pairs_below


@COPY_METRICS.register
class CliqueMetric(CopyMetric):
    """Clique attack: generations in a clique of >= ``k`` mutually close generations are flagged.

    Parameters
    ----------
    k : int, default 10
        Minimum clique size (the paper's 10).
    threshold : float, optional
        Absolute edge threshold (in the samples' units); overrides ``rel_threshold``.
    rel_threshold : float, default 1/3
        Edge threshold as a fraction of the median held-out distance to the training set.
    tiled : bool, optional
        Use the tiled l2 (needs ``image_shape``); default: tiled when the image shape is known.
    grid : int, default 4
        Tiles per side for the tiled l2.

    ``extra["cliques"]`` lists, per clique (largest first): its members (generation indices), the
    medoid, the medoid's nearest training index and distance. ``per_sample`` is the size of the
    largest clique the generation belongs to (0 if none); ``nearest_index`` is the clique medoid's
    training match for members and the generation's own nearest training sample otherwise.
    """

    name = "clique"
    kind = "global"
    uses_test = True

    def __init__(self, k: int = 10, threshold: float | None = None, rel_threshold: float = 1.0 / 3.0,
                 tiled: bool | None = None, grid: int = 4) -> None:
        self.k = check_scalar(k, "k", min=2, fix="pass k=10 (clique size)")
        self.threshold = check_scalar(threshold, "threshold", float, min=0, include_min=False, allow_none=True)
        self.rel_threshold = check_scalar(rel_threshold, "rel_threshold", float, min=0, include_min=False,
                                          fix="pass rel_threshold=1/3")
        if tiled is not None and not isinstance(tiled, bool):
            raise MemgeoError(f"tiled={tiled!r} must be True, False or None", "pass tiled=True or tiled=False")
        self.tiled = tiled
        self.grid = check_scalar(grid, "grid", min=1, fix="pass grid=4")

    def compute(self, data: CopyData) -> MetricResult:
        import networkx as nx

        tiled = data.image_shape is not None if self.tiled is None else self.tiled
        if tiled and data.image_shape is None:
            raise MemgeoError("the tiled clique attack needs the image shape of the samples",
                              "pass image_shape=(C, H, W) or (H, W), or tiled=False")
        tiles = tile_index(data.image_shape, self.grid) if tiled else [np.arange(data.dim)]
        if self.threshold is not None:
            thr = self.threshold
        else:
            thr = self.rel_threshold * held_out_scale(data, self.grid if tiled else None)
        extra: dict[str, Any] = {"k": self.k, "threshold": thr, "distance": "tiled_l2" if tiled else "l2"}
        if self.threshold is None:
            extra["rel_threshold"] = self.rel_threshold
        i, j, dist = tiled_pairs_below(data.gen, tiles, thr) if thr > 0 else (np.zeros(0, int),) * 2 + (np.zeros(0),)
        graph = nx.Graph()
        graph.add_weighted_edges_from(zip(i.tolist(), j.tolist(), dist.tolist()))
        cliques = sorted((sorted(c) for c in nx.find_cliques(graph) if len(c) >= self.k),
                         key=lambda c: (-len(c), c[0]))
        size = np.zeros(data.n_gen, dtype=np.int64)
        _, nn = data.gen_train_nn(1)
        nearest = nn[:, 0].copy()
        records = []
        for members in cliques:
            sub = graph.subgraph(members)
            # Every pair of a clique is an edge, so the summed weights give each member's total distance.
            medoid = min(members, key=lambda v: (sum(w for _, _, w in sub.edges(v, data="weight")), v))
            m_d, m_i = self._match(data, medoid, tiled, tiles)
            records.append({"members": members, "size": len(members), "medoid": medoid,
                            "medoid_train_index": m_i, "medoid_train_distance": m_d})
            bigger = size[members] < len(members)
            upd = np.asarray(members)[bigger]
            size[upd] = len(members)
            nearest[upd] = m_i
        flagged = size >= self.k
        extra.update({"n_cliques": len(cliques), "n_edges": int(i.shape[0]), "cliques": records})
        return rate_result(self, data, size.astype(np.float64), flagged, nearest, extra)

    @staticmethod
    def _match(data: CopyData, g: int, tiled: bool, tiles: list[np.ndarray]) -> tuple[float, int]:
        """Nearest training sample of generation ``g`` in the clique's distance: (distance, index into train)."""
        if not tiled:
            d, i = data.gen_train_nn(1)
            return float(d[g, 0]), int(i[g, 0])
        d, i = tiled_nearest(data.gen[g:g + 1], data.train_unique, tiles, k=1)
        return float(d[0, 0]), int(data.train_first[i[0, 0]])

