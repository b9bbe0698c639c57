"""memgeo.errors.check_scalar: the one validator for counts and bounded reals."""

import math

import numpy as np
import pytest

from memgeo.errors import MemgeoError, check_scalar


@pytest.mark.parametrize("value, kind, kwargs, expected", [
    (3, int, {}, 3),
    (np.int64(7), int, {"min": 1}, 7),
    (0, int, {"min": 0}, 0),
    (5, int, {"min": 1, "max": 5}, 5),
    (2, float, {"min": 0, "include_min": False}, 2.0),
    (np.float32(0.5), float, {"min": 0, "max": 1}, 0.5),
    (1.0, float, {"min": 0, "max": 1}, 1.0),
    (None, int, {"allow_none": True}, None),
])
def test_accepts_and_converts(value, kind, kwargs, expected):
    out = check_scalar(value, "p", kind, **kwargs)
    assert out == expected and type(out) is (type(None) if expected is None else kind)


@pytest.mark.parametrize("value, kind, kwargs, want", [
    (True, int, {}, "an integer"),            # bool is not an int
    (2.0, int, {}, "an integer"),             # nor is an integral float
    ("3", int, {}, "an integer"),
    (None, int, {}, "an integer"),
    (0, int, {"min": 1}, ">= 1"),
    (6, int, {"min": 1, "max": 5}, "in [1, 5]"),
    (5, int, {"min": 0, "max": 5, "include_max": False}, "in [0, 5)"),
    (0.0, float, {"min": 0, "include_min": False}, "> 0"),
    (math.nan, float, {}, "a finite number"),
    (math.inf, float, {"min": 0}, ">= 0"),
    (1.0, float, {"max": 1, "include_max": False}, "< 1"),
    (False, float, {}, "a finite number"),
])
def test_refuses_naming_parameter_and_fix(value, kind, kwargs, want):
    with pytest.raises(MemgeoError) as info:
        check_scalar(value, "my_param", kind, **kwargs)
    err = info.value
    assert err.problem.startswith(f"my_param={value!r} must be") and want in err.problem
    assert err.fix and "my_param" in err.fix


def test_custom_fix_and_bad_kind():
    with pytest.raises(MemgeoError, match="use the paper's n_mean=50"):
        check_scalar(1, "n_mean", min=2, fix="use the paper's n_mean=50")
    with pytest.raises(TypeError):
        check_scalar(1, "x", str)
