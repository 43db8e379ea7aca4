"""Tests of spherequant.models.gaq: config, module swapping per branch, bits used, gradients, warm-up,
vector-quantizer equivariance bound, prepare/convert round trip, model size, LEE and force modes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from _helpers import TORCH_DTYPES, calibration_molecules, molecule, small_model
from spherequant.models import gaq
from spherequant.models.baselines import prepare_baseline
from spherequant.models.so3krates import Attention, So3krates
from torch import nn

from spherequant import codebook as cbmod
from spherequant import quantize as Q


def gaq_spec(**options):
    """The GAQ :class:`~spherequant.models.gaq.QuantizationSpec` of flat ``options``."""
    return gaq.QuantizationSpec.from_options("gaq", **options)


def prepared(cfg=None, dtype=torch.float64, degrees=(1,)):
    m = small_model(dtype, degrees)
    cfg = cfg or gaq_spec(codebook_size=256)
    gaq.quantize_(m, cfg)
    gaq.calibrate_(m, calibration_molecules(dtype))
    return m, cfg


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"weight_bits_equivariant": 1}, ValueError, "weight_bits_equivariant"),
        ({"weight_bits_invariant": 9}, ValueError, "weight_bits_invariant"),
        ({"weight_bits_invariant": 4.0}, TypeError, "weight_bits_invariant"),
        ({"activation_bits": True}, TypeError, "activation_bits"),
        ({"codebook": "healpix"}, ValueError, "codebook"),
        ({"codebook": "icosahedral", "codebook_size": 100}, ValueError, "icosahedral"),
        ({"codebook": "learned", "codebook_size": 3}, ValueError, "learned"),
        ({"codebook_size": 0}, ValueError, "codebook_size"),
        ({"magnitude_bits": 1}, ValueError, "magnitude_bits"),
        ({"magnitude": "cubic"}, ValueError, "magnitude"),
        ({"attention": "softmax"}, ValueError, "attention"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"tau": "big"}, TypeError, "tau"),
        ({"lee_weight": float("nan")}, ValueError, "lee_weight"),
        ({"lee_weight": -0.1}, ValueError, "lee_weight"),
        ({"warmup_epochs": -1}, ValueError, "warmup_epochs"),
        ({"direction_ste": "riemann"}, ValueError, "direction_ste"),
        ({"force_mode": "exact"}, ValueError, "force_mode"),
        ({"quantize_embedding": 1}, TypeError, "quantize_embedding"),
        ({"vector_quantizer": "axis"}, ValueError, "vector_quantizer"),
        ({"vector_quantizer": "per_axis", "codebook": "kmeans"}, ValueError, "per_axis"),
    ],
)
def test_config_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gaq_spec(**kwargs)


def test_config_defaults_and_bits():
    fmt = gaq.QuantizationSpec().format
    assert (fmt.weight_bits("equivariant"), fmt.weight_bits("invariant"), fmt.activation_bits) == (4, 8, 8)
    assert fmt.bits_per_vector == 8 + 12
    ico = gaq_spec(codebook="icosahedral", codebook_size=162)
    assert ico.format.bits_per_vector == 8 + 8
    assert gaq.QuantizationSpec().to_dict()["options"]["codebook"] == "fibonacci"


def test_quantize_input_errors():
    with pytest.raises(TypeError, match="So3krates"):
        gaq.quantize_(nn.Linear(2, 2), gaq.QuantizationSpec())
    m = small_model()
    with pytest.raises(TypeError, match="QuantizationSpec"):
        gaq.quantize_(m, {"weight_bits_invariant": 8})
    with pytest.raises(ValueError, match="step"):
        gaq.quantize_(m, gaq.QuantizationSpec(), step="train")
    with pytest.raises(ValueError, match="not been prepared"):
        gaq.quantize_(m, gaq.QuantizationSpec(), step="convert")
    gaq.quantize_(m, gaq_spec(codebook_size=64))
    with pytest.raises(ValueError, match="already prepared"):
        gaq.quantize_(m, gaq_spec(codebook_size=64))
    with pytest.raises(ValueError, match="empty"):
        gaq.calibrate_(m, [])
    with pytest.raises(ValueError, match="epoch"):
        gaq.GAQScheduler(gaq.QuantizationSpec()).on_epoch_start(m, 0)
    with pytest.raises(ValueError, match="branch"):
        gaq.set_quant_enabled(m, "scalar", True)


# ----------------------------------------------------------------------------------------------------------
# prepare: modules per branch
# ----------------------------------------------------------------------------------------------------------
def test_prepare_swaps_modules_per_branch():
    m = small_model()
    linears = {n for n, mod in m.named_modules() if type(mod) is nn.Linear}
    gaq.quantize_(m, gaq_spec(codebook_size=64))
    assert not any(type(mod) is nn.Linear for mod in m.modules()), "an nn.Linear was left unquantized"
    qnames = {n for n, mod in m.named_modules() if isinstance(mod, gaq.QuantLinear)}
    new_bias = {n for n in qnames if n.endswith("attention.bias")}  # added by the cosine switch
    assert qnames == linears | new_bias
    assert len(new_bias) == 2 * len(m.layers)
    for name, mod in m.named_modules():
        if isinstance(mod, gaq.QuantLinear):
            equi = ".geometric_block." in name
            assert mod.branch == ("equivariant" if equi else "invariant"), name
            assert mod.bits == (4 if equi else 8), name
    assert isinstance(m.embedding, gaq.QuantEmbedding) and m.embedding.bits == 8
    for layer in m.layers:
        assert type(layer.x_quant) is gaq.ActivationQuantizer and layer.x_quant.branch == "invariant"
        assert isinstance(layer.chi_quant, gaq.VectorFeatureQuantizer)
    atts = [a for a in m.modules() if isinstance(a, Attention)]
    assert atts and all(a.attention == "cosine" for a in atts)
    assert m.config["attention"] == "cosine"


def test_prepare_filter_fn_and_keep_attention():
    m = small_model()
    gaq.quantize_(
        m,
        gaq_spec(codebook_size=64, attention="keep", quantize_embedding=False),
        filter_fn=lambda mod, name: not name.startswith("energy_mlp"),
    )
    assert type(m.energy_mlp[0]) is nn.Linear
    assert type(m.embedding) is nn.Embedding
    assert all(a.attention == "so3krates" for a in m.modules() if isinstance(a, Attention))


# ----------------------------------------------------------------------------------------------------------
# bits actually used
# ----------------------------------------------------------------------------------------------------------
def test_weight_bits_actually_used(float_dtype):
    m, _ = prepared(dtype=TORCH_DTYPES[float_dtype])
    n_checked = 0
    for name, mod in m.named_modules():
        if not isinstance(mod, (gaq.QuantLinear, gaq.QuantEmbedding)):
            continue
        w = mod.weight.detach().double().numpy()
        wq = mod.fake_quantized_weight().detach().double().numpy()
        qmax = 2 ** (mod.bits - 1) - 1
        # independent computation: per-row max-abs scale, integer multiples within +-qmax
        amax = np.abs(w).max(axis=1, keepdims=True)
        s = np.where(amax > 0, amax, 1.0) / qmax  # all-zero rows (the new cosine bias) get range 1
        k = wq / s
        bad = np.abs(k - np.round(k)).max()
        assert bad < 1e-3, f"{name}: quantized weight is not on the row grid (off by {bad:.3e} steps)"
        assert np.abs(np.round(k)).max() <= qmax, f"{name}: code beyond +-{qmax}"
        distinct = max(len(np.unique(row)) for row in wq)
        assert distinct <= 2**mod.bits - 1, f"{name}: {distinct} distinct values in a row at {mod.bits} bits"
        err = np.abs(wq - w).max(axis=1) / s[:, 0]
        assert err.max() <= 0.5 + 1e-3, f"{name}: rounding error {err.max():.3f} steps (> half a step)"
        n_checked += 1
    assert n_checked > 10


def test_activation_and_vector_quantizers_on_grid():
    m, _ = prepared()
    layer = m.layers[0]
    x = torch.randn(50, 16, dtype=torch.float64)
    xq = layer.x_quant(x)
    s = float(layer.x_quant.quantizer.scale)
    k = (xq / s).numpy()
    assert np.abs(k - np.round(k)).max() < 1e-9 and np.abs(k).max() <= 127
    chi = torch.randn(50, 3, dtype=torch.float64) * 0.3
    out = layer.chi_quant(chi)
    mddq = layer.chi_quant.mddq
    cb = mddq.codebook.points
    r = out.norm(dim=1)
    levels = torch.as_tensor(mddq.magnitude_quantizer.levels)
    assert torch.min((r[:, None] - levels[None]).abs(), dim=1).values.max() < 1e-12
    nz = r > 0
    dirs = (out[nz] / r[nz, None]).numpy()
    assert np.abs(dirs @ cb.T).max(axis=1).min() > 1 - 1e-12, "a quantized direction is not a codeword"


def test_per_axis_ablation_quantizes_components_at_equal_bits():
    """The per-axis ablation: every chi component on one symmetric grid of ceil(bits_per_vector / 3) bits."""
    cfg = gaq_spec(codebook_size=4096, magnitude_bits=8, vector_quantizer="per_axis")
    fmt = cfg.format
    assert fmt.per_axis_bits == 7 and 3 * fmt.per_axis_bits >= fmt.bits_per_vector == 20
    m, _ = prepared(cfg)
    q = m.layers[0].chi_quant
    assert type(q) is gaq.ActivationQuantizer and q.branch == "equivariant" and q.quantizer.bits == 7
    chi = torch.randn(200, 3, dtype=torch.float64) * 0.3
    k = (q(chi) / float(q.quantizer.scale)).numpy()
    assert np.abs(k - np.round(k)).max() < 1e-9, "a component is off the grid"
    assert np.abs(k).max() <= 63, f"codes beyond 7-bit symmetric range: {np.abs(k).max()}"
    b = molecule(3)
    out = m(b["z"], b["pos"], torch.zeros(6, dtype=torch.long))
    assert torch.isfinite(out["forces"]).all()


# ----------------------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ste", ["geometric", "plain"])
def test_gradients_finite_after_prepare(ste, float_dtype):
    dtype = TORCH_DTYPES[float_dtype]
    m = small_model(dtype)
    gaq.quantize_(m, gaq_spec(codebook_size=128, direction_ste=ste))  # not calibrated: chi starts at 0
    m.train()
    b = molecule(1, dtype)
    out = m(b["z"], b["pos"])
    loss = out["energy"].square().sum() + out["forces"].square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads, "no gradient reached the parameters"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients in {bad}"
    geo = [g.abs().sum() for n, g in grads.items() if "geometric_block" in n]
    assert geo and float(sum(geo)) > 0, "the equivariant branch received no gradient"


def test_vector_quantizer_zero_input():
    q = gaq.VectorFeatureQuantizer((1,), cbmod.fibonacci(64), 64, 8, "uniform", "geometric", 8)
    v = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    out = q(v)  # calibrating on zeros only: no range yet
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(v.grad, torch.zeros_like(v))
    q(torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64))
    q.freeze()
    v2 = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    q(v2).square().sum().backward()
    assert torch.isfinite(v2.grad).all() and torch.equal(v2.grad[0], torch.zeros(3, dtype=torch.float64))


def test_higher_degrees_per_component():
    m, _ = prepared(degrees=(1, 2))
    q = m.layers[0].chi_quant
    assert set(q.blocks) == {"2"}
    chi = torch.randn(10, 8, dtype=torch.float64)
    out = q(chi)
    s = float(q.blocks["2"].scale)
    k = (out[:, 3:] / s).numpy()
    assert np.abs(k - np.round(k)).max() < 1e-9
    b = molecule(2)
    m.train()
    o = m(b["z"], b["pos"])
    o["forces"].square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------------------------------------
# warm-up
# ----------------------------------------------------------------------------------------------------------
def test_warmup_switch():
    cfg = gaq_spec(codebook_size=256, warmup_epochs=2)
    m, _ = prepared(cfg)
    sched = gaq.GAQScheduler(cfg)
    geo = m.layers[0].geometric_block.attention.query
    inv = m.layers[0].feature_block.value
    chi = torch.randn(5, 3, dtype=torch.float64)
    assert sched.on_epoch_start(m, 1) is False
    assert torch.equal(geo.fake_quantized_weight(), geo.weight), "equivariant weights quantized in warm-up"
    assert torch.equal(m.layers[0].chi_quant(chi), chi), "chi quantized in warm-up"
    assert not torch.equal(inv.fake_quantized_weight(), inv.weight), "invariant weights not quantized"
    assert sched.on_epoch_start(m, 2) is False
    assert sched.on_epoch_start(m, 3) is True
    assert not torch.equal(geo.fake_quantized_weight(), geo.weight)
    assert not torch.equal(m.layers[0].chi_quant(chi), chi)


# ----------------------------------------------------------------------------------------------------------
# equivariance of the vector quantizer within its bound
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, size", [("fibonacci", 256), ("icosahedral", 642)])
def test_vector_quantizer_commutation_bound(family, size, float_dtype, rng):
    dtype = TORCH_DTYPES[float_dtype]
    cb = cbmod.fibonacci(size) if family == "fibonacci" else cbmod.icosahedral(3)
    q = gaq.VectorFeatureQuantizer((1,), cb, size, 8, "uniform", "geometric", 8)
    v = torch.as_tensor(rng.standard_normal((2000, 3)), dtype=dtype)
    q(v * 1.5)  # calibrate r_max
    q.freeze()
    rot = torch.as_tensor(
        np.stack([np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(2000)]), dtype=dtype
    )
    rot = rot * torch.sign(torch.linalg.det(rot))[:, None, None]  # proper rotations
    rv = torch.einsum("nij,nj->ni", rot, v)
    err = (q(rv) - torch.einsum("nij,nj->ni", rot, q(v))).norm(dim=1).double()
    m = torch.maximum(q(v).norm(dim=1), q(rv).norm(dim=1)).double()
    bound = m * 4 * math.sin(cb.covering_radius() / 2) + (1e-5 if dtype == torch.float32 else 1e-12)
    ratio = err / bound
    worst = int(ratio.argmax())
    assert ratio.max() <= 1, f"commutation error {err[worst]:.3e} > bound {bound[worst]:.3e} at v={v[worst]}"
    assert err.max() > 0, "no commutation error at all: the test cannot fail"


# ----------------------------------------------------------------------------------------------------------
# prepare / convert round trip, size
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("force_mode", ["ste", "smooth"])
def test_prepare_convert_round_trip(force_mode, tmp_path):
    cfg = gaq_spec(codebook_size=256, force_mode=force_mode)
    m, _ = prepared(cfg)
    m.eval()
    b = molecule(7)
    ref = m(b["z"], b["pos"])
    gaq.quantize_(m, cfg, step="convert")
    assert not any(isinstance(p, nn.Parameter) and n.endswith(".weight") for n, p in m.named_parameters())
    out = m(b["z"], b["pos"])
    for key in ref:
        err = (ref[key] - out[key]).abs().max()
        assert err == 0, f"{key}: converted model differs from prepared by {err:.3e}"
    path = tmp_path / "gaq.pt"
    torch.save(m.state_dict(), path)
    fresh = small_model(seed=1)
    gaq.quantize_(fresh, cfg)
    gaq.quantize_(fresh, cfg, step="convert")
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    again = fresh(b["z"], b["pos"])
    for key in ref:
        err = (again[key] - out[key]).abs().max()
        assert err == 0, f"{key}: reloaded model differs by {err:.3e}"


def test_quant_linear_from_to_linear():
    lin = nn.Linear(5, 4).double()
    q = gaq.QuantLinear.from_linear(lin, bits=4, branch="equivariant")
    assert q.weight is lin.weight
    x = torch.randn(3, 5, dtype=torch.float64)
    back = q.to_linear()
    assert torch.allclose(back(x), q(x), atol=1e-14)
    q.enabled = False
    assert torch.allclose(q(x), lin(x), atol=1e-14)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        gaq.QuantLinear.from_linear(nn.Conv1d(2, 2, 1))


def test_model_size_bytes():
    fp = small_model(torch.float32)
    fp32_bytes = sum(4 * t.numel() for t in fp.state_dict().values() if t.is_floating_point())
    assert gaq.model_size_bytes(fp) == fp32_bytes
    # independent count: every Linear / Embedding weight at its branch's bits, plus FP32 row scales
    expected = fp32_bytes
    for name, mod in fp.named_modules():
        if type(mod) in (nn.Linear, nn.Embedding):
            bits = 4 if ".geometric_block." in name else 8
            n = mod.weight.numel()
            expected += -4 * n + math.ceil(n * bits / 8) + 4 * mod.weight.shape[0]
    m = small_model(torch.float32)
    cfg = gaq_spec(codebook_size=256, attention="keep")
    gaq.quantize_(m, cfg)
    gaq.calibrate_(m, calibration_molecules(torch.float32))
    gaq.quantize_(m, cfg, step="convert")
    observers = 4 * len(m.layers)  # one FP32 range per x quantizer (chi's r_max is extra state)
    got = gaq.size_breakdown(m)
    assert got["total"] == expected + observers, got
    assert got["equivariant"] < got["invariant"]


def test_converted_state_dict_smaller_on_disk():
    def big():
        torch.manual_seed(0)
        return So3krates(num_features=64, num_layers=2, num_heads=2, degrees=(1,), num_rbf=8, max_z=10)

    fp, m = big(), big()
    cfg = gaq_spec(codebook_size=256)
    gaq.quantize_(m, cfg)
    gaq.calibrate_(m, calibration_molecules(torch.float32, k=1))
    gaq.quantize_(m, cfg, step="convert")
    buf_q, buf_f = io.BytesIO(), io.BytesIO()
    torch.save(m.state_dict(), buf_q)
    torch.save(fp.state_dict(), buf_f)
    n_q, n_f = len(buf_q.getvalue()), len(buf_f.getvalue())
    print(f"\nstate_dict on disk: FP32 {n_f} B, converted GAQ {n_q} B; packed {gaq.model_size_bytes(m)} B")
    assert n_q < 0.6 * n_f, f"converted state_dict {n_q} B is not much smaller than FP32 {n_f} B"


# ----------------------------------------------------------------------------------------------------------
# LEE and the force modes
# ----------------------------------------------------------------------------------------------------------
def _lee(model, mols, n_rot=4, seed=0):
    """Mean and max over atoms and rotations of ||F(R x) - R F(x)|| (eV/Angstrom), slow loop."""
    g = torch.Generator().manual_seed(seed)
    errs = []
    for b in mols:
        f = model(b["z"], b["pos"])["forces"]
        for _ in range(n_rot):
            rot = gaq.haar_rotations(1, g, torch.float64, "cpu")[0]
            fr = model(b["z"], b["pos"] @ rot.T)["forces"]
            errs.append((fr - f @ rot.T).norm(dim=1))
    e = torch.cat(errs)
    return float(e.mean()), float(e.max())


def test_lee_gaq_smooth_vs_naive_int8():
    mols = [molecule(s) for s in (11, 12, 13)]
    results = {}
    m, _ = prepared(gaq_spec(codebook_size=256, force_mode="smooth"))
    m.eval()
    results["gaq_smooth"] = _lee(m, mols)
    gaq.set_force_mode(m, "ste")
    results["gaq_ste"] = _lee(m, mols)
    naive = small_model()
    prepare_baseline(naive, "naive_int8", calibration_molecules())
    naive.eval()
    results["naive_int8"] = _lee(naive, mols)
    fp = small_model().eval()
    results["fp"] = _lee(fp, mols)
    print("\nLEE mean/max (meV/A):", {k: (1e3 * a, 1e3 * b) for k, (a, b) in results.items()})
    assert results["gaq_smooth"][1] < 1e-9, f"GAQ smooth-force mode is not exactly equivariant: {results}"
    assert results["fp"][1] < 1e-9
    assert results["naive_int8"][0] > 1e3 * results["gaq_smooth"][0] and results["naive_int8"][0] > 1e-7


@torch.no_grad()
def _fd_forces(model, b, h):
    pos = b["pos"]
    fd = torch.zeros_like(pos)
    for a in range(pos.shape[0]):
        for c in range(3):
            p1, p2 = pos.clone(), pos.clone()
            p1[a, c] += h
            p2[a, c] -= h
            e1 = model(b["z"], p1, compute_forces=False)["energy"].sum()
            e2 = model(b["z"], p2, compute_forces=False)["energy"].sum()
            fd[a, c] = -(e1 - e2) / (2 * h)
    return fd


def test_forces_vs_finite_differences_per_mode():
    m, _ = prepared(gaq_spec(codebook_size=256, force_mode="smooth"))
    m.eval()
    b = molecule(21, n=5)
    f = m(b["z"], b["pos"])["forces"]
    fd = _fd_forces(m, b, 1e-5)
    err = (f - fd).abs()
    rel_smooth = float((f - fd).norm() / f.norm())
    assert rel_smooth < 1e-7, f"smooth: max err {err.max():.3e} at atom {divmod(int(err.argmax()), 3)}"
    gaq.set_force_mode(m, "ste")
    f_ste = m(b["z"], b["pos"])["forces"]
    rel = {}
    for h in (1e-5, 1e-2):
        fd = _fd_forces(m, b, h)
        rel[h] = float((f_ste - fd).norm() / f_ste.norm())
    print(f"\nforce vs FD of the reported energy, relative error: smooth {rel_smooth:.2e}; STE {rel}")
    assert min(rel.values()) > 0.1, f"STE forces unexpectedly match FD of E_q: {rel}"


def test_smooth_mode_reports_quantized_energy():
    m, _ = prepared(gaq_spec(codebook_size=256, force_mode="smooth"))
    m.eval()
    b = molecule(5)
    out = m(b["z"], b["pos"])
    assert "energy_quantized" in out
    gaq.set_force_mode(m, "ste")
    out_ste = m(b["z"], b["pos"])
    assert "energy_quantized" not in out_ste
    assert torch.equal(out_ste["energy"], out["energy_quantized"])
    assert not torch.equal(out["energy"], out["energy_quantized"])
    gaq.set_force_mode(m, "smooth")
    with gaq.quantized_energy_report(m, False):  # MD's switch: the extra pass skipped, nothing else changed
        quiet = m(b["z"], b["pos"])
    assert "energy_quantized" not in quiet and torch.equal(quiet["energy"], out["energy"])
    assert "energy_quantized" in m(b["z"], b["pos"])  # restored on exit
    with pytest.raises(TypeError, match="enabled"), gaq.quantized_energy_report(m, 0):
        pass


def test_md_skips_the_quantized_energy_report(monkeypatch):
    """run_md does not read ``energy_quantized``: a smooth-mode model runs one pass per step, not two."""
    from spherequant.models import _quant_state
    from spherequant.models.md import run_md

    m, _ = prepared(gaq_spec(codebook_size=256, force_mode="smooth"))
    m.eval()
    calls = []
    real = _quant_state.quantized_energy
    monkeypatch.setattr(_quant_state, "quantized_energy", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = molecule(5)
    run_md(m, b["z"], b["pos"], n_steps=3, replicas=2, progress=False)
    assert calls == [] and "energy_quantized" in m(b["z"], b["pos"]) and calls == [1]


def test_lee_penalty_and_loss_terms():
    cfg = gaq_spec(codebook_size=256, lee_weight=0.5)
    m, _ = prepared(cfg)
    m.train()
    b = molecule(9)
    pen = gaq.lee_penalty(m, b, torch.Generator().manual_seed(3))
    again = gaq.lee_penalty(m, b, torch.Generator().manual_seed(3))
    assert float(pen.detach()) > 0 and torch.equal(pen, again)
    pen.backward()
    g = [p.grad for p in m.parameters() if p.grad is not None]
    assert g and all(torch.isfinite(t).all() for t in g) and sum(float(t.abs().sum()) for t in g) > 0
    terms = gaq.qat_loss_terms(m, b, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(terms["loss"], 0.5 * terms["lee"]) and torch.allclose(terms["lee"], pen)
    zero = gaq.qat_loss_terms(m, b, gaq_spec(codebook_size=256, lee_weight=0.0))
    assert float(zero["loss"]) == 0.0
    # independent check on the FP32 model: exactly equivariant, so the penalty vanishes
    fp = small_model().eval()
    assert float(gaq.lee_penalty(fp, b, torch.Generator().manual_seed(0))) < 1e-20


def test_quant_linear_lsq_weights_with_a_negative_step():
    torch.manual_seed(0)
    lin = gaq.QuantLinear.from_linear(torch.nn.Linear(5, 3), bits=4, scheme="lsq")
    w_pos = lin.fake_quantized_weight().detach().clone()
    with torch.no_grad():
        lin.step.neg_()  # as after an update across zero
    assert torch.equal(lin.fake_quantized_weight().detach(), w_pos)
    lin.convert()
    assert torch.allclose(lin.fake_quantized_weight(), w_pos)


# ----------------------------------------------------------------------------------------------------------
# the smooth force mode keeps the quantizers' clipping (spherequant.models.saturation)
# ----------------------------------------------------------------------------------------------------------
def _tighten(model, factor):
    """Shrink every activation range by ``factor``, so that the clamps act on many activations."""
    for m in model.modules():
        if isinstance(m, gaq.VectorFeatureQuantizer):
            m.mddq.set_extra_state({"r_max": m.mddq.r_max * factor, "calibrating": False})
        elif isinstance(m, gaq.ActivationQuantizer):
            m.quantizer.running_range.mul_(factor)


def _hook_inputs(model, b):
    """Inputs of every x_quant / chi_quant call of one forward pass."""
    seen, handles = [], []
    for m in model.modules():
        if isinstance(m, gaq.ActivationQuantizer):
            handles.append(
                m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0].detach())))
            )
    model(b["z"], b["pos"], compute_forces=False)
    for h in handles:
        h.remove()
    return seen


def test_smooth_mode_is_the_network_with_saturated_activations():
    """With ranges tight enough that clamps act: every hook point returns its saturation (the clamp /
    magnitude clip with corners rounded over SMOOTH_SATURATION_WIDTH steps, within (1/2 + width ln 2) steps of
    the quantized value); the energy is exactly invariant and the forces exactly equivariant; the forces are
    minus the energy's gradient (central differences); and the energy differs from that of the same network
    with the activation quantizers removed."""
    from spherequant.models.saturation import SMOOTH_SATURATION_WIDTH as W

    from spherequant.scalar import soft_clamp

    m, _ = prepared(gaq_spec(codebook_size=256, force_mode="smooth"))
    _tighten(m, 0.4)
    m.eval()
    b = molecule(21, n=6)
    clipped = {"x": 0, "chi": 0}
    for mod, inp in _hook_inputs(m, b):
        out = mod(inp)
        if isinstance(mod, gaq.VectorFeatureQuantizer):
            r, r_max, step = inp.norm(dim=-1), mod.mddq.r_max, mod.mddq.top_magnitude_step
            clipped["chi"] += int((r > r_max).sum())
            gap = (out.norm(dim=-1) - r.clamp(max=r_max)).abs()
            assert float(gap.max()) <= W * step * math.log(2) * (1 + 1e-9), float(gap.max())
            assert torch.equal(out, Q.clip_magnitude(inp, r_max, W * step))
        else:
            lo, hi = mod.quantizer.clip_range(inp.dtype)
            step = float(mod.quantizer.scale)
            clipped["x"] += int(((inp < lo) | (inp > hi)).sum())
            assert torch.equal(out, soft_clamp(inp, lo, hi, W * step))
            bound = (0.5 + W * math.log(2)) * step * (1 + 1e-9)
            assert float((mod.quantize(inp) - out).abs().max()) <= bound
    assert clipped["x"] > 0 and clipped["chi"] > 0, f"the test needs active clamps, got {clipped}"
    out = m(b["z"], b["pos"])
    rot = gaq.haar_rotations(1, torch.Generator().manual_seed(4), torch.float64, "cpu")[0]
    out_r = m(b["z"], b["pos"] @ rot.T)
    assert abs(float(out_r["energy"] - out["energy"])) <= 1e-12 * abs(float(out["energy"]))
    f_err = float((out_r["forces"] - out["forces"] @ rot.T).abs().max())
    assert f_err <= 1e-10 * float(out["forces"].abs().max()), f"smooth forces not equivariant: {f_err:.3e}"
    fd = _fd_forces(m, b, 1e-5)
    rel = float((out["forces"] - fd).norm() / out["forces"].norm())
    assert rel < 1e-7, f"smooth forces vs central differences: relative error {rel:.2e}"
    for mod in m.modules():
        if isinstance(mod, gaq.ActivationQuantizer):
            mod.enabled = False  # the identity (warm-up) network: no clamps
    e_identity = float(m(b["z"], b["pos"], compute_forces=False)["energy"].detach())
    assert abs(e_identity - float(out["energy"])) > 1e-6, "the clamps changed nothing"
