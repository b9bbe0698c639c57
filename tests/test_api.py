"""The curated top-level API: ``import memgeo`` exposes exactly these names, lazily."""

import subprocess
import sys

import memgeo

CURATED = [
    "CFDM", "COPY_METRICS", "FLIPD", "FPRegress", "GeneratorLID", "LID_ESTIMATORS", "LocalPCA", "MITIGATIONS", "MLE", "MemgeoError", "NormalBundle",
    "PROMPT_SCORES", "TwoNN", "__version__", "compute_copy_metrics", "get_lid_estimator", "get_mitigation",
    "get_prompt_score", "kfold_memorization_score", "load", "mmh_audit", "sample", "sharpness_spectrum", "simulate",
]


def test_all_is_the_curated_list():
    assert sorted(memgeo.__all__) == CURATED
    assert set(CURATED) <= set(dir(memgeo))


def test_each_name_resolves_to_its_home():
    from memgeo.collapse import simulate
    from memgeo.errors import MemgeoError, Registry
    from memgeo.geometry import lid
    from memgeo.geometry.sharpness import sharpness_spectrum
    from memgeo.memorization import copy_metrics, mitigation, prompt_scores
    from memgeo.memorization.kfold import kfold_memorization_score
    from memgeo.memorization.mmh import mmh_audit
    from memgeo.models.loading import load
    from memgeo.models.sampling import sample

    home = {"load": load, "sample": sample, "sharpness_spectrum": sharpness_spectrum, "mmh_audit": mmh_audit,
            "simulate": simulate, "MemgeoError": MemgeoError,
            "get_prompt_score": prompt_scores.get_prompt_score, "PROMPT_SCORES": prompt_scores.PROMPT_SCORES,
            "get_mitigation": mitigation.get_mitigation, "MITIGATIONS": mitigation.MITIGATIONS,
            "COPY_METRICS": copy_metrics.COPY_METRICS, "compute_copy_metrics": copy_metrics.compute_copy_metrics,
            "kfold_memorization_score": kfold_memorization_score}
    home.update({n: getattr(lid, n) for n in ("CFDM", "FLIPD", "FPRegress", "LID_ESTIMATORS", "LocalPCA", "MLE",
                                               "NormalBundle", "TwoNN", "get_lid_estimator", "GeneratorLID")})
    assert sorted(home) == [n for n in CURATED if n != "__version__"]
    for name, obj in home.items():
        assert getattr(memgeo, name) is obj, name
    assert isinstance(memgeo.__version__, str) and memgeo.__version__.count(".") == 2
    assert all(isinstance(getattr(memgeo, n), Registry) for n in ("LID_ESTIMATORS", "PROMPT_SCORES", "MITIGATIONS",
                                                                      "COPY_METRICS"))
    assert isinstance(memgeo.get_lid_estimator("flipd"), memgeo.FLIPD)


def test_unknown_attribute_raises_attribute_error():
    try:
        memgeo.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("memgeo.no_such_name resolved")


def test_import_memgeo_stays_light():
    code = ("import sys, memgeo; heavy = [m for m in ('diffusers', 'transformers', 'memgeo.geometry', "
            "'memgeo.memorization', 'memgeo.models', 'memgeo.collapse') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
