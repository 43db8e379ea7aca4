"""Tests of spherequant.models.baselines: each baseline runs forward/backward and does what it claims."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from _helpers import calibration_molecules, molecule, small_model
from spherequant.models import gaq
from spherequant.models.baselines import (
    BASELINES,
    DegreeQuantActivation,
    QDropActivation,
    degree_protection_probability,
    prepare_baseline,
)
from spherequant.models.neighbors import radius_graph

from spherequant.scalar import SymmetricQuantizer

SPREAD = 1.5  # Angstrom: this module's molecules are wider than the default of _helpers.molecule
CALIB = calibration_molecules(spread=SPREAD)
OPTS = {"svq_kmeans": {"codebook_size": 8}}


def build(name, **kw):
    m = small_model()
    prepare_baseline(m, name, CALIB, **{**OPTS.get(name, {}), **kw})
    return m


def test_input_validation():
    with pytest.raises(ValueError, match="name must be one of"):
        prepare_baseline(small_model(), "int4")
    with pytest.raises(TypeError, match="unknown options"):
        prepare_baseline(small_model(), "qdrop", p_max=0.2)
    with pytest.raises(ValueError, match="calibration_batches"):
        prepare_baseline(small_model(), "naive_int8")
    with pytest.raises(ValueError, match="p "):
        prepare_baseline(small_model(), "qdrop", p=1.5)
    with pytest.raises(ValueError, match="p_min"):
        prepare_baseline(small_model(), "degree_quant", p_min=0.5, p_max=0.1)
    with pytest.raises(TypeError, match="So3krates"):
        prepare_baseline(torch.nn.Linear(2, 2), "lsq")
    m = build("lsq")
    with pytest.raises(ValueError, match="already prepared"):
        prepare_baseline(m, "lsq")
    with pytest.raises(ValueError, match="codebook"):
        prepare_baseline(small_model(), "svq_kmeans", CALIB[:1], codebook_size=10_000)


@pytest.mark.parametrize("name", BASELINES)
def test_forward_backward_and_changes_output(name):
    m = build(name)
    fp = small_model().eval()
    b = molecule(7, spread=SPREAD)
    m.train()
    out = m(b["z"], b["pos"])
    loss = out["energy"].square().sum() + out["forces"].square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads, f"{name}: no gradients"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"{name}: non-finite gradients in {bad}"
    m.eval()
    q, f = m(b["z"], b["pos"]), fp(b["z"], b["pos"])
    de = float((q["energy"] - f["energy"]).abs().max())
    assert de > 0, f"{name}: quantized energy equals the FP32 energy exactly"
    assert torch.isfinite(q["forces"]).all()


@pytest.mark.parametrize("name", BASELINES)
def test_convert_round_trip(name):
    m = build(name)
    m.eval()
    b = molecule(8, spread=SPREAD)
    ref = m(b["z"], b["pos"])
    gaq.quantize_(m, gaq.QuantizationSpec(), step="convert")
    out = m(b["z"], b["pos"])
    for key in ("energy", "forces"):
        err = float((ref[key] - out[key]).abs().max())
        assert err == 0, f"{name}/{key}: converted differs from prepared by {err:.3e}"
    assert gaq.model_size_bytes(m) < gaq.model_size_bytes(small_model())


def test_naive_int8_per_tensor_minmax():
    m = build("naive_int8")
    n = 0
    for name, mod in m.named_modules():
        if isinstance(mod, (gaq.QuantLinear, gaq.QuantEmbedding)):
            assert (mod.bits, mod.scheme) == (8, "minmax"), name
            w = mod.weight.detach().numpy()
            wq = mod.fake_quantized_weight().detach().numpy()
            lo, hi = min(w.min(), 0.0), max(w.max(), 0.0)
            s = (hi - lo) / 255 if hi > lo else 1 / 255
            zp = np.round(-lo / s)
            k = wq / s + zp  # independent: codes of a per-tensor min-max grid
            assert np.abs(k - np.round(k)).max() < 1e-6, f"{name}: weight off the per-tensor grid"
            assert np.round(k).min() >= 0 and np.round(k).max() <= 255
            assert len(np.unique(wq)) <= 256
            n += 1
    assert n > 10
    q = m.layers[0].chi_quant
    chi = torch.randn(40, 3, dtype=torch.float64) * 0.2
    out = q(chi)
    s, zp = q.quantizer.params()
    k = (out / s).numpy() + float(zp)
    assert np.abs(k - np.round(k)).max() < 1e-6, "chi components are not on one scalar grid"


def test_svq_kmeans_codebook_and_hard_assignment():
    m = build("svq_kmeans")
    q = m.layers[0].chi_quant
    assert q.kmeans and q.fitted and q.codebook.kind == "kmeans" and q.mddq.num_codewords == 8
    assert q.mddq.direction_ste == "none"
    assert not np.allclose(q.codebook.points, m.layers[1].chi_quant.codebook.points), "one codebook per layer"
    v = (torch.randn(30, 3, dtype=torch.float64) * 0.1).requires_grad_(True)
    out = q(v)
    r = out.norm(dim=1)
    nz = r > 0
    dots = (out[nz] / r[nz, None]).detach().numpy() @ q.codebook.points.T
    assert dots.max(axis=1).min() > 1 - 1e-12, "an SVQ output direction is not a k-means codeword"
    g = torch.randn(30, 3, dtype=torch.float64)
    (out * g).sum().backward()
    tangential = torch.linalg.cross(v.grad, v.detach()).norm(dim=1) / v.detach().norm(dim=1)
    worst = float(tangential.max())
    assert worst < 1e-12, f"gradient through the assignment: tangential part {worst:.3e}"
    # the fitted codebook survives a state_dict round trip into a fresh model
    gaq.quantize_(m, gaq.QuantizationSpec(), step="convert")
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    fresh = small_model(seed=3)
    cfg = gaq.QuantizationSpec.from_options(
        "gaq", codebook="kmeans", codebook_size=8, attention="keep", direction_ste="none", warmup_epochs=0
    )
    gaq.quantize_(fresh, cfg)
    gaq.quantize_(fresh, cfg, step="convert")
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert np.array_equal(fresh.layers[0].chi_quant.codebook.points, q.codebook.points)
    b = molecule(4, spread=SPREAD)
    m.eval(), fresh.eval()
    assert torch.equal(m(b["z"], b["pos"])["energy"], fresh(b["z"], b["pos"])["energy"])


def test_degree_quant_protection():
    p = degree_protection_probability(torch.tensor([1, 5, 3, 5]), 0.1, 0.3)
    assert torch.allclose(p, torch.tensor([0.1, 0.3, 0.2, 0.3], dtype=torch.float64))
    flat = degree_protection_probability(torch.tensor([2, 2]), 0.1, 0.3)
    assert torch.equal(flat, torch.full((2,), 0.1, dtype=torch.float64))
    q = DegreeQuantActivation(SymmetricQuantizer(3), "invariant", p_min=0.0, p_max=1.0)
    x = torch.randn(4, 50, dtype=torch.float64)
    q.eval()(x)  # calibrate
    q.freeze()
    q.in_degree = torch.tensor([0, 2, 4, 4])
    q.train()
    torch.manual_seed(1)
    out = q(x)
    quant = q.quantize(x)
    assert torch.equal(out[0], quant[0]), "the lowest-degree node (p = 0) was protected"
    assert torch.equal(out[2:], x[2:]), "the highest-degree nodes (p = 1) were quantized"
    q.eval()
    assert torch.equal(q(x), quant), "eval mode must quantize every node"
    # through the model: the hook passes the in-degree of the real graph
    m = build("degree_quant", p_min=0.0, p_max=1.0)
    m.train()
    b = molecule(9, spread=SPREAD)
    m(b["z"], b["pos"])
    i = radius_graph(b["pos"], m.cutoff)[0]
    deg = torch.bincount(i, minlength=b["z"].shape[0])
    got = m.layers[0].x_quant.in_degree
    assert torch.equal(got[: deg.shape[0]], deg) and int(got[deg.shape[0] :].sum()) == 0
    assert m.layers[0].x_quant.quantizer.method == "percentile"


def test_lsq_steps_learn():
    m = build("lsq")
    m.train()
    b = molecule(5, spread=SPREAD)
    out = m(b["z"], b["pos"])
    (out["energy"].square().sum() + out["forces"].square().mean()).backward()
    steps = {n: p for n, p in m.named_parameters() if n.endswith("step")}
    w_steps = [n for n in steps if ".quantizer." not in n]
    a_steps = [n for n in steps if ".quantizer." in n]
    assert len(w_steps) > 10 and len(a_steps) == 2 * len(m.layers)
    lin = m.layers[0].feature_block.value
    assert lin.step.shape == (lin.out_features, 1), "LSQ weight steps must be per output channel"
    with_grad = [n for n, p in steps.items() if p.grad is not None and float(p.grad.abs().sum()) > 0]
    assert len(with_grad) >= 0.8 * len(steps), f"only {len(with_grad)}/{len(steps)} steps got gradients"


def test_qdrop_keeps_half_in_training():
    q = QDropActivation(SymmetricQuantizer(2), "invariant", p=0.5)
    x = torch.randn(200, 50, dtype=torch.float64)
    q.eval()(x)  # calibrate
    q.freeze()
    quant = q.quantize(x)
    differs = quant != x
    q.train()
    torch.manual_seed(2)
    out = q(x)
    kept = (out == x) & differs
    frac = float(kept.sum()) / float(differs.sum())
    n = float(differs.sum())
    assert abs(frac - 0.5) < 5 * (0.25 / n) ** 0.5, f"kept-FP fraction {frac:.3f}, expected 0.5"
    assert torch.equal(out[~(out == x)], quant[~(out == x)])
    q.eval()
    assert torch.equal(q(x), quant)
    m = build("qdrop")
    assert isinstance(m.layers[1].chi_quant, QDropActivation)
