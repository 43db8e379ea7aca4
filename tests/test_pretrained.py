"""The shipped models: they load on a fresh install, are what their names say, give the energies and forces
recorded in tests/data/pretrained_reference.npz (the ``-small`` pair's written with the code of commit
ac8522b, before the quantization spec existed; the study's models' when they shipped; the smooth force
mode's energies and forces rewritten when that mode started keeping the activation quantizers' clipping),
and keep their accuracy on held-out test frames (a small sample; the full figures are in docs/results)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from spherequant.models import checkpoints, data, gaq
from spherequant.models.calculator import SphereQuantCalculator
from spherequant.models.checkpoints import read_checkpoint
from spherequant.models.evaluation import checkpoint_test_data

REFERENCE = Path(__file__).parent / "data" / "pretrained_reference.npz"

FP32, GAQ = "azobenzene-gfn2-fp32", "azobenzene-gfn2-gaq-w4a8"
FP32_SMALL, GAQ_SMALL = "azobenzene-gfn2-fp32-small", "azobenzene-gfn2-gaq-w4a8-small"
pytestmark = pytest.mark.skipif(
    not {FP32, GAQ} <= set(checkpoints.available_pretrained()), reason="shipped models missing"
)


def _errors(name, n_frames=40, force_mode=None):
    """Energy and force errors (meV, meV/A) frame by frame through the ASE calculator's model: an independent
    path from :func:`spherequant.models.train.error_metrics`, on test frames spread over the split."""
    _, ds, sp = checkpoint_test_data(name)
    calc = SphereQuantCalculator.from_pretrained(name, force_mode=force_mode)
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
    assert checkpoints.quantization_entry(fp32) is None and gaq.quantization_spec(fp32) is None
    entry = checkpoints.quantization_entry(q)
    assert entry["method"] == "gaq" and entry["step"] == "converted"
    spec = gaq.quantization_spec(q)
    # the spec the loader rebuilt is the one the stored entry describes, and it stores back unchanged
    assert spec == gaq.QuantizationSpec.from_checkpoint(read_checkpoint(GAQ)["quantization"])
    assert {k: entry[k] for k in ("method", "config", "options")} == {
        k: read_checkpoint(GAQ)["quantization"][k] for k in ("method", "config", "options")
    }
    fmt = spec.format
    assert (fmt.weight_bits_equivariant, fmt.weight_bits_invariant, fmt.activation_bits) == (4, 8, 8)
    assert (fmt.codebook, fmt.codebook_size, spec.schedule.warmup_epochs) == ("fibonacci", 4096, 10)
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
    # the FP32 parent: the study's goal (<= 12 meV/A, <= 5 meV; all 4000 test frames: 10.0 meV/A, 3.3 meV)
    assert f32 < 12 and e32 < 5, (e32, f32)
    # the shipped GAQ model was finetuned from the parent its config names (same architecture, the attention
    # aside), and its force error stays near that parent's
    gaq_ckpt = read_checkpoint(GAQ)
    parent_name = gaq_ckpt["train_config"]["quantization"]["init_checkpoint"]
    assert parent_name in checkpoints.available_pretrained(), parent_name
    parent = read_checkpoint(parent_name)
    attention = parent["model_config"]["attention"]
    assert gaq_ckpt["model_config"] == {**parent["model_config"], "attention": attention}
    ep, fp = (e32, f32) if parent_name == FP32 else _errors(parent_name)
    eq, fq = _errors(GAQ)
    # all 4000 test frames: GAQ W4A8 (attention kept) 18.8 meV/A, 19.3 meV against the parent's 10.0, 3.3 (the
    # paper's 1.25x is not reached; docs/results); the bounds hold the shipped model to what it measured
    assert fq < 2.0 * fp and eq < 30, f"GAQ {fq:.1f} meV/A, {eq:.1f} meV vs parent {fp:.1f}, {ep:.1f}"
    # the smooth force mode (molecular dynamics) keeps the activation clipping the network was trained with:
    # all test frames 14.1 meV/A (benchmarks/force_modes.py); with identity activations it was 111
    _, fs = _errors(GAQ, force_mode="smooth")
    assert fs < 1.6 * fp, f"GAQ smooth mode {fs:.1f} meV/A vs parent {fp:.1f}"


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        *[(FP32, "None"), (GAQ, "None"), (GAQ, "smooth"), (GAQ, "ste")],
        *[(FP32_SMALL, "None"), (GAQ_SMALL, "None"), (GAQ_SMALL, "smooth"), (GAQ_SMALL, "ste")],
    ],
)
def test_shipped_models_reproduce_recorded_outputs(name, mode):
    """Checkpoints keep loading to the same model: energies and forces (and, smooth mode, the quantized
    energy) on three test frames equal those recorded (for the ``-small`` pair, before the spec refactoring),
    to float32 round-off
    (1e-5: the recorded float32 forces of the GAQ model lie up to 3e-6 from the same model in float64, and its
    straight-through estimators, written as differentiable operations since, sum in another order)."""
    ref = np.load(REFERENCE)
    _, ds, _ = checkpoint_test_data(name)
    model = checkpoints.load_model(name, force_mode=None if mode == "None" else mode)
    worst = []
    for i in ref["frames"].tolist():
        frame = ds[i]
        out = model(torch.as_tensor(frame["numbers"]), torch.as_tensor(frame["positions"], dtype=model.dtype))
        for key in ("energy", "forces", "energy_quantized"):
            stored = f"{name}__{mode}__{i}__{key}"
            if stored not in ref.files:
                assert key not in out or mode != "smooth", f"{stored} missing from the reference"
                continue
            got = out[key].detach().numpy()
            worst.append((float(np.max(np.abs(got - ref[stored]))), stored))
            np.testing.assert_allclose(got, ref[stored], rtol=1e-5, atol=1e-5, err_msg=stored)
    assert worst, "nothing compared"
    assert max(worst)[0] < 1e-3, max(worst)


def test_small_models_are_the_first_shipped_pair():
    """``-small``: the first shipped pair (64 features, 2 layers), kept for fast demos and the speed
    benchmark's goals; the GAQ one was finetuned from the FP32 one (same architecture, named in its
    config)."""
    small, gaq_small = FP32_SMALL, GAQ_SMALL
    if not {small, gaq_small} <= set(checkpoints.available_pretrained()):
        pytest.skip("small models missing")
    fp, q = read_checkpoint(small), read_checkpoint(gaq_small)
    assert (fp["model_config"]["num_features"], fp["model_config"]["num_layers"]) == (64, 2)
    assert q["model_config"] == fp["model_config"] and q["quantization"]["step"] == "converted"
    assert q["train_config"]["quantization"]["init_checkpoint"] == small
    assert checkpoints.quantization_entry(checkpoints.load_model(small)) is None


def test_cosine_parent_is_what_its_name_says_and_keeps_its_accuracy():
    """``azobenzene-gfn2-fp32-cosine``: the study's parent with cosine attention (Eq. 10), the So3krates
    parent's architecture and split otherwise (all 4000 test frames: 12.7 meV/A, 4.8 meV)."""
    name = "azobenzene-gfn2-fp32-cosine"
    if name not in checkpoints.available_pretrained():
        pytest.skip("cosine parent missing")
    ckpt, parent = read_checkpoint(name), read_checkpoint(FP32)
    assert ckpt["model_config"]["attention"] == "cosine" and ckpt.get("quantization") is None
    assert {
        k: v for k, v in ckpt["model_config"].items() if k not in ("attention", "tau", "learnable_tau")
    } == {k: v for k, v in parent["model_config"].items() if k not in ("attention", "tau", "learnable_tau")}
    keys = ("dataset", "n_train", "n_val", "split_seed")
    assert [ckpt["train_config"][k] for k in keys] == [parent["train_config"][k] for k in keys]
    e, f = _errors(name)
    assert f < 14.5 and e < 7, (e, f)


def test_paper_recipe_gaq_model_is_what_its_name_says():
    """``azobenzene-gfn2-gaq-w4a8-cosine``: the paper's recipe, GAQ W4A8 finetuned 80 epochs from the cosine
    parent with cosine attention (all 4000 test frames: 28.8 meV/A, 55 meV against the parent's 12.7, 4.8;
    the paper's 1.25x is not reached, and the attention-kept model `azobenzene-gfn2-gaq-w4a8` is better)."""
    name, parent = "azobenzene-gfn2-gaq-w4a8-cosine", "azobenzene-gfn2-fp32-cosine"
    if not {name, parent} <= set(checkpoints.available_pretrained()):
        pytest.skip("cosine models missing")
    ckpt = read_checkpoint(name)
    assert ckpt["train_config"]["quantization"]["init_checkpoint"] == parent
    assert ckpt["model_config"] == read_checkpoint(parent)["model_config"]
    spec = gaq.quantization_spec(checkpoints.load_model(name))
    fmt = spec.format
    assert (fmt.weight_bits_equivariant, fmt.weight_bits_invariant, fmt.activation_bits) == (4, 8, 8)
    assert (fmt.codebook, fmt.codebook_size, spec.schedule.warmup_epochs) == ("fibonacci", 4096, 10)
    assert ckpt["quantization"]["step"] == "converted" and ckpt["train_config"]["epochs"] == 80
    ep, fp = _errors(parent)
    eq, fq = _errors(name)
    assert fq < 2.6 * fp and eq < 80, f"GAQ {fq:.1f} meV/A, {eq:.1f} meV vs parent {fp:.1f}, {ep:.1f}"
