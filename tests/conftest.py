"""Shared fixtures: float32/float64 parametrisation with matching tolerances, Hypothesis profiles, the
models-layer data set and bad-input files (helpers shared by test modules: _helpers.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis profiles. The default runs ("dev" for users, "ci" under CI=true) are derandomized: the same
# examples every run, so the README's test command gives the same verdict on every machine and every run.
# Random exploration finds new edge cases; run it on purpose with HYPOTHESIS_PROFILE=explore (and put any
# failure it finds back into the test as an @example).
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=60, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=200, derandomize=True, database=None, **_COMMON)
settings.register_profile("explore", max_examples=2000, derandomize=False, **_COMMON)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile(HYPOTHESIS_PROFILE)


def pytest_report_header(config):
    return f"hypothesis profile: {HYPOTHESIS_PROFILE} (set HYPOTHESIS_PROFILE=explore for random exploration)"


# One thread: the tests use small tensors, where a second thread only adds synchronisation cost.
torch.set_num_threads(1)


@pytest.fixture(params=["float32", "float64"])
def float_dtype(request):
    """Name of the floating dtype under test; use with :func:`tol`."""
    return request.param


@pytest.fixture
def tol(float_dtype):
    """Absolute tolerance appropriate to ``float_dtype``."""
    return {"float32": 1e-5, "float64": 1e-12}[float_dtype]


@pytest.fixture
def rng():
    """A seeded numpy Generator (every test is reproducible)."""
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


# Fixtures of the models-layer tests. Their helpers live in _helpers.py, imported here only inside the
# fixtures: it imports the models layer, which the core tests do not need.
@pytest.fixture(scope="module")
def dataset():
    """The synthetic Morse data set of :func:`_helpers.morse_dataset` (40 frames, seed 0), once per module."""
    from _helpers import morse_dataset

    return morse_dataset()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good data file and checkpoint, and every kind of bad file, in one folder, once per module (the
    bad-input tables of the models layer and of the CLI); see :func:`_helpers.bad_input_files`."""
    from _helpers import bad_input_files

    return bad_input_files(tmp_path_factory.mktemp("bad_inputs"))
