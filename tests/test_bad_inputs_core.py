"""Bad-input table of the core (issue 13): every public entry point x every applicable kind of bad input.

Each entry point is described once (:data:`ENTRIES`): its arguments, each with a *kind* (finite 3-vectors,
unit vectors, rotations, a count, a bit width, an option string, a seed, a device, ...) and a good value.
The rows are generated: for every argument, every bad value of its kind (:func:`_variants`) replaces the
good value, and the row asserts the exception type **and** that the message names the argument. Inputs
that are legitimately valid (tiny and huge scales, integer and half-precision arrays, empty batches,
hemisphere codebooks) are separate rows that assert a finite result equal to an independent computation
(a scale relation with the float64 result at unit scale, verified by the module's own tests, or a direct
formula).

:func:`test_every_public_entry_point_is_in_the_table` fails when a public name is added to the core without
a table entry (or an explicit, documented exclusion in :data:`EXCLUDED`).

Rows that fail because of a bug in a module this table's author does not own are marked
``xfail(strict=True)`` with the reason (they turn into failures once fixed, so the mark is removed then).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from e3nn import o3
from torch import nn

import spherequant
from spherequant import (
    bounds,
    codebook,
    comparison,
    equivariance,
    hypersphere,
    learn,
    lookup,
    plotting,
    quantize,
    scalar,
    so3,
    sphere,
    ste,
    strategies,
    symmetry,
)
from spherequant import irreps as qi

TV = (TypeError, ValueError)
NO_CUDA = not torch.cuda.is_available()

# ----------------------------------------------------------------------------------------------- good values
U4 = sphere.random_unit_vectors(4, seed=1)  # unit vectors
V4 = np.random.default_rng(2).standard_normal((4, 3))  # generic vectors
T4 = sphere.to_tangent(V4, U4)  # tangent vectors at U4
P4 = sphere.random_unit_vectors(4, seed=3)  # points (not antipodal to U4)
R4 = so3.random_rotation(4, seed=4)
Q4 = so3.matrix_to_quaternion(R4)
CB = codebook.fibonacci(32)
CB_PTS = np.array(CB.points)
X8 = np.random.default_rng(5).standard_normal((8,))  # scalar-quantizer data
HCB = hypersphere.HypersphereCodebook.random(16, dim=5, seed=0)


def _mq():
    return quantize.MagnitudeQuantizer(4, 2.0)


def _mddq_module():
    return quantize.MDDQ(CB, magnitude_bits=4, r_max=3.0)


def _identity_f(x):
    return x


# -------------------------------------------------------------------------------------------- kinds of bad
def _with(a: np.ndarray, value) -> np.ndarray:
    b = np.array(a, dtype=np.float64, copy=True)
    b.reshape(-1)[min(1, b.size - 1)] = value
    return b


def _array_bad(g: np.ndarray) -> list[tuple[str, Any, Any]]:
    """Bad values shared by every real-array argument with good value ``g`` (float64 numpy)."""
    return [
        ("nan", _with(g, np.nan), ValueError),
        ("inf", _with(g, np.inf), ValueError),
        ("-inf", _with(g, -np.inf), ValueError),
        ("nan-torch", torch.tensor(_with(g, np.nan)), ValueError),
        ("complex", g.astype(np.complex128), TypeError),
        ("complex-torch", torch.tensor(g, dtype=torch.complex128), TypeError),
        ("bool", g > 0, TypeError),
        ("bool-torch", torch.tensor(g > 0), TypeError),
        ("object", g.astype(object), TypeError),
        ("str", "abc", TypeError),
        ("str-array", np.full(g.shape, "a"), TypeError),
        ("None", None, TypeError),
        ("meta-device", torch.empty(g.shape, device="meta", dtype=torch.float64), ValueError),
    ]


def _torch_bad(g):
    """A torch-only argument: the numeric bad values as tensors (str/object/None stay as they are)."""
    out = []
    for label, value, exc in _array_bad(g):
        if isinstance(value, np.ndarray) and value.dtype.kind in "fcb":
            value = torch.tensor(value)
        out.append((label, value, exc))
    return [*out, ("numpy", np.asarray(g), TypeError)]


def _codes_bad(g):
    """Integer codes: floats (even integer-valued), bool, complex, str, object, None and meta are refused."""
    gi = np.asarray(g, dtype=np.int64)
    return [
        ("float", gi.astype(np.float64), TypeError),
        ("float-torch", torch.tensor(gi, dtype=torch.float32), TypeError),
        ("bool", gi > 1, TypeError),
        ("bool-torch", torch.tensor(gi > 1), TypeError),
        ("complex", gi.astype(np.complex128), TypeError),
        ("object", gi.astype(object), TypeError),
        ("str", "abc", TypeError),
        ("str-array", np.full(gi.shape, "a"), TypeError),
        ("None", None, TypeError),
    ]


def _index_bad(g):
    """Codes that index a table: also negative and too large."""
    gi = np.asarray(g, dtype=np.int64)
    return [*_codes_bad(g), ("negative", -gi - 1, ValueError), ("too-large", gi + 10**6, ValueError)]


def _vec3_bad(g):
    return [
        *_array_bad(g),
        ("wrong-shape", g[..., :2], ValueError),
        ("scalar", np.float64(1.0), ValueError),
    ]


def _unit3_bad(g):
    return [*_vec3_bad(g), ("not-unit", 2.0 * g, ValueError), ("zero", np.zeros_like(g), ValueError)]


def _rot_bad(g):
    return [
        *_array_bad(g),
        ("wrong-shape", g[..., :2], ValueError),
        ("reflection", -g, ValueError),
        ("not-orthogonal", 1.5 * g, ValueError),
        ("huge", 1e300 * g, ValueError),
        ("tiny", 1e-300 * g, ValueError),
    ]


def _points_bad(g):
    """A codeword set (K, 3): also zero rows and duplicates."""
    dup = np.array(g, copy=True)
    dup[1] = dup[0]
    zero = np.array(g, copy=True)
    zero[2] = 0.0
    return [*_vec3_bad(g), ("zero-row", zero, ValueError), ("duplicates", dup, ValueError)]


_COUNT_BAD = [
    ("zero", 0, ValueError),
    ("negative", -3, ValueError),
    ("float", 2.5, TV),
    ("integral-float", 4.0, TV),
    ("bool", True, TV),
    ("str", "4", TV),
    ("nan", float("nan"), TV),
    ("array", np.array([4, 5]), TV),
]
_BITS_BAD = [("one", 1, ValueError), ("zero", 0, ValueError), ("33", 33, ValueError), *_COUNT_BAD[2:]]
_POS_BAD = [
    ("zero", 0.0, ValueError),
    ("negative", -1.0, ValueError),
    ("nan", float("nan"), ValueError),
    ("inf", float("inf"), ValueError),
    ("str", "1", TV),
    ("bool", True, TV),
    ("complex", 1j, TV),
]
_NONNEG_BAD = [x for x in _POS_BAD if x[0] != "zero"]
_FINITE_BAD = [x for x in _POS_BAD if x[0] not in ("zero", "negative")]
_LABEL_BAD = [("int", 3, TypeError), ("None", None, TypeError)]
_CHOICE_BAD = [("unknown", "no-such-option", ValueError), ("int", 3, TV), ("None", None, TV)]
_FLAG_BAD = [("str", "no", TypeError), ("int", 2, TypeError), ("None", None, TypeError)]
_SEED_BAD = [("str", "abc", TV), ("float", 1.5, TV), ("negative", -1, ValueError), ("bool", True, TV)]
_DTYPE_BAD = [
    ("int-str", "int32", TV),
    ("np-int", np.int64, TV),
    ("torch-int", torch.int32, TV),
    ("unknown", "float99", TV),
    ("complex", np.complex128, TV),
]
_BACKEND_BAD = [("unknown", "jax", ValueError), ("int", 3, TV)]
_DEVICE_BAD = [
    ("unknown", "tpu", ValueError),
    ("meta", "meta", ValueError),
    ("float", 3.5, TV),
    *([("cuda-absent", "cuda:7", ValueError)] if NO_CUDA else []),
]
_CODEBOOK_BAD = [("array", np.eye(3), TypeError), ("str", "fibonacci", TypeError), ("None", None, TypeError)]
_CALLABLE_BAD = [("int", 3, TypeError), ("str", "f", TypeError), ("None", None, TypeError)]

# irreps: e3nn feature layouts, configs, models
IRR = "2x0e + 1x1o + 1x2e"  # dim 10: a scalar, an MDDQ vector and a degree-2 block
FEAT = np.random.default_rng(9).standard_normal((4, 10))


class _IrrepsIdentity(nn.Module):
    """The smallest module with e3nn's ``irreps_out`` attribute (its output is its input)."""

    irreps_out = o3.Irreps(IRR)

    def forward(self, x):
        return x


def _irreps_model():
    return nn.Sequential(_IrrepsIdentity(), nn.Identity())


def _is_irreps_identity(module, name):
    return isinstance(module, _IrrepsIdentity)


def _quantize_irreps_copy(module, config, filter_fn, irreps):
    """quantize_irreps_ on a copy (it works in place, and every row must start from the same model)."""
    if isinstance(module, nn.Sequential) and isinstance(module[0], _IrrepsIdentity):
        module = _irreps_model()
    return qi.quantize_irreps_(module, config, filter_fn, irreps=irreps)


def _e3nn_d1(r):
    return o3.Irrep("1o").D_from_matrix(r)


_IRREPS_BAD = [
    ("int", 3, TypeError),
    ("None", None, TypeError),
    ("list", [(1, (0, 1))], TypeError),
    ("bytes", b"1x0e", TypeError),
    ("tensor", torch.zeros(3), TypeError),
    ("garbage", "2x0q", ValueError),
    ("negative-mul", "-1x0e", ValueError),
]
#: irreps that must describe a module's output: also another dimension, or a callable giving a non-Irreps
_IRREPS_FOR_BAD = [*_IRREPS_BAD, ("wrong-dim", "1x0e", ValueError), ("callable-int", lambda m: 3, TypeError)]
_CONFIG_BAD = [
    ("int", 3, TypeError),
    ("str", "int8", TypeError),
    ("pairs", [("scalar", "minmax")], TypeError),
    ("unknown-option", {"bits": 4}, ValueError),
    ("non-str-option", {1: 2}, ValueError),
    ("bad-bits", {"scalar_bits": 1}, ValueError),
    ("float-bits", {"vector_bits": 8.0}, TypeError),
    ("bad-scheme", {"vector": "int4"}, ValueError),
    ("bad-group", {"higher_group": "X7"}, ValueError),
    ("bad-codebook", {"vector_codebook": np.eye(3)}, TypeError),
]
_CODEBOOKS_BAD = [
    ("list", [HCB], TypeError),
    ("str", "abc", TypeError),
    ("str-key", {"2": HCB}, TypeError),
    ("bool-key", {True: HCB}, TypeError),
    ("degree-1", {1: HCB}, ValueError),
    ("wrong-dim", {3: HCB}, ValueError),
    ("array-value", {2: np.eye(5)}, TypeError),
]
_MODULE_BAD = [
    ("int", 3, TypeError),
    ("None", None, TypeError),
    ("str", "model", TypeError),
    ("tensor", torch.zeros(2), TypeError),
    ("class", nn.Linear, TypeError),
    ("state-dict", {"w": torch.zeros(2)}, TypeError),
]
#: a model to prepare: also one in which nothing matches the selection
_MODEL_BAD = [*_MODULE_BAD, ("no-match", nn.Sequential(nn.ReLU()), ValueError)]
_D1_BAD = [
    ("int", 3, TypeError),
    ("str", "f", TypeError),
    ("wrong-shape", lambda r: r[:2], ValueError),
    ("nan", lambda r: r * math.nan, ValueError),
    ("not-a-matrix", lambda r: "D", ValueError),
    ("not-a-representation", lambda r: 2 * r, ValueError),
]


def _feat_bad(g):
    """e3nn features (..., dim) for a quantizer of IRR: torch floating tensors with the irreps' last axis and
    channel norms that fit the dtype (the MDDQ vector block is the first to overflow)."""
    return [
        *_torch_bad(g),
        ("int-torch", torch.tensor(np.round(g)).long(), TypeError),
        ("wrong-last-dim", torch.tensor(g[..., :-1]), ValueError),
        ("scalar", torch.tensor(1.0, dtype=torch.float64), ValueError),
        ("overflow-float64", torch.full(g.shape, 1.5e308, dtype=torch.float64), ValueError),
        ("overflow-float32", torch.full(g.shape, 3e38, dtype=torch.float32), ValueError),
        ("overflow-float16", torch.full(g.shape, 6e4, dtype=torch.float16), ValueError),
        ("overflow-bfloat16", torch.full(g.shape, 3e38, dtype=torch.bfloat16), ValueError),
    ]


KINDS: dict[str, Callable[[Any], list]] = {
    "vec3": _vec3_bad,
    "unit3": _unit3_bad,
    "rot": _rot_bad,
    "real": _array_bad,
    "treal": _torch_bad,
    "codes": _codes_bad,
    "index": _index_bad,
    "points": _points_bad,
    "count": lambda g: _COUNT_BAD,
    "bits": lambda g: _BITS_BAD,
    "pos": lambda g: _POS_BAD,
    "nonneg": lambda g: _NONNEG_BAD,
    "finite": lambda g: _FINITE_BAD,
    "label": lambda g: _LABEL_BAD,
    "choice": lambda g: _CHOICE_BAD,
    "flag": lambda g: _FLAG_BAD,
    "seed": lambda g: _SEED_BAD,
    "dtype": lambda g: _DTYPE_BAD,
    "backend": lambda g: _BACKEND_BAD,
    "device": lambda g: _DEVICE_BAD,
    "codebook": lambda g: _CODEBOOK_BAD,
    "callable": lambda g: _CALLABLE_BAD,
    "irreps": lambda g: _IRREPS_BAD,
    "irreps_for": lambda g: _IRREPS_FOR_BAD,
    "config": lambda g: _CONFIG_BAD,
    "codebooks": lambda g: _CODEBOOKS_BAD,
    "module": lambda g: _MODULE_BAD,
    "model": lambda g: _MODEL_BAD,
    "d1": lambda g: _D1_BAD,
    "feat": _feat_bad,
}


# --------------------------------------------------------------------------------------------- the entries
@dataclass
class Entry:
    """One public entry point: ``call(**kwargs)``, its arguments as ``name -> (kind, good value)``."""

    name: str
    call: Callable[..., Any]
    args: dict[str, tuple[str, Any]]
    #: (argument, variant) -> reason: rows that do not apply (the value is valid for this entry).
    skip: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (argument, variant) -> reason: known bugs in modules owned by others (strict xfail).
    xfail: dict[tuple[str, str], str] = field(default_factory=dict)
    #: name the message must contain, when it differs from the argument (e.g. a method's own wording).
    alias: dict[str, str] = field(default_factory=dict)
    #: (argument, variant) -> exception type, where it differs from the kind's default.
    expect: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: the array arguments must all be numpy or all torch: a tensor among numpy arrays is a TypeError.
    same_kind: bool = False


def _called(cls):
    """A scalar quantizer module that has seen data (its range or step is set)."""
    q = cls()
    q(torch.tensor(X8))
    return q


def _e(entry_name, call, skip=None, xfail=None, alias=None, expect=None, same_kind=False, **args):
    return Entry(entry_name, call, args, skip or {}, xfail or {}, alias or {}, expect or {}, same_kind)


_EMPTY_OK = "an empty batch is valid here (checked in the valid-input rows)"
_CB_OWNER = "codebook.py is owned by the codebook helper"
_LOOKUP_OWNER = "lookup.py is owned by the codebook helper"
_LEARN_OWNER = "learn.py is owned by the codebook helper"

ENTRIES: list[Entry] = [
    # ------------------------------------------------------------------------------------------ sphere
    _e("sphere.normalize", sphere.normalize, x=("vec3", V4), zero=("choice", "raise"), eps=("nonneg", 0.0)),
    _e("sphere.angle", sphere.angle, a=("vec3", V4), b=("vec3", P4), degrees=("flag", False)),
    _e("sphere.chord", sphere.chord, a=("vec3", U4), b=("vec3", P4)),
    _e("sphere.to_tangent", sphere.to_tangent, vector=("vec3", V4), base_point=("unit3", U4)),
    _e("sphere.exp_map", sphere.exp_map, tangent_vec=("vec3", T4), base_point=("unit3", U4)),
    _e(
        "sphere.log_map",
        sphere.log_map,
        point=("unit3", P4),
        base_point=("unit3", U4),
        antipodal_tol=("nonneg", 1e-12),
    ),
    _e(
        "sphere.random_unit_vectors",
        sphere.random_unit_vectors,
        n=("count", 3),
        seed=("seed", 0),
        dtype=("dtype", "float64"),
        backend=("backend", "torch"),
        device=("device", "cpu"),
        skip={("n", "zero"): "n = 0 gives an empty batch (valid)"},
    ),
    # --------------------------------------------------------------------------------------------- so3
    _e("so3.check_rotation", so3.check_rotation, R=("rot", R4), atol=("pos", 1e-6)),
    _e("so3.quaternion_to_matrix", so3.quaternion_to_matrix, q=("real", Q4)),
    _e("so3.matrix_to_quaternion", so3.matrix_to_quaternion, R=("rot", R4)),
    _e("so3.axis_angle_to_matrix", so3.axis_angle_to_matrix, rotvec=("vec3", V4)),
    _e("so3.matrix_to_axis_angle", so3.matrix_to_axis_angle, R=("rot", R4)),
    _e(
        "so3.angles_to_matrix",
        so3.angles_to_matrix,
        alpha=("real", np.array([0.1, 0.2])),
        beta=("real", np.array([0.3, 0.4])),
        gamma=("real", np.array([0.5, 0.6])),
    ),
    _e("so3.matrix_to_angles", so3.matrix_to_angles, R=("rot", R4)),
    _e(
        "so3.random_rotation",
        so3.random_rotation,
        n=("count", 3),
        seed=("seed", 0),
        dtype=("dtype", "float64"),
        backend=("backend", "torch"),
        device=("device", "cpu"),
        skip={("n", "zero"): "n = 0 gives an empty batch (valid)"},
    ),
    _e("so3.wigner_D", so3.wigner_D, l=("count", 2), R=("rot", R4), skip={("l", "zero"): "l = 0 is valid"}),
    _e(
        "so3.wigner_D_from_angles",
        so3.wigner_D_from_angles,
        l=("count", 2),
        alpha=("real", np.array([0.1])),
        beta=("real", np.array([0.3])),
        gamma=("real", np.array([0.5])),
        skip={("l", "zero"): "l = 0 is valid"},
    ),
    # ------------------------------------------------------------------------------------------ bounds
    _e("bounds.angle_to_chord", bounds.angle_to_chord, angle=("real", np.array([0.1, 1.0]))),
    _e("bounds.chord_to_angle", bounds.chord_to_angle, chord=("real", np.array([0.1, 1.0]))),
    _e("bounds.direction_error_bound", bounds.direction_error_bound, delta=("real", np.array([0.1, 0.2]))),
    _e(
        "bounds.commutation_error_bound",
        bounds.commutation_error_bound,
        delta=("real", np.array([0.1, 0.2])),
        magnitude=("real", np.array([1.0, 2.0])),
    ),
    _e(
        "bounds.mddq_error_bound",
        bounds.mddq_error_bound,
        r=("real", np.array([1.0, 2.0])),
        q_r=("real", np.array([1.1, 2.0])),
        delta=("real", np.array([0.1, 0.2])),
    ),
    _e(
        "bounds.fejes_toth_covering_radius",
        bounds.fejes_toth_covering_radius,
        n=("count", 12),
        degrees=("flag", False),
        skip={("n", "negative"): "see zero"},
    ),
    _e(
        "bounds.asymptotic_covering_radius",
        bounds.asymptotic_covering_radius,
        n=("count", 12),
        degrees=("flag", False),
    ),
    # ---------------------------------------------------------------------------------------- quantize
    _e("scalar.code_dtype", scalar.code_dtype, n_values=("count", 300), backend=("backend", "numpy")),
    _e(
        "quantize.bits_per_vector",
        quantize.bits_per_vector,
        magnitude_bits=("count", 4),
        num_codewords=("count", 642),
        skip={("magnitude_bits", "zero"): "0 magnitude bits is valid (unit vectors)"},
    ),
    _e(
        "scalar.symmetric_scale",
        scalar.symmetric_scale,
        x=("real", X8),
        bits=("bits", 8),
        method=("choice", "percentile"),
        percentile=("pos", 99.0),
    ),
    _e(
        "scalar.quantize_symmetric",
        scalar.quantize_symmetric,
        x=("real", X8),
        scale=("pos", 0.1),
        bits=("bits", 8),
    ),
    _e(
        "scalar.fake_quantize_symmetric",
        scalar.fake_quantize_symmetric,
        x=("real", X8),
        bits=("bits", 8),
        scale=("pos", 0.1),
    ),
    _e("scalar.minmax_params", scalar.minmax_params, x=("real", X8), bits=("bits", 8)),
    _e(
        "scalar.quantize_minmax",
        scalar.quantize_minmax,
        x=("real", X8),
        scale=("pos", 0.1),
        zero_point=("real", 10),
        bits=("bits", 8),
    ),
    _e(
        "scalar.fake_quantize_minmax",
        scalar.fake_quantize_minmax,
        x=("real", X8),
        bits=("bits", 8),
        scale=("pos", 0.1),
        zero_point=("real", 10),
        expect={("zero_point", "None"): ValueError},  # "scale and zero_point must be given together"
    ),
    _e(
        "scalar.dequantize",
        scalar.dequantize,
        codes=("codes", np.array([1, 2, 3])),
        scale=("pos", 0.1),
        zero_point=("real", 1),
        dtype=("dtype", np.float64),
        same_kind=True,
    ),
    _e(
        "scalar.fake_quantize_lsq",
        scalar.fake_quantize_lsq,
        x=("treal", torch.tensor(X8)),
        step=("treal", torch.tensor(0.1, dtype=torch.float64)),
        bits=("bits", 8),
        signed=("flag", True),
        grad_scale=("pos", 1.0),
    ),
    _e(
        "scalar.learned_step",
        scalar.learned_step,
        step=("treal", torch.tensor([0.1, -0.2], dtype=torch.float64)),
    ),
    _e(
        "scalar.SymmetricQuantizer",
        scalar.SymmetricQuantizer,
        bits=("bits", 8),
        method=("choice", "maxabs"),
        percentile=("pos", 99.0),
        momentum=("pos", 0.1),
    ),
    _e(
        "scalar.SymmetricQuantizer.forward",
        lambda x: scalar.SymmetricQuantizer()(x),
        x=("treal", torch.tensor(X8)),
    ),
    _e("scalar.MinMaxQuantizer", scalar.MinMaxQuantizer, bits=("bits", 8), momentum=("pos", 0.1)),
    _e(
        "scalar.MinMaxQuantizer.forward",
        lambda x: scalar.MinMaxQuantizer()(x),
        x=("treal", torch.tensor(X8)),
    ),
    _e(
        "scalar.LSQQuantizer",
        scalar.LSQQuantizer,
        bits=("bits", 8),
        signed=("flag", True),
        grad_scale=("pos", 1.0),
    ),
    _e("scalar.LSQQuantizer.forward", lambda x: scalar.LSQQuantizer()(x), x=("treal", torch.tensor(X8))),
    _e(
        "scalar.soft_clamp",
        scalar.soft_clamp,
        x=("treal", torch.tensor(X8)),
        lo=("finite", -1.0),
        hi=("finite", 1.0),
        width=("nonneg", 0.1),
    ),
    *[
        _e(
            f"scalar.{cls.__name__}.{method}",
            lambda dtype, c=cls, m=method: getattr(_called(c), m)(dtype),
            dtype=("dtype", torch.float32),
        )
        for cls in (scalar.SymmetricQuantizer, scalar.MinMaxQuantizer, scalar.LSQQuantizer)
        for method in ("clip_range", "grid_step")
    ],
    *[
        _e(
            f"scalar.{cls.__name__}.saturate",
            lambda x, width, c=cls: _called(c).saturate(x, width),
            x=("treal", torch.tensor(X8)),
            width=("nonneg", 0.5),
        )
        for cls in (scalar.LSQQuantizer,)  # (the observers' saturate is inherited: not a public name)
    ],
    _e(
        "quantize.MagnitudeQuantizer",
        quantize.MagnitudeQuantizer,
        bits=("bits", 4),
        r_max=("pos", 2.0),
        kind=("choice", "log"),
        r_min=("pos", 0.01),
        skip={("bits", "33"): "bits above 16 raise too (checked by 'one'/'zero'); 33 is just another"},
    ),
    _e("quantize.MagnitudeQuantizer.encode", lambda r: _mq().encode(r), r=("real", np.abs(X8))),
    _e("quantize.MagnitudeQuantizer.quantize", lambda r: _mq().quantize(r), r=("real", np.abs(X8))),
    _e("quantize.MagnitudeQuantizer.forward", lambda r: _mq().forward(r), r=("real", np.abs(X8))),
    _e(
        "quantize.MagnitudeQuantizer.decode",
        lambda codes, dtype: _mq().decode(codes, dtype),
        codes=("index", np.array([1, 2, 3])),
        dtype=("dtype", np.float64),
    ),
    _e(
        "quantize.mddq",
        quantize.mddq,
        v=("vec3", V4),
        codebook=("codebook", CB),
        magnitude_quantizer=("codebook", _mq()),
        direction_ste=("choice", "geometric"),
    ),
    _e(
        "quantize.MDDQ",
        quantize.MDDQ,
        codebook=("codebook", CB),
        magnitude_bits=("bits", 4),
        magnitude=("choice", "log"),
        r_max=("pos", 3.0),
        r_min=("pos", 0.01),
        direction_ste=("choice", "plain"),
    ),
    _e("quantize.MDDQ.forward", lambda v: _mddq_module()(v), v=("vec3", V4)),
    _e(
        "quantize.MDDQ.saturate",
        lambda v, width: _mddq_module().saturate(v, width),
        v=("vec3", V4),
        width=("nonneg", 0.5),
    ),
    _e(
        "quantize.clip_magnitude",
        quantize.clip_magnitude,
        v=("vec3", V4),
        r_max=("pos", 2.0),
        width=("nonneg", 0.1),
        skip={("v", "wrong-shape"): "any last axis is a vector dimension (features on S^(d-1))"},
    ),
    _e("quantize.MDDQ.encode", lambda v: _mddq_module().encode(v), v=("vec3", V4)),
    _e("quantize.MDDQ.observe", lambda v: quantize.MDDQ(CB).observe(v), v=("vec3", V4)),
    _e(
        "quantize.MDDQ.decode",
        lambda mag_idx, dir_idx, dtype: _mddq_module().decode(mag_idx, dir_idx, dtype),
        mag_idx=("index", np.array([1, 2])),
        dir_idx=("index", np.array([3, 4])),
        dtype=("dtype", np.float64),
        same_kind=True,
    ),
    _e("hypersphere.HypersphereCodebook", hypersphere.HypersphereCodebook, points=("real", HCB.points[:6])),
    _e(
        "hypersphere.HypersphereCodebook.nearest",
        lambda x, chunk: HCB.nearest(x, chunk=chunk),
        x=("real", np.ones((2, 5))),
        chunk=("count", 4),
    ),
    _e("hypersphere.HypersphereCodebook.quantize", lambda x: HCB.quantize(x), x=("real", np.ones((2, 5)))),
    _e(
        "hypersphere.HypersphereCodebook.covering_radius_estimate",
        lambda n_samples, seed: HCB.covering_radius_estimate(n_samples, seed),
        n_samples=("count", 100),
        seed=("seed", 0),
    ),
    _e(
        "hypersphere.HypersphereCodebook.random",
        hypersphere.HypersphereCodebook.random,
        n=("count", 8),
        dim=("count", 4),
        seed=("seed", 0),
    ),
    _e(
        "hypersphere.HypersphereCodebook.kmeans",
        hypersphere.HypersphereCodebook.kmeans,
        data=("real", np.random.default_rng(0).standard_normal((20, 4))),
        n=("count", 3),
        iterations=("count", 5),
        seed=("seed", 0),
        skip={("iterations", "zero"): "0 iterations is valid (the initial centres)"},
    ),
    _e(
        "comparison.compare_vector_quantizers",
        comparison.compare_vector_quantizers,
        n=("count", 50),
        seed=("seed", 0),
        sweep=("flag", False),
        sweep_n=("count", 20),
        magnitude=("choice", "uniform"),
    ),
    # --------------------------------------------------------------------------------------------- ste
    _e("ste.ste_round", ste.ste_round, x=("real", X8)),
    _e(
        "ste.plain_ste",
        ste.plain_ste,
        v=("real", X8),
        v_q=("real", np.round(X8)),
        same_kind=True,
        expect={("v", "meta-device"): ValueError, ("v_q", "meta-device"): ValueError},
    ),
    _e(
        "ste.geometric_ste",
        ste.geometric_ste,
        v=("vec3", V4),
        v_q=("vec3", np.round(V4)),
        same_kind=True,
        expect={("v", "meta-device"): ValueError, ("v_q", "meta-device"): ValueError},
    ),
    # ------------------------------------------------------------------------------------- equivariance
    _e(
        "equivariance.lee",
        equivariance.lee,
        f=("callable", _identity_f),
        x=("vec3", V4),
        rotations=("rot", R4),
        reduce=("choice", "max"),
    ),
    _e(
        "equivariance.commutation_error",
        equivariance.commutation_error,
        quantizer=("callable", CB.quantize),
        rotations=("rot", R4),
        u=("vec3", U4),
        reduce=("choice", "max"),
    ),
    _e(
        "equivariance.lie_derivative",
        equivariance.lie_derivative,
        f=("callable", _identity_f),
        x=("vec3", V4),
        method=("choice", "fd"),
        step=("pos", 1e-4),
        reduce=("choice", "max"),
    ),
    _e(
        "equivariance.assert_equivariant",
        equivariance.assert_equivariant,
        f=("callable", _identity_f),
        x=("vec3", V4),
        n_rotations=("count", 2),
        atol=("nonneg", 1e-9),
        seed=("seed", 0),
    ),
    # ----------------------------------------------------------------------------------------- symmetry
    _e("symmetry.rotation_group", symmetry.rotation_group, name=("choice", "T")),
    _e("symmetry.symmetry_group", symmetry.symmetry_group, name=("choice", "O")),
    _e(
        "symmetry.generate_group",
        symmetry.generate_group,
        generators=("rot", symmetry.rotation_group("T")[1:3]),
        tol=("pos", 1e-9),
        max_order=("count", 100),
    ),
    _e(
        "symmetry.induced_permutation",
        symmetry.induced_permutation,
        rotation=("rot", np.eye(3)),
        codebook=("points", np.array(codebook.octahedron().points)),
        tol=("pos", 1e-8),
        skip={("rotation", "wrong-shape"): "covered"},
    ),
    _e(
        "symmetry.codebook_symmetry_group",
        symmetry.codebook_symmetry_group,
        codebook=("points", np.array(codebook.octahedron().points)),
        tol=("pos", 1e-8),
        return_permutations=("flag", False),
    ),
    # ----------------------------------------------------------------------------------------- plotting
    _e("plotting.cell_radii", plotting.cell_radii, points=("points", np.array(codebook.octahedron().points))),
    _e(
        "plotting.plot_voronoi",
        plotting.plot_voronoi,
        codebook=("codebook", codebook.octahedron()),
        elev=("finite", 20.0),
        cmap=("choice", "viridis"),
    ),
    # ----------------------------------------------------------------------- codebook (owned by others)
    _e(
        "codebook.Codebook",
        codebook.Codebook,
        points=("points", CB_PTS[:8]),
        kind=("label", "custom"),
    ),
    _e("codebook.Codebook.nearest", CB.nearest, x=("vec3", V4)),
    _e("codebook.Codebook.prepare_nearest", CB.prepare_nearest, dtype=("choice", "float32")),
    _e("codebook.Codebook.quantize", CB.quantize, x=("vec3", V4)),
    _e("codebook.Codebook.rotated", CB.rotated, rotation=("rot", R4[0])),
    _e("codebook.Codebook.covering_radius", CB.covering_radius, degrees=("flag", False)),
    _e("codebook.Codebook.min_separation", CB.min_separation, degrees=("flag", False)),
    _e("codebook.fibonacci", codebook.fibonacci, n=("count", 16), pole_corrected=("flag", False)),
    _e("codebook.healpix", codebook.healpix, nside=("count", 2)),
    _e(
        "codebook.geodesic",
        codebook.geodesic,
        i=("count", 2),
        j=("count", 1),
        skip={("j", "zero"): "j = 0 is the mirror-symmetric class (i, 0)"},
    ),
    _e(
        "codebook.icosahedral",
        codebook.icosahedral,
        level=("count", 1),
        skip={("level", "zero"): "level 0 is the icosahedron"},
    ),
    _e(
        "codebook.kmeans",
        codebook.kmeans,
        data=("vec3", np.random.default_rng(0).standard_normal((30, 3))),
        n=("count", 4),
        seed=("seed", 0),
        iterations=("count", 5),
        tol=("pos", 1e-10),
        skip={("tol", "zero"): "tol = 0 is valid (stop only when the centres stop moving)"},
    ),
    _e("codebook.random", codebook.random, n=("count", 8), seed=("seed", 0)),
    _e("codebook.learned", codebook.learned, n=("count", 6), seed=("seed", 0), progress=("flag", False)),
    # --------------------------------------------------------------------------- lookup (owned by others)
    _e(
        "lookup.NearestIndex",
        lookup.NearestIndex,
        points=("points", CB_PTS),
        grid=("count", 4),
        density=("pos", 1.0),
    ),
    _e(
        "lookup.NearestIndex.query",
        lambda x, backend: lookup.NearestIndex(CB_PTS).query(x, backend=backend),
        x=("vec3", V4),
        backend=("backend", "numpy"),
    ),
    _e("lookup.brute_force_nearest", lookup.brute_force_nearest, points=("points", CB_PTS), x=("vec3", V4)),
    _e("lookup.cube_cell", lookup.cube_cell, x=("vec3", V4), grid=("count", 4)),
    _e("lookup.fibonacci_nearest", lookup.fibonacci_nearest, x=("vec3", V4), n=("count", 32)),
    # ---------------------------------------------------------------------------- learn (owned by others)
    _e("learn.hull_holes", learn.hull_holes, points=("points", CB_PTS)),
    _e(
        "learn.pole_corrected_fibonacci",
        learn.pole_corrected_fibonacci,
        n=("count", 16),
        offset=("nonneg", 0.25),
    ),
    _e(
        "learn.spherical_kmeans",
        learn.spherical_kmeans,
        data=("vec3", np.random.default_rng(0).standard_normal((30, 3))),
        n=("count", 4),
        seed=("seed", 0),
        iterations=("count", 5),
        tol=("pos", 1e-10),
        skip={("tol", "zero"): "tol = 0 is valid (stop only when the centres stop moving)"},
    ),
    _e(
        "learn.minimax_codebook",
        learn.minimax_codebook,
        n=("count", 6),
        seed=("seed", 0),
        restarts=("count", 1),
        iterations=("count", 5),
        slp_iterations=("count", 5),
        progress=("flag", False),
        cache=("flag", False),
        skip={
            ("iterations", "zero"): "0 cap-centre iterations is a valid setting (the LP steps still run)",
            ("slp_iterations", "zero"): "0 LP steps is a valid setting (the cap-centre steps still run)",
        },
    ),
    # ------------------------------------------------------------------------------------ strategies
    _e(
        "strategies.codebooks",
        lambda kinds, min_size: strategies.codebooks(kinds, min_size=min_size, max_size=20),
        kinds=("choice", ("fibonacci",)),
        min_size=("count", 4),
    ),
    _e("strategies.unit_vectors", strategies.unit_vectors, dtype=("dtype", np.float64)),
    _e(
        "strategies.vectors",
        strategies.vectors,
        dtype=("dtype", np.float64),
        min_norm=("nonneg", 0.0),
        max_norm=("pos", 10.0),
        skip={("max_norm", "zero"): "max_norm = 0 with min_norm = 0 draws zero vectors (valid)"},
    ),
    _e("strategies.rotations", strategies.rotations, dtype=("dtype", np.float64), haar_only=("flag", False)),
    _e(
        "strategies.point_clouds",
        strategies.point_clouds,
        n_points=("count", 3),
        dtype=("dtype", np.float64),
        min_distance=("pos", 1.0),
        skip={("n_points", "zero"): "an empty point cloud is valid"},
    ),
    _e(
        "strategies.vector_fields",
        strategies.vector_fields,
        n_points=("count", 3),
        dtype=("dtype", np.float64),
        unit=("flag", False),
        skip={("n_points", "zero"): "an empty vector field is valid"},
    ),
    # ------------------------------------------------------------------------------------------- irreps
    _e(
        "irreps.IrrepsQuantConfig",
        qi.IrrepsQuantConfig,
        scalar=("choice", "minmax"),
        scalar_bits=("bits", 8),
        vector=("choice", "mddq"),
        vector_codebook=("codebook", CB),
        magnitude_bits=("bits", 6),
        magnitude=("choice", "log"),
        direction_ste=("choice", "plain"),
        vector_bits=("bits", 8),
        higher=("choice", "mddq"),
        higher_bits=("bits", 8),
        higher_codebooks=("codebooks", {2: HCB}),
        higher_codebook_size=("count", 240),
        higher_group=("choice", "octahedral"),
        skip={("vector_codebook", "None"): "None selects the default codebook (icosahedral(4))"},
    ),
    _e(
        "irreps.IrrepsQuantConfig.from_dict",
        qi.IrrepsQuantConfig.from_dict,
        options=("config", {"scalar": "minmax"}),
    ),
    _e(
        "irreps.IrrepsQuantizer",
        qi.IrrepsQuantizer,
        irreps=("irreps", IRR),
        config=("config", {"vector_codebook": CB, "higher": "mddq", "higher_codebooks": {2: HCB}}),
    ),
    _e(
        "irreps.IrrepsQuantizer.forward", lambda x: qi.IrrepsQuantizer(IRR)(x), x=("feat", torch.tensor(FEAT))
    ),
    _e(
        "irreps.IrrepsQuantizer.calibrate",
        lambda mode: qi.IrrepsQuantizer(IRR).calibrate(mode),
        mode=("flag", False),
    ),
    _e(
        "irreps.orbit_codebook",
        qi.orbit_codebook,
        l=("count", 2),
        n=("count", 120),
        group=("choice", "icosahedral"),
        antipodal=("flag", True),
        seed=("seed", 0),
    ),
    _e(
        "irreps.l1_change_of_basis",
        qi.l1_change_of_basis,
        d_from_matrix=("d1", _e3nn_d1),
    ),
    _e(
        "irreps.quantize_irreps_",
        _quantize_irreps_copy,
        module=("model", _irreps_model()),
        config=("config", {"vector_codebook": CB}),
        filter_fn=("callable", _is_irreps_identity),
        irreps=("irreps_for", IRR),
        skip={("irreps", "None"): "None takes the modules' irreps_out (valid)"},
        expect={("filter_fn", "None"): ValueError},  # "give exactly one of filter_fn (...), names or types"
    ),
    _e("irreps.irreps_quantizers", qi.irreps_quantizers, module=("module", _irreps_model())),
    _e(
        "irreps.set_irreps_calibration",
        qi.set_irreps_calibration,
        module=("module", _irreps_model()),
        mode=("flag", False),
    ),
    _e(
        "irreps.remove_irreps_quantization_",
        qi.remove_irreps_quantization_,
        module=("module", _irreps_model()),
    ),
]

#: Public names deliberately not in the table, with the reason.
EXCLUDED: dict[str, str] = {
    "spherequant.__version__": "a string constant",
    "strategies.CODEBOOK_KINDS": "a constant tuple",
    "symmetry.GROUP_ORDERS": "a constant dict",
    "equivariance.EquivarianceResult": "a result record built by the library, not an entry point",
    "learn.cache_dir": "no arguments (reads an environment variable; tested in test_learn)",
    "learn.shipped_table": "no arguments",
    "codebook.Codebook.nearest_unchecked": "deliberately unchecked, for inference loops that validated "
    "their queries (tested equal to nearest in test_codebook)",
    "quantize.MagnitudeQuantizer.level_tensors": "only a dtype/device template tensor, its values "
    "unused (non-tensors refused: test_quantize)",
    "codebook.cube": "no arguments",
    "codebook.dodecahedron": "no arguments",
    "codebook.icosahedron": "no arguments",
    "codebook.octahedron": "no arguments",
    "codebook.tetrahedron": "no arguments",
    "plotting.plot_error_vs_bits": "takes the dict returned by compare_vector_quantizers (tested there)",
    "codebook.Codebook.deepest_hole": "no arguments",
    "codebook.Codebook.fejes_toth_ratio": "no arguments",
    "lookup.NearestIndex.table": "internal accelerator table (its dtype option is tested in test_lookup)",
    "lookup.NearestIndex.stats": "diagnostics of the lookup helper",
    "lookup.NearestIndex.query_unchecked": "deliberately unchecked, for inference loops that validated "
    "their queries (tested equal to query in test_codebook)",
    "quantize.MDDQ.calibrate": "a mode switch (bool)",
    "quantize.MDDQ.freeze": "no arguments",
    "quantize.MDDQ.get_extra_state": "torch state-dict protocol",
    "quantize.MDDQ.set_extra_state": "torch state-dict protocol",
    "quantize.MDDQ.extra_repr": "torch repr protocol",
    "scalar.LSQQuantizer.initialize": "called by forward (same checks)",
    "scalar.LSQQuantizer.extra_repr": "torch repr protocol",
    "scalar.MinMaxQuantizer.params": "no data argument",
    "scalar.MinMaxQuantizer.observe": "called by forward (same checks)",
    "scalar.MinMaxQuantizer.extra_repr": "torch repr protocol",
    "scalar.SymmetricQuantizer.observe": "called by forward (same checks)",
    "scalar.SymmetricQuantizer.extra_repr": "torch repr protocol",
    "irreps.IrrepsQuantConfig.naive_int8": "no arguments",
    "irreps.IrrepsQuantizer.bits_report": "no arguments",
    "irreps.IrrepsQuantizer.freeze": "no arguments",
    "irreps.IrrepsQuantizer.extra_repr": "torch repr protocol",
}

#: Whole modules not yet in the table, with the reason. Keep this empty: a module listed here has no rows.
PENDING_MODULES: dict[str, str] = {}

# Rows that fail because of bugs in files owned by others: (entry, argument, variant) -> reason.
_FLAG_BUG = "accepts any truthy/falsy value for a bool flag (should raise TypeError naming it)"
_META_BUG = "a meta-device tensor fails inside .cpu() with NotImplementedError instead of a named ValueError"
_REAL_BUG = "does not validate this real parameter (str/bool/NaN/inf/non-positive accepted)"
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}


def _message_names(msg: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", msg) is not None


def _good_kwargs(entry: Entry) -> dict[str, Any]:
    out = {}
    for k, (_, good) in entry.args.items():
        out[k] = good.clone() if isinstance(good, torch.Tensor) else good
    return out


def _rows():
    rows = []
    for entry in ENTRIES:
        for arg, (kind, good) in entry.args.items():
            g = good.numpy() if isinstance(good, torch.Tensor) else good
            for variant, value, exc in KINDS[kind](
                np.asarray(g, dtype=np.float64) if kind in _ARRAY_KINDS else g
            ):
                key = (arg, variant)
                if key in entry.skip:
                    continue
                marks = []
                reason = entry.xfail.get(key) or KNOWN_BUGS.get((entry.name, arg, variant))
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                if entry.same_kind and isinstance(value, torch.Tensor) and kind != "treal":
                    exc = TypeError
                exc = entry.expect.get(key, exc)
                rows.append(
                    pytest.param(entry, arg, value, exc, id=f"{entry.name}-{arg}-{variant}", marks=marks)
                )
    return rows


_ARRAY_KINDS = {"vec3", "unit3", "rot", "real", "points", "treal", "codes", "index", "feat"}


@pytest.mark.parametrize(("entry", "arg", "value", "exc"), _rows())
def test_bad_input(entry: Entry, arg: str, value: Any, exc):
    kwargs = _good_kwargs(entry)
    kwargs[arg] = value
    with pytest.raises(exc) as info:
        entry.call(**kwargs)
    name = entry.alias.get(arg, arg)
    assert _message_names(str(info.value), name), f"message does not name {name!r}: {info.value}"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_good_values_of_the_table_are_accepted(entry: Entry):
    """The good values really are valid (so each bad row changes exactly one thing)."""
    entry.call(**_good_kwargs(entry))


# ------------------------------------------------------------------------------------------- coverage
def _public_names() -> set[str]:
    names = set()
    for mod_name in spherequant.__all__:
        if mod_name == "__version__":
            names.add("spherequant.__version__")
            continue
        mod = importlib.import_module(f"spherequant.{mod_name}")
        for n in mod.__all__:
            obj = getattr(mod, n)
            names.add(f"{mod_name}.{n}")
            if isinstance(obj, type) and obj.__module__.startswith("spherequant"):
                for attr, val in vars(obj).items():
                    if attr.startswith("_") or isinstance(val, property):
                        continue
                    if callable(val) or isinstance(val, (classmethod, staticmethod)):
                        names.add(f"{mod_name}.{n}.{attr}")
    return names


def test_every_public_entry_point_is_in_the_table():
    covered = {e.name for e in ENTRIES}
    public = {n for n in _public_names() if n.split(".")[0] not in PENDING_MODULES}
    missing = sorted(public - covered - set(EXCLUDED))
    assert not missing, (
        f"public entry points without bad-input rows (add an Entry or an EXCLUDED reason): {missing}"
    )
    stale = sorted((covered | set(EXCLUDED)) - public)
    assert not stale, f"table entries for names that are no longer public: {stale}"


# ------------------------------------------------------------------------------------ valid unusual inputs
# Tiny and huge scales (powers of two, so that scaling is exact), integer and half-precision arrays, empty
# batches and hemisphere codebooks are valid: each row checks a finite result against an independent value
# (a scale relation with the float64 result at unit scale, or a direct formula).
SCALES = [2.0**-1000, 2.0**-600, 2.0**-60, 2.0**60, 2.0**600, 2.0**1000]
A4 = np.random.default_rng(8).standard_normal((4, 3))
HALF = {
    "float16": (lambda a: a.astype(np.float16), 2e-3),
    "torch-float16": (lambda a: torch.tensor(a).half(), 2e-3),
    "bfloat16": (lambda a: torch.tensor(a).to(torch.bfloat16), 2e-2),
    "int64": (lambda a: np.round(4 * a).astype(np.int64), 0.0),
}


def _f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _close(got, ref, rtol: float, what: str) -> None:
    got, ref = _f64(got), _f64(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite result {got}"
    err = np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    scale_err = np.abs(got - ref) / max(float(np.abs(ref).max(initial=0.0)), np.finfo(np.float64).tiny)
    worst = float(np.minimum(err, scale_err).max(initial=0.0))
    assert worst <= rtol, f"{what}: relative error {worst:.3e} > {rtol:.1e}\n got {got}\n ref {ref}"


def _mq3(r_max=3.0):
    return quantize.MagnitudeQuantizer(4, r_max)


# name -> (f(x), relation): "invariant" f(s x) == f(x); "homogeneous" f(s x) == s f(x).
SCALE_CASES: dict[str, tuple[Callable, str]] = {
    "sphere.normalize": (sphere.normalize, "invariant"),
    "sphere.angle": (lambda x: sphere.angle(x, U4), "invariant"),
    "sphere.chord": (lambda x: sphere.chord(x, 0.5 * x), "homogeneous"),
    "sphere.to_tangent": (lambda x: sphere.to_tangent(x, U4), "homogeneous"),
    "so3.quaternion_to_matrix": (
        lambda x: so3.quaternion_to_matrix(np.concatenate([x, x[:, :1]], 1)),
        "invariant",
    ),
    "codebook.Codebook.nearest": (CB.nearest, "invariant"),
    "codebook.Codebook.quantize": (CB.quantize, "invariant"),
    "lookup.brute_force_nearest": (lambda x: lookup.brute_force_nearest(CB_PTS, x), "invariant"),
    "lookup.cube_cell": (lambda x: lookup.cube_cell(x, 4), "invariant"),
    "lookup.fibonacci_nearest": (lambda x: lookup.fibonacci_nearest(x, 32), "invariant"),
    "hypersphere.HypersphereCodebook.nearest": (
        lambda x: HCB.nearest(np.concatenate([x, x[:, :2]], 1)),
        "invariant",
    ),
    "scalar.symmetric_scale": (lambda x: scalar.symmetric_scale(x, 8), "homogeneous"),
    "scalar.minmax_params": (lambda x: scalar.minmax_params(x, 8)[0], "homogeneous"),
    "scalar.minmax_params.zero_point": (lambda x: scalar.minmax_params(x, 8)[1], "invariant"),
    "scalar.fake_quantize_symmetric": (lambda x: scalar.fake_quantize_symmetric(x, 6), "homogeneous"),
    "scalar.fake_quantize_minmax": (lambda x: scalar.fake_quantize_minmax(x, 6), "homogeneous"),
    "hypersphere.HypersphereCodebook": (lambda x: hypersphere.HypersphereCodebook(x).points, "invariant"),
    "equivariance.commutation_error": (
        lambda x: equivariance.commutation_error(lambda u: 2.0 * u, R4, x, reduce="none"),
        "homogeneous",
    ),
    "equivariance.lee": (lambda x: equivariance.lee(lambda p: p + x[0], x, R4, reduce="none"), "homogeneous"),
    "ste.geometric_ste": (lambda x: ste.geometric_ste(x, 0.5 * x), "homogeneous"),
}


@pytest.mark.parametrize("scale", SCALES, ids=[f"2^{int(math.log2(s))}" for s in SCALES])
@pytest.mark.parametrize("case", sorted(SCALE_CASES))
def test_valid_tiny_and_huge_scales(case, scale):
    f, relation = SCALE_CASES[case]
    ref = _f64(f(A4))
    got = f(A4 * scale)
    if relation == "homogeneous":
        ref = ref * scale
    tol = 1e-9 if case.startswith("equivariance") else 4e-16 if case != "sphere.angle" else 1e-15
    _close(got, ref, tol, f"{case} at scale {scale:g}")


def test_valid_mddq_scales_with_its_range():
    """mddq(s v; r_max s) = s mddq(v; r_max) for powers of two s (every level scales exactly)."""
    ref = _f64(quantize.mddq(A4, CB, _mq3()))
    for s in SCALES:
        _close(quantize.mddq(A4 * s, CB, _mq3(3.0 * s)), ref * s, 0.0, f"mddq at {s:g}")


def test_valid_tiny_tangents_and_rotation_vectors():
    """exp_u(v) = u + v and R(v) = I + [v]x to first order: exact in float64 below |v| ~ 1e-9."""
    for s in (1e-300, 1e-200, 1e-20):
        _close(sphere.exp_map(T4 * s, U4), U4 + T4 * s, 4e-16, f"exp_map tiny {s:g}")
        v = V4[0] * s
        cross = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        _close(so3.axis_angle_to_matrix(v), np.eye(3) + cross, 4e-16, f"axis_angle tiny {s:g}")
        _close(bounds.chord_to_angle(np.array([2.0 * s])), np.array([2.0 * s]), 4e-16, "chord_to_angle tiny")
        _close(bounds.angle_to_chord(np.array([2.0 * s])), np.array([2.0 * s]), 4e-16, "angle_to_chord tiny")


HALF_CASES: dict[str, Callable] = {
    "sphere.normalize": sphere.normalize,
    "sphere.angle": lambda x: sphere.angle(x, x[[1, 2, 3, 0]]),
    "sphere.chord": lambda x: sphere.chord(x, x[[1, 2, 3, 0]]),
    "so3.axis_angle_to_matrix": so3.axis_angle_to_matrix,
    "codebook.Codebook.nearest": CB.nearest,
    "lookup.brute_force_nearest": lambda x: lookup.brute_force_nearest(CB_PTS, x),
    "scalar.symmetric_scale": lambda x: scalar.symmetric_scale(x, 8),
    "scalar.fake_quantize_symmetric": lambda x: scalar.fake_quantize_symmetric(x, 8, scale=0.125),
    "quantize.mddq": lambda x: quantize.mddq(x, CB, _mq3(8.0)),
    "quantize.MDDQ.encode": lambda x: quantize.MDDQ(CB, magnitude_bits=4, r_max=8.0).encode(x)[1],
}
_HALF_XFAIL: dict[tuple[str, str], str] = {}


def _half_rows():
    rows = []
    for case in sorted(HALF_CASES):
        for label in HALF:
            marks = (
                [pytest.mark.xfail(strict=True, reason=r)] if (r := _HALF_XFAIL.get((case, label))) else []
            )
            rows.append(pytest.param(case, label, id=f"{case}-{label}", marks=marks))
    return rows


@pytest.mark.parametrize(("case", "dtype"), _half_rows())
def test_valid_integer_and_half_precision_inputs(case, dtype):
    """Integer arrays give the float64 result of the same values; float16/bfloat16 give a finite result
    within their precision of the float64 result (indices: the same codeword, or one as close)."""
    convert, tol = HALF[dtype]
    x = convert(A4)
    x64 = _f64(x)  # the values actually passed, in float64
    got = HALF_CASES[case](x)
    ref = HALF_CASES[case](x64)
    if case.endswith(("nearest", "encode")):
        got, ref = _f64(got).astype(int), _f64(ref).astype(int)
        # a different index is only acceptable for a near tie, within the dtype's rounding of the query
        a_got = sphere.angle(x64, CB_PTS[got])
        a_ref = sphere.angle(x64, CB_PTS[ref])
        assert np.all(a_got - a_ref <= 4 * max(tol, 1e-12)), (got, ref)
        return
    _close(got, ref, 4 * tol if tol else 4e-16, f"{case} in {dtype}")


def _u0(e):
    """An empty batch of unit base points of the kind of ``e``."""
    return e + (torch.tensor(U4[0]) if isinstance(e, torch.Tensor) else U4[0])


EMPTY_CASES: dict[str, tuple[Callable, tuple]] = {
    "sphere.normalize": (sphere.normalize, (0, 3)),
    "sphere.angle": (lambda e: sphere.angle(e, e), (0,)),
    "sphere.chord": (lambda e: sphere.chord(e, e), (0,)),
    "sphere.to_tangent": (lambda e: sphere.to_tangent(e, _u0(e)), (0, 3)),
    "sphere.exp_map": (lambda e: sphere.exp_map(e, _u0(e)), (0, 3)),
    "sphere.log_map": (lambda e: sphere.log_map(_u0(e), _u0(e)), (0, 3)),
    "so3.axis_angle_to_matrix": (so3.axis_angle_to_matrix, (0, 3, 3)),
    "so3.check_rotation": (
        lambda e: so3.check_rotation(
            e.reshape(0, 3, 1).expand(0, 3, 3) if isinstance(e, torch.Tensor) else np.zeros((0, 3, 3))
        ),
        (0, 3, 3),
    ),
    "codebook.Codebook.nearest": (CB.nearest, (0,)),
    "lookup.brute_force_nearest": (lambda e: lookup.brute_force_nearest(CB_PTS, e), (0,)),
    "quantize.mddq": (lambda e: quantize.mddq(e, CB, _mq3()), (0, 3)),
    "quantize.MDDQ.encode": (lambda e: quantize.MDDQ(CB, r_max=3.0).encode(e)[0], (0,)),
    "ste.geometric_ste": (lambda e: ste.geometric_ste(e, e), (0, 3)),
}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_valid_empty_batches(case, backend):
    f, shape = EMPTY_CASES[case]
    e = np.zeros((0, 3))
    out = f(torch.tensor(e) if backend == "torch" else e)
    assert tuple(out.shape) == shape, f"{case}: shape {tuple(out.shape)} != {shape}"


def _hemisphere(n=40, seed=0) -> np.ndarray:
    p = sphere.random_unit_vectors(n, seed=seed)
    p[:, 2] = np.abs(p[:, 2]) + 0.05
    return sphere.normalize(p)


def test_hemisphere_codebook_is_valid_and_its_covering_radius_correct():
    """A codebook inside the open upper hemisphere: the covering radius exceeds pi/2 (the south pole is
    farther than pi/2 from every codeword) and agrees with a dense brute-force estimate; MDDQ with it
    respects the direction error bound."""
    pts = _hemisphere()
    cb = codebook.Codebook(pts)
    cr = cb.covering_radius()
    south = float(sphere.angle(np.array([0.0, 0.0, -1.0]), pts).min())
    assert cr >= south > math.pi / 2
    probe = sphere.random_unit_vectors(200_000, seed=1)
    sampled = float(sphere.angle(probe, pts[cb.nearest(probe)]).max())
    assert sampled <= cr + 1e-12 and cr - sampled < 0.02, (cr, sampled)
    v = np.array([[0.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    q = quantize.mddq(v, cb, quantize.MagnitudeQuantizer(8, 4.0))
    r = np.linalg.norm(v, axis=1)
    q_r = np.linalg.norm(q, axis=1)
    bound = bounds.mddq_error_bound(r, q_r, cr)
    assert np.all(np.linalg.norm(q - v, axis=1) <= bound + 1e-12)


@pytest.mark.parametrize("call", [plotting.cell_radii, lambda p: plotting.plot_voronoi(codebook.Codebook(p))])
def test_hemisphere_points_refused_where_the_voronoi_covering_argument_fails(call):
    with pytest.raises(ValueError, match="points lie in one closed hemisphere"):
        call(_hemisphere())


# ------------------------------------------------------------------------------- devices (need a GPU)
_TWO_DEVICE_CASES = {
    "sphere.angle": (lambda a, b: sphere.angle(a, b), ("a", "b")),
    "sphere.chord": (lambda a, b: sphere.chord(a, b), ("a", "b")),
    "sphere.to_tangent": (lambda a, b: sphere.to_tangent(a, b), ("vector", "base_point")),
    "sphere.exp_map": (lambda a, b: sphere.exp_map(0.1 * a, b), ("tangent_vec", "base_point")),
    "sphere.log_map": (lambda a, b: sphere.log_map(a, b), ("point", "base_point")),
    "ste.plain_ste": (lambda a, b: ste.plain_ste(a, b), ("v", "v_q")),
    "ste.geometric_ste": (lambda a, b: ste.geometric_ste(a, b), ("v", "v_q")),
    "scalar.fake_quantize_lsq": (
        lambda a, b: scalar.fake_quantize_lsq(a, b[0, 0].abs() + 0.1, 8),
        ("step", "x"),
    ),
}


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("case", sorted(_TWO_DEVICE_CASES))
def test_tensors_on_different_devices_are_named(case):
    f, (first, second) = _TWO_DEVICE_CASES[case]
    a = torch.tensor(U4, device="cuda")
    b = torch.tensor(P4)
    with pytest.raises(ValueError) as info:
        f(a, b)
    msg = str(info.value)
    assert _message_names(msg, first) and _message_names(msg, second), msg


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("fn", [sphere.random_unit_vectors, so3.random_rotation])
def test_cuda_device_gives_the_cpu_values(fn):
    cpu = fn(5, seed=3, backend="torch")
    gpu = fn(5, seed=3, backend="torch", device="cuda")
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


# ------------------------------------------------------------------------------------------ irreps extras
_SELECTOR_BAD = [
    ({"names": 3}, TypeError, "names"),
    ({"names": [0]}, TypeError, "names"),
    ({"names": ["0", "nope"]}, ValueError, "names"),
    ({"names": None, "types": "Linear"}, TypeError, "types"),
    ({"types": ()}, TypeError, "types"),
    ({"types": (_IrrepsIdentity, 3)}, TypeError, "types"),
    ({"names": "0", "types": _IrrepsIdentity}, ValueError, "names"),
    ({}, ValueError, "filter_fn"),
    ({"names": "1"}, TypeError, "irreps_out"),  # an nn.Identity has no irreps_out
]


@pytest.mark.parametrize(("selector", "exc", "name"), _SELECTOR_BAD, ids=lambda v: repr(v)[:40])
def test_bad_selectors_of_quantize_irreps_(selector, exc, name):
    """quantize_irreps_ selects by filter_fn (a table entry), names or types: one of them, well typed,
    naming existing submodules that have irreps_out; a refused call leaves the model unchanged."""
    model = _irreps_model()
    with pytest.raises(exc) as info:
        qi.quantize_irreps_(model, **selector)
    assert _message_names(str(info.value), name), f"message does not name {name!r}: {info.value}"
    assert qi.irreps_quantizers(model) == {}


_IRREPS_CONFIGS = {
    "default": None,
    "naive_int8": qi.IrrepsQuantConfig.naive_int8(),
    "higher-mddq": {"higher": "mddq", "higher_codebooks": {2: qi.orbit_codebook(2, 240)}},
}
_FEAT16 = torch.tensor(np.random.default_rng(10).standard_normal((16, 10)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", sorted(_IRREPS_CONFIGS))
def test_valid_irreps_tiny_and_huge_scales(config, dtype):
    """A fresh (calibrating) IrrepsQuantizer is homogeneous under powers of two s: Q(s x) = s Q(x) exactly
    (its ranges, scales, zero points and magnitude levels all scale with s; directions are invariant), from
    2^-1000 to 2^1000 in float64 and 2^-100 to 2^100 in float32 (squares of the norms leave the dtype)."""
    cfg = _IRREPS_CONFIGS[config]
    dt = getattr(torch, dtype)
    x = _FEAT16.to(dt)
    ref = qi.IrrepsQuantizer(IRR, cfg)(x)
    scales = SCALES if dtype == "float64" else [2.0**-100, 2.0**-60, 2.0**60, 2.0**100]
    for s in scales:
        got = qi.IrrepsQuantizer(IRR, cfg)(x * s)
        assert got.dtype == dt
        _close(got, _f64(ref) * s, 0.0, f"IrrepsQuantizer {config} {dtype} at scale {s:g}")


def _irreps_error_bound(q: qi.IrrepsQuantizer, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-channel bound on |Q(v) - v| of each block (the module docstring's guarantees), from the ranges the
    quantizer observed: symmetric s sqrt(d) / 2 (s = range / 127); min-max one step (s = (hi - lo) / 255,
    rounding plus the rounded zero point's shift) per component; MDDQ |Q_m(r) - r| + 2 r sin(delta / 2)."""
    out = []
    for (sl, mul, d, _), blk in zip(q._slices, q.quantizers):
        xb = x[:, sl].reshape(len(x), mul, d)
        yb = y[:, sl].reshape(len(x), mul, d)
        if isinstance(blk, qi._MDDQBlock):
            delta = blk.mddq.codebook.covering_radius()
            r, q_r = np.linalg.norm(xb, axis=-1), np.linalg.norm(yb, axis=-1)
            out.append(bounds.mddq_error_bound(r, q_r, delta))
        elif blk.scheme == "symmetric":
            out.append(np.full((len(x), mul), blk.hi / 127 * math.sqrt(d) / 2))
        else:
            out.append(np.full((len(x), mul), (blk.hi - blk.lo) / 255 * math.sqrt(d)))
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("config", ["default", "naive_int8"])
def test_valid_irreps_half_precision_features(config, dtype):
    """float16 / bfloat16 / float32 features give a finite result of their dtype that obeys every block's
    error bound (up to the dtype's rounding), and agrees with the float64 quantizer on the same values
    within two bounds."""
    dt = getattr(torch, dtype)
    x = _FEAT16.to(dt)
    x64 = _f64(x)  # the values actually passed
    q = qi.IrrepsQuantizer(IRR, _IRREPS_CONFIGS[config])
    y = q(x)
    assert y.dtype == dt and bool(torch.isfinite(y).all())
    y64 = _f64(y)
    chans = []  # per-channel error |Q(v) - v|, block by block
    for (sl, mul, d, _), _blk in zip(q._slices, q.quantizers):
        diff = (y64 - x64)[:, sl].reshape(len(x64), mul, d)
        chans.append(np.linalg.norm(diff, axis=-1))
    err = np.concatenate(chans, axis=1)
    eps = float(torch.finfo(dt).eps)
    # the output is rounded to the dtype (eps / 2 relative per component) after arithmetic in the dtype:
    # one unit eps at the largest input (measured excess over the bound: <= 0.25 of it, 3 seeds)
    margin = eps * float(np.abs(x64).max())
    bound = _irreps_error_bound(q, x64, y64)
    worst = float((err - bound).max())
    assert worst <= margin, f"{config} {dtype}: error exceeds the bound by {worst:.3e} (margin {margin:.1e})"
    q64 = qi.IrrepsQuantizer(IRR, _IRREPS_CONFIGS[config])
    ref = _f64(q64(torch.tensor(x64)))
    gap = float(np.abs(y64 - ref).max())
    assert gap <= 2 * float(bound.max()) + 2 * margin, f"{config} {dtype}: {gap:.3e} from float64"


@pytest.mark.parametrize("config", sorted(_IRREPS_CONFIGS))
def test_valid_irreps_empty_and_zero_features(config):
    """Empty batches (also to a frozen, never calibrated quantizer) keep their shape; all-zero features
    quantize to exact zeros; an irreps of dimension 0 takes features (..., 0)."""
    cfg = _IRREPS_CONFIGS[config]
    for shape in [(0, 10), (3, 0, 10)]:
        out = qi.IrrepsQuantizer(IRR, cfg).freeze()(torch.zeros(shape, dtype=torch.float64))
        assert tuple(out.shape) == shape and out.dtype == torch.float64
    zero = qi.IrrepsQuantizer(IRR, cfg)(torch.zeros(5, 10))
    assert torch.equal(zero, torch.zeros(5, 10)), zero
    assert qi.IrrepsQuantizer("", cfg)(torch.zeros(3, 0)).shape == (3, 0)
