"""Feature extractors and the on-disk feature cache (memgeo.models.features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from memgeo.errors import MemgeoError
from memgeo.models.features import (
    FEATURE_EXTRACTORS,
    FeatureExtractor,
    TorchModelFeatures,
    content_hash,
    extract_features,
    feature_cache_dir,
    get_extractor,
)


class Counting(FeatureExtractor):
    """Row sums and maxima; counts how many times it really computes."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flat = x.reshape(x.shape[0], -1)
        return torch.stack([flat.sum(1), flat.max(1).values], dim=1)


def test_registry_and_pixels_is_a_view(tmp_path):
    assert {"pixels", "digits-ae", "mnist-ae"} <= set(FEATURE_EXTRACTORS)
    x = np.random.default_rng(0).random((5, 1, 4, 4), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    f = extract_features(mm, "pixels", cache=tmp_path / "cache")
    assert f.shape == (5, 16) and isinstance(f.base, np.memmap) or np.shares_memory(f, mm)
    np.testing.assert_array_equal(f, x.reshape(5, 16))
    assert not (tmp_path / "cache").exists()  # pixels are never cached
    assert extract_features(np.arange(6).reshape(3, 2)).dtype == np.float32


def test_cache_hits_and_invalidates_on_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMGEO_CACHE", str(tmp_path / "envcache"))
    assert feature_cache_dir() == tmp_path / "envcache"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2500, 3, 2)).astype(np.float32)
    ext = Counting()
    ext.batch_size = 1000
    f1 = extract_features(x, ext)  # default cache: $MEMGEO_CACHE
    assert ext.calls == 3 and f1.shape == (2500, 2) and f1.dtype == np.float32
    np.testing.assert_allclose(f1[:, 0], x.reshape(2500, -1).sum(1), rtol=1e-5, atol=1e-5)
    files = list((tmp_path / "envcache" / "features").glob("*.npy"))
    assert len(files) == 1 and files[0].stem == content_hash(x, ext.id)
    f2 = extract_features(x.copy(), ext)  # same content, different object: a hit
    assert ext.calls == 3
    np.testing.assert_array_equal(f1, f2)
    y = x.copy()
    y[1234, 1, 0] += 1e-3  # one value changed: a miss
    extract_features(y, ext)
    assert ext.calls == 6
    assert len(list((tmp_path / "envcache" / "features").glob("*.npy"))) == 2
    extract_features(x, ext, cache=False)  # no cache: recomputes
    assert ext.calls == 9
    files[0].write_bytes(b"truncated")  # unreadable cache file: recomputed, rewritten
    np.testing.assert_array_equal(extract_features(x, ext), f1)
    assert ext.calls == 12
    assert content_hash(x, "a") != content_hash(x, "b") != content_hash(x.astype(np.float64), "b")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_and_pickled_module_extractors(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(12, 3)
    model = nn.Sequential(nn.Flatten(), lin)
    script = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(script))
    whole = tmp_path / "whole.pt"
    torch.save(model, str(whole))
    x = np.random.default_rng(2).uniform(-1, 1, (7, 1, 2, 2)).astype(np.float32)

    # resize 2x2 -> 2x2 is a no-op; channels=3 repeats grey; normalisation (x01 - m) / s, then the linear map.
    m, s = (0.5, 0.25, 0.0), (0.5, 2.0, 1.0)
    expected_in = np.repeat(x, 3, axis=1)
    expected_in = ((expected_in + 1) / 2 - np.array(m)[None, :, None, None]) / np.array(s)[None, :, None, None]
    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    expected = expected_in.reshape(7, 12) @ w.T + b
    for path in (script, whole):
        ext = get_extractor(path, channels=3, mean=m, std=s)
        assert isinstance(ext, TorchModelFeatures) and ext.id.startswith("path:")
        f = extract_features(x, path, cache=tmp_path / "cache", channels=3, mean=m, std=s)
        assert f.shape == (7, 3) and f.dtype == np.float32
        np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-5)
    # Different options, different cache entry; a resize to 4x4 changes the input size the model sees -> error.
    with pytest.raises(MemgeoError, match="failed on input of shape"):
        extract_features(x, script, cache=False, channels=3, resize=4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_extractors(tmp_path):
    with pytest.raises(MemgeoError, match="unknown feature extractor"):
        get_extractor("sscd")
    with pytest.raises(MemgeoError, match="unknown feature extractor"):
        get_extractor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(MemgeoError, match="cannot load feature model"):
        TorchModelFeatures(tmp_path / "junk.pt")
    torch.save({"w": torch.zeros(2)}, str(tmp_path / "state.pt"))
    with pytest.raises(MemgeoError, match="not a model"):
        TorchModelFeatures(tmp_path / "state.pt")
    torch.jit.save(torch.jit.script(nn.Identity()), str(tmp_path / "id.pt"))
    with pytest.raises(MemgeoError, match="only one of mean and std"):
        TorchModelFeatures(tmp_path / "id.pt", mean=(0.5,))
    with pytest.raises(MemgeoError, match="channels"):
        TorchModelFeatures(tmp_path / "id.pt", channels=2)
    with pytest.raises(MemgeoError, match="non-numeric"):
        extract_features(np.array(["a"]), "pixels")


def test_digits_autoencoder_trains_once_and_beats_constant_baseline(tmp_path):
    from memgeo.data import load_digits

    x = load_digits().x.numpy()
    ae = get_extractor("digits-ae", cache=tmp_path)
    weights = tmp_path / "models" / "digits-ae-v1.safetensors"
    assert weights.is_file()
    rec = ae.reconstruct(x)
    mse = float(((rec - x) ** 2).mean())
    baseline = float(((x - x.mean(axis=0)) ** 2).mean())  # best constant image: the mean digit
    assert mse < 0.2 * baseline
    f = extract_features(x[:50], "digits-ae", cache=tmp_path)
    assert f.shape == (50, 16) and f.dtype == np.float32
    # Reused, not retrained: same weights file, same id, same features.
    mtime = weights.stat().st_mtime_ns
    again = get_extractor("digits-ae", cache=tmp_path)
    assert weights.stat().st_mtime_ns == mtime and again.id == ae.id
    np.testing.assert_array_equal(again(x[:50]), f)
    with pytest.raises(MemgeoError, match="takes samples of shape"):
        ae(np.zeros((2, 1, 28, 28), np.float32))
