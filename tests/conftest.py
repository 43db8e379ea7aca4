"""Shared fixtures: float32/float64 parametrisation with matching tolerances, Hypothesis profiles."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis: derandomized (seeded) everywhere; fewer examples on CI to keep the suite within budget.
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=2000, deadline=None, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# One thread: the tests use small tensors, where a second thread only adds synchronisation cost.
torch.set_num_threads(1)

# Absolute tolerances matched to the floating type (as e3nn does).
TOLERANCES = {np.float32: 1e-5, np.float64: 1e-12, torch.float32: 1e-5, torch.float64: 1e-12}


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
