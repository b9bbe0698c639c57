"""Atomic writing and provenance."""

import json

import numpy as np
import pytest

from memgeo.io import atomic_write_text, provenance, write_csv, write_json, write_npy


def test_write_json_roundtrip_converts_numpy_and_nonfinite(tmp_path):
    p = write_json(tmp_path / "a.json", {"x": np.arange(3), "f": np.float32(0.5), "nan": float("nan")})
    assert json.loads(p.read_text()) == {"x": [0, 1, 2], "f": 0.5, "nan": None}


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json(tmp_path / "b.json", {"x": Boom()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_replace_keeps_old_content_until_done(tmp_path, monkeypatch):
    target = tmp_path / "c.txt"
    atomic_write_text(target, "old")
    import os

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def test_csv_union_of_columns_and_npy(tmp_path):
    write_csv(tmp_path / "r.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b", "1,", "2,3"]
    write_npy(tmp_path / "x.npy", np.eye(2))
    assert np.array_equal(np.load(tmp_path / "x.npy"), np.eye(2))


def test_provenance_has_versions_seed_and_command():
    p = provenance(seed=7, note="x")
    assert p["seed"] == 7 and p["note"] == "x"
    assert p["versions"]["torch"] and p["versions"]["memgeo"]
    assert "git_hash" in p and isinstance(p["command"], list)
