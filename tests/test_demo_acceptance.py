"""The demo's scientific claims, checked on real training runs.

The default demo (8x8 digits, "9" replaced by copies of one image, "3" as control) runs in the
default suite (about a minute on 2 cores); variations of classes, copy counts and partial
duplication are marked slow (``make test-all``). The default demo's ``reproduce`` commands are run
from its folder and must give the same copy rates, sharpness AUROC and MMH counts.
"""

from __future__ import annotations

import pytest

from memgeo.workflows import DemoConfig, ToyConfig, run_demo

from demo_checks import check_reproduced, run_reproduce


def _run(tmp_path, **kw):
    cfg = DemoConfig(toy=ToyConfig(enabled=False), **kw)
    return run_demo(cfg, tmp_path / "demo")


def test_default_demo_memorizes_and_sharpness_detects_copies(tmp_path, run_cli, monkeypatch):
    m = _run(tmp_path)
    assert m["copy_rate_memorized"] >= 0.8
    assert m["copy_rate_control"] <= 0.1
    assert m["auroc_sharpness"] >= 0.95
    low, high = m["auroc_sharpness_ci"]
    assert low <= m["auroc_sharpness"] <= high
    # Copies look like a point mass: no flat directions on average; non-copies keep several.
    assert m["mean_n_flat"]["copies"] < 1 < m["mean_n_flat"]["non_copies"]
    # Manifold-memorization audit: copies of the duplicated image are data-driven memorization.
    n_copies = sum(m["mmh_labels_of_copies"].values())
    assert m["mmh_labels_of_copies"]["DD-Mem"] >= 0.85 * n_copies
    assert m["mmh_labels_of_non_copies"]["DD-Mem"] == 0
    assert m["auroc_lid_model"] >= 0.95
    # The printed commands recompute these numbers from the folder alone.
    run_reproduce(tmp_path / "demo", m, run_cli, monkeypatch)
    check_reproduced(tmp_path / "demo", m)


@pytest.mark.slow
@pytest.mark.parametrize("memorize,control,copies", [(1, 7, 50), (4, 0, 100), (2, 5, None)])
def test_other_class_pairs_and_copy_counts(tmp_path, memorize, control, copies):
    m = _run(tmp_path, memorize_class=memorize, control_class=control, copies=copies)
    assert m["copy_rate_memorized"] >= 0.8
    assert m["copy_rate_control"] <= 0.1
    assert m["auroc_sharpness"] >= 0.9


@pytest.mark.slow
def test_partial_duplication_within_one_class(tmp_path):
    m = _run(tmp_path, fraction=0.5, n_samples=150)
    assert m["auroc_sharpness_within_memorized_class"] >= 0.9
