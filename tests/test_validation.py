"""The shared argument validators (:mod:`spherequant._validation`): accepted values come back in their
canonical type; every refusal raises the documented exception type with the argument's name in front."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spherequant._validation import (
    check_bool,
    check_callable,
    check_choice,
    check_finite,
    check_int,
    check_positive,
    check_real,
    check_seed,
)


@pytest.mark.parametrize("value", [0, 7, np.int8(7), np.uint64(7), -3])
def test_check_int_accepts_integers(value):
    out = check_int(value, "k")
    assert type(out) is int and out == int(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), 4.0, "4", None, np.array([4]), 1j])
def test_check_int_refuses_non_integers(value):
    with pytest.raises(TypeError, match=r"^k must be an integer, got "):
        check_int(value, "k")


@pytest.mark.parametrize(
    "value, kw, text",
    [
        (1, {"minimum": 2}, "k must be >= 2, got 1"),
        (33, {"minimum": 2, "maximum": 32}, r"k must be in \[2, 32\], got 33"),
        (5, {"maximum": 4}, "k must be <= 4, got 5"),
        (-1, {"minimum": 0}, "k must be >= 0, got -1"),
    ],
)
def test_check_int_bounds(value, kw, text):
    with pytest.raises(ValueError, match=text):
        check_int(value, "k", **kw)
    assert check_int(kw.get("minimum", kw.get("maximum")), "k", **kw) == kw.get("minimum", kw.get("maximum"))


@pytest.mark.parametrize("value", [0, 2.5, np.float32(0.25), np.int64(3), -1e300, 5e-324])
def test_check_real_accepts_finite_reals(value):
    out = check_real(value, "x")
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value", [True, "1", 1j, None, np.array(1.0), [1.0]])
def test_check_real_refuses_non_reals(value):
    with pytest.raises(TypeError, match=r"^x must be a real number, got "):
        check_real(value, "x")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_check_real_refuses_non_finite(value):
    with pytest.raises(ValueError, match=r"^x must be finite"):
        check_real(value, "x")


def test_check_real_bounds_inclusive_and_exclusive():
    assert check_real(0.0, "x", minimum=0.0) == 0.0
    with pytest.raises(ValueError, match=r"x must be positive \(> 0\), got 0.0"):
        check_real(0.0, "x", minimum=0.0, exclusive_minimum=True)
    assert check_real(1.0, "m", minimum=0.0, maximum=1.0, exclusive_minimum=True) == 1.0
    with pytest.raises(ValueError, match=r"m must be in \(0.0, 1.0\), got 1.0"):
        check_real(1.0, "m", minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True)
    with pytest.raises(ValueError, match=r"x must be <= 2.0, got 3.0"):
        check_real(3.0, "x", maximum=2.0)
    with pytest.raises(ValueError, match=r"x must be > 1.0, got 1.0"):
        check_real(1.0, "x", minimum=1.0, exclusive_minimum=True)


@pytest.mark.parametrize(
    "value, exc", [(0.0, ValueError), (-1.0, ValueError), (math.nan, ValueError), ("1", TypeError)]
)
def test_check_positive(value, exc):
    with pytest.raises(exc, match=r"^r_max must be"):
        check_positive(value, "r_max")
    assert check_positive(1e-300, "r_max") == 1e-300


def test_check_bool():
    assert check_bool(np.bool_(True), "flag") is True
    assert check_bool(False, "flag") is False
    for bad in (0, 1, "no", None, np.array(True)):
        with pytest.raises(TypeError, match=r"^flag must be a bool \(True or False\), got "):
            check_bool(bad, "flag")


def test_check_choice_compares_type_and_value():
    assert check_choice("log", "kind", ("uniform", "log")) == "log"
    for bad in ("LOG", 3, None, np.array(["log"]), 1.0):
        with pytest.raises(ValueError, match=r"^kind must be one of 'uniform', 'log'; got "):
            check_choice(bad, "kind", ("uniform", "log"))
    # 1 == True in Python, but a bool is not the integer choice 1
    with pytest.raises(ValueError, match=r"level"):
        check_choice(True, "level", (0, 1))


def test_check_callable():
    assert check_callable(len, "f") is len
    with pytest.raises(TypeError, match=r"^f must be the function under test, got int 3"):
        check_callable(3, "f", "the function under test")


def test_check_seed():
    g = np.random.default_rng(5)
    assert check_seed(g) is g
    a, b = check_seed(7).standard_normal(3), np.random.default_rng(7).standard_normal(3)
    np.testing.assert_array_equal(a, b)
    assert isinstance(check_seed(None), np.random.Generator)
    assert isinstance(check_seed(np.int32(3)), np.random.Generator)
    with pytest.raises(ValueError, match=r"^seed must be non-negative, got -1"):
        check_seed(-1)
    for bad in (True, 1.5, "abc"):
        with pytest.raises(TypeError, match=r"^rng_seed must be None, an integer or a numpy Generator"):
            check_seed(bad, "rng_seed")


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor])
def test_check_finite(make):
    check_finite(make(np.array([1.0, -1e300, 0.0])), "x")
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"^x contains NaN or infinite entries$"):
            check_finite(make(np.array([1.0, bad])), "x")
    t = torch.tensor([1.0, math.nan], requires_grad=True)
    with pytest.raises(ValueError, match=r"x contains NaN"):
        check_finite(t, "x")


def test_messages_shorten_huge_reprs():
    with pytest.raises(TypeError) as info:
        check_int("a" * 500, "k")
    assert len(str(info.value)) < 120, str(info.value)
