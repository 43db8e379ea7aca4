"""Tests of spherequant.models.deploy: int4 packing, the exact integer GEMM, IntegerLinear against the
fake-quant QuantLinear, the full integer So3krates against the fake-quant model (energies of both force modes,
forces), MDDQ codes through the table lookup, memory accounting against an independent count, bad inputs,
and CUDA paths (skipped without CUDA)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from spherequant.models import deploy, gaq
from spherequant.models.so3krates import So3krates
from test_gaq import molecule
from torch import nn

DT = {"float32": torch.float32, "float64": torch.float64}
CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def converted_model(dtype=torch.float64, force_mode="smooth", degrees=(1,), seed=0, num_layers=2):
    torch.manual_seed(seed)
    m = So3krates(num_features=16, num_layers=num_layers, num_heads=2, degrees=degrees, num_rbf=8, max_z=10)
    m = m.to(dtype)
    cfg = gaq.GAQConfig(codebook_size=256, force_mode=force_mode)
    gaq.quantize_(m, cfg, step="prepare")
    gaq.calibrate_(m, [molecule(100 + s, dtype) for s in range(4)])
    gaq.quantize_(m, cfg, step="convert")
    return m.eval(), cfg


# ----------------------------------------------------------------------------------------------------------
# int4 packing
# ----------------------------------------------------------------------------------------------------------
@given(st.lists(st.integers(-8, 7), min_size=0, max_size=41))
def test_pack_unpack_int4_round_trip(vals):
    t = torch.tensor(vals, dtype=torch.int8)
    p = deploy.pack_int4(t)
    assert p.dtype == torch.uint8 and p.numel() == (len(vals) + 1) // 2
    back = deploy.unpack_int4(p, len(vals))
    assert back.tolist() == vals, f"round trip {vals} -> {back.tolist()}"


def test_pack_int4_layout_and_numpy():
    # independent nibble layout: element 2k low nibble, 2k+1 high nibble, two's complement
    vals = np.array([-8, -1, 0, 7, 3, -5, 1], dtype=np.int64)  # odd length
    p = deploy.pack_int4(vals)
    assert isinstance(p, np.ndarray) and p.dtype == np.uint8
    expected = [((v0 & 0xF) | ((v1 & 0xF) << 4)) for v0, v1 in zip(vals[0::2], [*vals[1::2], 0])]
    assert p.tolist() == expected
    back = deploy.unpack_int4(p, (7,))
    assert isinstance(back, np.ndarray) and back.dtype == np.int8 and back.tolist() == vals.tolist()
    full = np.arange(-8, 8).reshape(4, 4)
    assert deploy.unpack_int4(deploy.pack_int4(full), (4, 4)).tolist() == full.tolist()


def test_pack_int4_bad_inputs():
    with pytest.raises(ValueError, match=r"codes must lie in \[-8, 7\]"):
        deploy.pack_int4(torch.tensor([8]))
    with pytest.raises(ValueError, match="codes"):
        deploy.pack_int4(torch.tensor([-9, 0]))
    with pytest.raises(TypeError, match="codes must hold integers"):
        deploy.pack_int4(torch.tensor([0.5]))
    with pytest.raises(TypeError, match="codes"):
        deploy.pack_int4([1, 2])
    with pytest.raises(TypeError, match="packed must have dtype uint8"):
        deploy.unpack_int4(torch.tensor([1, 2], dtype=torch.int8), 4)
    with pytest.raises(ValueError, match="packed must be 1-D"):
        deploy.unpack_int4(torch.zeros(3, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="shape"):
        deploy.unpack_int4(torch.zeros(1, dtype=torch.uint8), (-1,))


# ----------------------------------------------------------------------------------------------------------
# integer GEMM
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,k,n", [(1, 3, 5), (7, 16, 9), (33, 300, 17)])
def test_int_matmul_exact(m, k, n):
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    out = deploy.int_matmul(a, b)
    ref = a.long() @ b.long().t()  # independent exact int64 product
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), ref), f"max diff {(out.long() - ref).abs().max()}"
    # extreme values: all -128 gives the largest accumulator K * 2^14
    ext = torch.full((2, k), -128, dtype=torch.int8)
    assert int(deploy.int_matmul(ext, ext)[0, 0]) == k * 2**14


def test_int_matmul_exact_beyond_float32():
    # accumulators ~ 5e7 > 2^24: a float32 GEMM would round them, the reference path must not
    g = torch.Generator().manual_seed(7)
    a = torch.randint(100, 128, (5, 4001), generator=g, dtype=torch.int8)
    b = torch.randint(100, 128, (7, 4001), generator=g, dtype=torch.int8)
    ref = a.long() @ b.long().t()
    assert int(ref.min()) > 2**25
    out = deploy.int_matmul(a, b)
    assert torch.equal(out.long(), ref), f"max diff {(out.long() - ref).abs().max()}"


def test_int_matmul_bad_inputs():
    a = torch.zeros(2, 3, dtype=torch.int8)
    with pytest.raises(TypeError, match="a must be a 2-D int8 tensor"):
        deploy.int_matmul(a.float(), a)
    with pytest.raises(TypeError, match="b must be a 2-D int8 tensor"):
        deploy.int_matmul(a, a[0])
    with pytest.raises(ValueError, match="inner sizes differ"):
        deploy.int_matmul(a, torch.zeros(2, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="too large"):
        big = torch.zeros(1, 2**17, dtype=torch.int8)
        deploy.int_matmul(big, big)


# ----------------------------------------------------------------------------------------------------------
# IntegerLinear vs QuantLinear
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
def test_integer_linear_matches_quant_linear(bits, float_dtype):
    dtype = DT[float_dtype]
    torch.manual_seed(bits)
    lin = gaq.QuantLinear.from_linear(nn.Linear(37, 11).to(dtype), bits=bits)
    lin.convert()
    s_x = 0.031
    x = torch.randn(23, 37, dtype=dtype) * 2
    xq = torch.clamp(torch.round(x / s_x), -127, 127) * s_x  # on the 8-bit grid, as after x_quant
    ref = lin(xq)
    il = deploy.IntegerLinear.from_quant_linear(lin, act_scale=s_x)
    if bits == 4:
        assert hasattr(il, "weight_packed") and il.weight_packed.numel() == math.ceil(37 * 11 / 2)
    assert torch.equal(il.int_weight().long(), lin.weight_codes.long())
    il.integer = True
    out = il(xq)
    err = (out - ref).abs()
    # rounding-order difference only: |err| <= a few ulp of the sum of |terms|
    bound = 8 * torch.finfo(dtype).eps * (xq.abs() @ lin.weight.abs().t() + lin.bias.abs())
    assert bool((err <= bound).all()), f"max err {err.max():.3e} at {divmod(int(err.argmax()), 11)}"
    # independent exact reference: integer codes, int64 accumulation, then the rescale in float64
    q = torch.round(xq.double() / s_x).long()
    exact = (q @ lin.weight_codes.long().t()).double() * s_x * lin.weight_scale.double().reshape(-1)
    exact = exact + lin.bias.double()
    err2 = (out.double() - exact).abs().max()
    assert err2 <= 8 * torch.finfo(dtype).eps * exact.abs().max(), f"max err {err2:.3e}"
    il.integer = False  # weight-only path equals the fake-quant layer on any input
    assert torch.allclose(il(x), lin(x), rtol=0, atol=10 * torch.finfo(dtype).eps * 37)


def test_integer_linear_bad_inputs():
    codes = torch.tensor([[1, -2], [3, 7]])
    with pytest.raises(ValueError, match="bits must be an int in"):
        deploy.IntegerLinear(codes, torch.ones(2), bits=9)
    with pytest.raises(ValueError, match="scale must have 2 entries"):
        deploy.IntegerLinear(codes, torch.ones(3))
    with pytest.raises(ValueError, match="act_scale must be positive"):
        deploy.IntegerLinear(codes, torch.ones(2), act_scale=0.0)
    lin = gaq.QuantLinear.from_linear(nn.Linear(3, 2), bits=4)
    with pytest.raises(ValueError, match="not converted"):
        deploy.IntegerLinear.from_quant_linear(lin)
    with pytest.raises(TypeError, match="QuantLinear"):
        deploy.IntegerLinear.from_quant_linear(nn.Linear(3, 2))


# ----------------------------------------------------------------------------------------------------------
# the full integer model
# ----------------------------------------------------------------------------------------------------------
def _energy_tol(dtype, e):
    return 1e-9 if dtype == torch.float64 else 1e-4 * max(1.0, float(e.abs().max()))


def test_integer_model_structure():
    m, cfg = converted_model()
    im = deploy.convert_to_integer(m)
    mods = dict(im.net.named_modules())
    assert not any(isinstance(x, (gaq.QuantLinear, gaq.QuantEmbedding)) for x in mods.values())
    lins = {n: x for n, x in mods.items() if isinstance(x, deploy.IntegerLinear)}
    int8_act = {n for n, x in lins.items() if x.act_scale is not None}
    # consumers of quantized x: layer 1's query/key/value projections and the readout's first layer
    assert int8_act == set(deploy._x_consumers("layers.1")) | {"energy_mlp.0"}
    for n, x in lins.items():
        assert x.bits == cfg.weight_bits(gaq.branch_of(n)), n
        assert hasattr(x, "weight_packed") == (x.bits <= 4), n
    # the original model is untouched and still works
    assert isinstance(m.layers[0].geometric_block.attention.query, gaq.QuantLinear)


@pytest.mark.parametrize("force_mode", ["smooth", "ste"])
def test_integer_model_matches_fake_quant(force_mode, float_dtype):
    dtype = DT[float_dtype]
    m, _ = converted_model(dtype, force_mode)
    im = deploy.convert_to_integer(m)
    assert im.force_mode == force_mode
    for seed in range(3):
        mol = molecule(seed, dtype)
        ref = m(mol["z"], mol["pos"])
        out = im(mol["z"], mol["pos"])
        e_q_ref = ref["energy_quantized"] if force_mode == "smooth" else ref["energy"]
        e_q = out["energy_quantized"] if force_mode == "smooth" else out["energy"]
        err = (e_q - e_q_ref).abs().max()
        assert err <= _energy_tol(dtype, e_q_ref), f"seed {seed}: quantized-energy err {err:.3e}"
        # forces: same computation (dequantized weights, same activation path) -> round-off agreement
        ferr = (out["forces"] - ref["forces"]).abs().max()
        ftol = 1e-9 if dtype == torch.float64 else 1e-4 * max(1.0, float(ref["forces"].abs().max()))
        assert ferr <= ftol, f"seed {seed}: max force err {ferr:.3e}"
        if force_mode == "smooth":
            eerr = (out["energy"] - ref["energy"]).abs().max()
            assert eerr <= _energy_tol(dtype, ref["energy"]), f"seed {seed}: smooth energy err {eerr:.3e}"
            # the integer energy is really the activation-quantized one: it differs from the smooth one
            assert (out["energy_quantized"] - out["energy"]).abs().max() > 0


def test_integer_model_batched_and_energy_only():
    m, _ = converted_model(torch.float64, "ste")
    im = deploy.convert_to_integer(m)
    a, b = molecule(1), molecule(2)
    z = torch.cat([a["z"], b["z"]])
    pos = torch.cat([a["pos"], b["pos"] + 50.0])
    batch = torch.tensor([0] * 6 + [1] * 6)
    e = im(z, pos, batch, compute_forces=False)
    assert set(e) == {"energy"} and e["energy"].shape == (2,)
    e_ref = m(z, pos, batch, compute_forces=False)["energy"]
    assert (e["energy"] - e_ref).abs().max() <= 1e-9
    single = im.integer_energy(a["z"], a["pos"])
    assert abs(float(single[0] - e["energy"][0])) <= 1e-9


def test_mddq_codes_table_lookup():
    m, cfg = converted_model(torch.float64, "ste")
    im = deploy.convert_to_integer(m)
    mol = molecule(3)
    im.integer_energy(mol["z"], mol["pos"])
    for layer, ref_layer in zip(im.net.layers, m.layers):
        cq = layer.chi_quant
        assert isinstance(cq, deploy.IntegerVectorQuantizer)
        mag, dire = cq.last_codes
        assert mag.dtype == torch.uint8 and dire.dtype == torch.uint8  # K = 256 -> uint8 (code_dtype)
        assert cq.magnitude_bits + cq.direction_bits == cfg.bits_per_vector
        looked = cq.lookup(mag, dire)
        # independent decode: MDDQ.decode of the reference model's quantizer
        ref = ref_layer.chi_quant.mddq.decode(mag, dire, dtype=torch.float64)
        assert torch.equal(looked, ref), f"max diff {(looked - ref).abs().max():.3e}"
        # round trip of arbitrary codes, and code dtype for a large codebook (int16)
        g = torch.Generator().manual_seed(0)
        mg = torch.randint(0, 256, (50,), generator=g).to(torch.uint8)
        dr = torch.randint(0, 256, (50,), generator=g).to(torch.uint8)
        v = cq.lookup(mg, dr)
        m2, d2 = ref_layer.chi_quant.mddq.encode(v)
        nz = mg != 0
        assert torch.equal(m2[nz], mg[nz]) and torch.equal(d2[nz], dr[nz])
    big = gaq.VectorFeatureQuantizer((1,), None, 4096, 8, "uniform", "geometric", 8)
    big.mddq.observe(torch.randn(10, 3, dtype=torch.float64))
    big.kmeans, big.fitted = False, True
    ivq = deploy.IntegerVectorQuantizer(big)
    ivq.integer = True
    out = ivq(torch.randn(5, 3, dtype=torch.float64))
    assert ivq.last_codes[1].dtype == torch.int16 and out.shape == (5, 3)


def test_convert_to_integer_bad_inputs():
    with pytest.raises(TypeError, match="model must be a So3krates"):
        deploy.convert_to_integer(nn.Linear(2, 2))
    torch.manual_seed(0)
    m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9).double()
    with pytest.raises(ValueError, match="must be converted"):
        deploy.convert_to_integer(m)
    gaq.quantize_(m, gaq.GAQConfig(codebook_size=64), step="prepare")
    with pytest.raises(ValueError, match="must be converted"):
        deploy.convert_to_integer(m)
    uncal = gaq.ActivationQuantizer(gaq.SymmetricQuantizer(8), "invariant")
    with pytest.raises(ValueError, match="not calibrated"):
        deploy.IntegerScalarQuantizer(uncal)


# ----------------------------------------------------------------------------------------------------------
# memory accounting
# ----------------------------------------------------------------------------------------------------------
def _independent_weight_count(model, bits_eq, bits_inv):
    """Count from named parameters: every 2-D weight of a linear layer / embedding, by branch."""
    fp32 = {"equivariant": 0, "invariant": 0}
    quant = {"equivariant": 0, "invariant": 0}
    for name, p in model.named_parameters():
        owner = name.rpartition(".")[0]
        br = "equivariant" if "geometric_block" in name.split(".") else "invariant"
        bits = bits_eq if br == "equivariant" else bits_inv
        if name.endswith(".weight") and p.ndim == 2:
            fp32[br] += 4 * p.numel()
            quant[br] += -(-p.numel() * bits // 8) + 4 * p.shape[0]
        elif name.endswith(".bias") and owner:
            fp32[br] += 4 * p.numel()
            quant[br] += 4 * p.numel()
    return fp32, quant


def test_memory_report_vs_independent_count():
    torch.manual_seed(0)
    kw = dict(num_features=16, num_layers=2, num_heads=2, degrees=(1,), num_rbf=8, max_z=10)
    float_model = So3krates(**kw, attention="cosine").double()  # same modules as after GAQ prepare
    fp32, quant = _independent_weight_count(float_model, 4, 8)
    rep_float = deploy.memory_report(float_model, n_atoms=24, config=gaq.GAQConfig(codebook_size=256))
    m, _ = converted_model()
    im = deploy.convert_to_integer(m)
    for model in (m, im):
        rep = deploy.memory_report(model, n_atoms=24, n_edges=100)
        for br in ("equivariant", "invariant"):
            assert rep["weights"][br]["fp32"] == fp32[br], (br, rep["weights"][br], fp32[br])
            assert rep["weights"][br]["quantized"] == quant[br], (br, rep["weights"][br], quant[br])
            assert rep_float["weights"][br] == rep["weights"][br]
        # other: radial basis (centers, beta), energy shift/scale, cosine log_tau (after prepare) -- FP32
        other = 4 * (8 + 8 + 11 + 11) + 4 * 2 * 2  # 2 layers x 2 attention blocks
        assert rep["weights"]["other"] == {"fp32": other, "quantized": other}, rep["weights"]["other"]
        pa = rep["activations_per_atom"]
        assert pa["x"] == {"fp32": 64, "quantized": 16}
        assert pa["chi_l1"] == {"fp32": 12, "quantized": 2}  # 8 magnitude + 8 direction bits (K = 256)
        assert rep["activations"]["fp32"] == 24 * 76 + 100 * 4 * (3 + 8 + 3 + 1)
    # the integer model's actual storage agrees with the report's packed count for the weight codes
    stored = sum(x.packed_bytes() for x in im.net.modules() if isinstance(x, deploy._IntegerWeights))
    rep = deploy.memory_report(im, n_atoms=1)
    assert stored == rep["weights"]["equivariant"]["quantized"] + rep["weights"]["invariant"]["quantized"]
    table = deploy.format_memory_table(rep)
    assert table.splitlines()[0].startswith("| item |") and "weights: total" in table


def test_memory_report_counts_stored_kmeans_codebook():
    reps = {}
    for book in ("fibonacci", "kmeans"):
        torch.manual_seed(0)
        m = So3krates(num_features=16, num_layers=2, num_heads=2, degrees=(1,), num_rbf=8, max_z=10).double()
        cfg = gaq.GAQConfig(codebook=book, codebook_size=16)
        gaq.quantize_(m, cfg, step="prepare")
        gaq.calibrate_(m, [molecule(100 + s) for s in range(4)])
        gaq.quantize_(m, cfg, step="convert")
        reps[book] = deploy.memory_report(deploy.convert_to_integer(m), n_atoms=1)
    extra = (
        reps["kmeans"]["weights"]["equivariant"]["quantized"]
        - reps["fibonacci"]["weights"]["equivariant"]["quantized"]
    )
    assert extra == 2 * 16 * 12, extra  # two layers, 16 FP32 codewords each


def test_memory_report_degrees_and_bad_inputs():
    torch.manual_seed(0)
    m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1, 2), num_rbf=4, max_z=9)
    rep = deploy.memory_report(m, n_atoms=3, config=gaq.GAQConfig(codebook_size=4096))
    assert rep["activations_per_atom"]["chi_l1"] == {"fp32": 12, "quantized": 3}  # 8 + 12 bits
    assert rep["activations_per_atom"]["chi_l2"] == {"fp32": 20, "quantized": 5}
    with pytest.raises(ValueError, match="n_atoms must be a positive int"):
        deploy.memory_report(m, n_atoms=0)
    with pytest.raises(ValueError, match="n_edges"):
        deploy.memory_report(m, n_atoms=1, n_edges=-1)
    with pytest.raises(TypeError, match="config must be a GAQConfig"):
        deploy.memory_report(m, n_atoms=1, config={"bits": 4})
    with pytest.raises(TypeError, match="model must be a So3krates"):
        deploy.memory_report(nn.Linear(2, 2), n_atoms=1)
    with pytest.raises(ValueError, match="report must be a dict"):
        deploy.format_memory_table({})


# ----------------------------------------------------------------------------------------------------------
# CUDA paths
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("m,k,n", [(1, 3, 5), (40, 132, 132), (17, 16, 8)])
def test_int_matmul_cuda_matches_cpu(m, k, n):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    out = deploy.int_matmul(a.cuda(), b.cuda()).cpu()
    assert torch.equal(out, deploy.int_matmul(a, b))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_integer_model_cuda_matches_cpu():
    m, _ = converted_model(torch.float64, "ste")
    im = deploy.convert_to_integer(m)
    mol = molecule(0)
    e_cpu = im.integer_energy(mol["z"], mol["pos"])
    im_gpu = deploy.convert_to_integer(m.cuda())
    e_gpu = im_gpu.integer_energy(mol["z"].cuda(), mol["pos"].cuda()).cpu()
    assert (e_gpu - e_cpu).abs().max() <= 1e-9


# ----------------------------------------------------------------------------------------------------------
# latency benchmark smoke test (CPU, tiny model)
# ----------------------------------------------------------------------------------------------------------
def test_latency_benchmark_quick_runs(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"
    spec = importlib.util.spec_from_file_location("_latency_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--quick", "--device", "cpu", "--features", "8", "--layers", "1",
                    "--json", str(tmp_path / "lat.json")])  # fmt: skip
    assert (tmp_path / "lat.json").exists()
    assert "CPU" in res["device"] and "not comparable" in res["device"]
    cases = {(c["batch"], c["variant"]): c for c in res["cases"]}
    assert set(cases) == {(b, v) for b in (1, 16) for v in ("fp32", "bf16", "w4a8")}
    for c in cases.values():
        assert c["total_ms"] > 0 and all(t >= -1e-3 for t in c["breakdown_ms"].values()), c
        assert abs(sum(c["breakdown_ms"].values()) - c["instrumented_total_ms"]) < 1e-6
    # the integer model's linear layers were timed inside the deploy sections
    assert cases[(16, "w4a8")]["breakdown_ms"]["weights"] > 0
    assert cases[(16, "w4a8")]["breakdown_ms"]["quant"] > 0
    assert "| batch |" in capsys.readouterr().out
