"""The shipped models: they load on a fresh install, are what their names say, and keep their accuracy on
held-out test frames (a small sample; the full figures are in docs/results, from `spherequant evaluate`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from spherequant.models import checkpoints, data, gaq
from spherequant.models.calculator import SphereQuantCalculator
from spherequant.models.checkpoints import read_checkpoint
from spherequant.models.evaluation import _checkpoint_data

FP32, GAQ = "azobenzene-gfn2-fp32", "azobenzene-gfn2-gaq-w4a8"
pytestmark = pytest.mark.skipif(
    not {FP32, GAQ} <= set(checkpoints.available_pretrained()), reason="shipped models missing"
)


def _errors(name, n_frames=40):
    """Energy and force errors (meV, meV/A) frame by frame through the ASE calculator's model: an independent
    path from :func:`spherequant.models.train.evaluate`, on test frames spread over the split."""
    _, ds, sp = _checkpoint_data(name)
    calc = SphereQuantCalculator.from_pretrained(name)
    pick = np.asarray(sp.test)[:: max(1, len(sp.test) // n_frames)][:n_frames]
    e, f = [], []
    for i in pick:
        frame = ds[int(i)]
        pos = torch.as_tensor(frame["positions"], dtype=calc.model.dtype)
        out = calc.model(torch.as_tensor(frame["numbers"]), pos)
        e.append(1000 * abs(out["energy"].item() - frame["energy"]))
        f.append(1000 * np.abs(out["forces"].detach().double().numpy() - frame["forces"]).ravel())
    assert not set(pick) & set(sp.train) and not set(pick) & set(sp.val)
    return float(np.mean(e)), float(np.mean(np.concatenate(f)))


def test_shipped_models_are_what_their_names_say():
    fp32 = checkpoints.load_model(FP32)
    q = checkpoints.load_model(GAQ)
    assert checkpoints.quantization_spec(fp32) is None
    spec = checkpoints.quantization_spec(q)
    assert spec["method"] == "gaq" and spec["step"] == "converted"
    cfg = gaq.GAQConfig(**spec["config"])
    assert (cfg.weight_bits_equivariant, cfg.weight_bits_invariant, cfg.activation_bits) == (4, 8, 8)
    bits = {m.branch: m.bits for m in q.modules() if isinstance(m, gaq.QuantLinear)}
    assert bits == {"equivariant": 4, "invariant": 8}, bits
    # both were trained on the shipped data set with the same split
    for name in (FP32, GAQ):
        tc = read_checkpoint(name)["train_config"]
        assert (tc["dataset"], tc["n_train"], tc["n_val"], tc["split_seed"]) == (
            "azobenzene-gfn2-500K",
            950,
            50,
            0,
        )
    assert data.load_dataset("azobenzene-gfn2-500K") is not None


def test_shipped_models_accuracy_on_held_out_frames():
    e32, f32 = _errors(FP32)
    eq, fq = _errors(GAQ)
    # loose bounds around the full-split figures (FP32 17 meV / 34 meV/A; GAQ 31 meV / 40 meV/A)
    assert f32 < 45 and e32 < 30, (e32, f32)
    assert fq < 55 and eq < 50, (eq, fq)
    assert fq < 1.4 * f32, f"GAQ force MAE {fq:.1f} vs FP32 {f32:.1f} meV/A on the sample"
