"""Tests of benchmarks/force_modes.py (test errors of the quantized study models per force mode): its error
figures against a slow per-frame loop, and the three networks it scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _helpers import tiny_gaq_run
from _scripts import load_script
from spherequant.models import gaq

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fm():
    return load_script("benchmarks/force_modes.py")


@pytest.fixture(scope="module")
def tiny_gaq(tmp_path_factory):
    _, gaq_checkpoint, ds = tiny_gaq_run(tmp_path_factory.mktemp("force_modes"))
    return gaq_checkpoint, ds


def test_errors_match_a_slow_per_frame_loop(fm, tiny_gaq):
    path, ds = tiny_gaq
    model = fm.load_in_mode(path, "smooth")
    idx = list(range(17))
    got = fm.errors(model, ds, idx, batch_size=4)
    de, fe = [], []
    for i in idx:
        frame = ds[i]
        pos = torch.as_tensor(frame["positions"], dtype=model.dtype)
        out = model(torch.as_tensor(frame["numbers"]), pos)
        de.append(1000.0 * (float(out["energy"]) - float(frame["energy"])))
        fe.extend((1000.0 * (out["forces"].detach().double() - torch.as_tensor(frame["forces"]))).flatten())
    offset = sum(de) / len(de)
    want = {
        "energy_mae": sum(abs(d) for d in de) / len(de),
        "energy_offset": offset,
        "energy_mae_offset_free": sum(abs(d - offset) for d in de) / len(de),
        "forces_mae": float(sum(abs(f) for f in fe) / len(fe)),
        "forces_rmse": math.sqrt(float(sum(f * f for f in fe)) / len(fe)),
    }
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, got[key], value)
    assert got["n_frames"] == 17


def test_the_three_networks(fm, tiny_gaq):
    """ste: quantizers active; smooth: saturated (the smooth force mode); weights_only: quantizers off."""
    path, _ = tiny_gaq
    ste, smooth, weights = (fm.load_in_mode(path, m) for m in ("ste", "smooth", "weights_only"))
    assert gaq.quantization_state(ste).force_mode == "ste"
    assert gaq.quantization_state(smooth).force_mode == "smooth"
    quantizers = [m for m in weights.modules() if isinstance(m, gaq.ActivationQuantizer)]
    assert quantizers and not any(m.enabled for m in quantizers)
    assert all(m.active() for m in ste.modules() if isinstance(m, gaq.ActivationQuantizer))
    assert not ste.training and not weights.training
    with pytest.raises(ValueError, match="mode must be one of"):
        fm.load_in_mode(path, "identity")


@pytest.fixture(scope="module")
def sw():
    return load_script("benchmarks/saturation_width.py")


def test_saturation_width_runs_and_sets_the_width(sw, tiny_gaq):
    """benchmarks/saturation_width.py: the smooth network carries the asked corner width (0: plain clamps),
    and one short measurement gives a verdict, a drift and test errors."""
    from spherequant.models.saturation import Clamp

    path, _ = tiny_gaq
    for width in (0.0, 2.0):
        net = sw.smooth_network(path, width)
        clamps = [m for m in net.modules() if isinstance(m, Clamp)]
        assert clamps and all(bool((m.width > 0).all()) == (width > 0) for m in clamps)
    row = sw.measure("tiny", path, 0.5, ps=0.05, max_frames=5)
    # (the barely trained tiny model may blow up within the run: its verdict says so and the row stays valid)
    assert row["width_steps"] == 0.5 and 0 < row["simulated_ps"] <= 0.05 and row["verdict"]
    assert math.isfinite(row["drift"]) and row["test_n_frames"] == 5 and row["test_forces_mae"] > 0
