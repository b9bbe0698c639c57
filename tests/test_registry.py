"""memgeo.errors.Registry: the one string-registry type, and the registries built on it."""

import pytest

from memgeo.errors import MemgeoError, Registry


def _registry() -> Registry:
    reg = Registry("widget")

    @reg.register
    class Small:
        name = "small"

        def __init__(self, size: int = 1) -> None:
            self.size = size

    @reg.register("twice")
    def twice(x: int = 2) -> int:
        return 2 * x

    reg.register(dict, name="plain")
    return reg


def test_mapping_view_and_order():
    reg = _registry()
    assert list(reg) == ["small", "twice", "plain"] and len(reg) == 3
    assert reg.names() == ["plain", "small", "twice"]
    assert "small" in reg and "large" not in reg and 3 not in reg
    assert reg["twice"](5) == 10 and dict(reg.items())["plain"] is dict
    with pytest.raises(KeyError):
        reg["large"]


def test_get_and_build():
    reg = _registry()
    assert reg.build("small", size=4).size == 4 and reg.build("twice", x=3) == 6
    assert reg.get("large", None) is None
    with pytest.raises(MemgeoError, match=r"unknown widget 'large'; choose one of: plain, small, twice"):
        reg.get("large")
    with pytest.raises(MemgeoError, match=r"unknown widget 'large'"):
        reg.build("large")
    with pytest.raises(MemgeoError, match=r"bad options for widget 'small': invalid parameters \['colour'\]"):
        reg.build("small", colour="red", size=2)


def test_register_needs_a_name_and_replaces():
    reg = Registry("widget")
    with pytest.raises(TypeError, match="no name"):
        reg.register(type("Anon", (), {}))
    reg.register(int, name="n")
    reg.register(float, name="n")
    assert reg["n"] is float and len(reg) == 1


def test_project_registries_are_registries():
    from memgeo.collapse.families import FAMILIES
    from memgeo.data.manifolds import MANIFOLD_DATASETS
    from memgeo.geometry.lid import LID_ESTIMATORS, MODEL_FREE_ESTIMATORS
    from memgeo.memorization.copies import COPY_CRITERIA
    from memgeo.memorization.mitigation import MITIGATIONS
    from memgeo.memorization.prompt_scores import PROMPT_SCORES
    from memgeo.models.sampling import SAMPLERS

    regs = [FAMILIES, MANIFOLD_DATASETS, LID_ESTIMATORS, MODEL_FREE_ESTIMATORS, COPY_CRITERIA, MITIGATIONS,
            PROMPT_SCORES, SAMPLERS]
    assert all(isinstance(r, Registry) and len(r) >= 2 for r in regs)
    # Entries that carry a name are registered under it.
    for reg in (FAMILIES, LID_ESTIMATORS, MODEL_FREE_ESTIMATORS, COPY_CRITERIA, MITIGATIONS, PROMPT_SCORES):
        assert all(cls.name == name for name, cls in reg.items())
    assert set(MODEL_FREE_ESTIMATORS) <= set(LID_ESTIMATORS)
    with pytest.raises(MemgeoError, match="bad options for family 'gaussian': invalid parameters \\['bogus'\\]"):
        FAMILIES.build("gaussian", bogus=1)
