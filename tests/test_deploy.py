"""Tests of spherequant.models.deploy: int4 packing, the exact integer GEMM, IntegerLinear against the
fake-quant QuantLinear, the full integer So3krates against the fake-quant model (energies of both force modes,
forces), MDDQ codes through the table lookup, memory accounting against an independent count, bad inputs,
and CUDA paths (skipped without CUDA)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import TORCH_DTYPES, calibration_molecules, molecule, small_model
from _scripts import load_script
from hypothesis import given
from hypothesis import strategies as st
from spherequant.models import checkpoints, deploy, gaq
from spherequant.models.neighbors import radius_graph
from spherequant.models.so3krates import So3krates
from torch import nn

from spherequant.scalar import SymmetricQuantizer


def gaq_spec(**options):
    """The GAQ :class:`~spherequant.models.gaq.QuantizationSpec` of flat ``options``."""
    return gaq.QuantizationSpec.from_options("gaq", **options)


CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def converted_model(dtype=torch.float64, force_mode="smooth", degrees=(1,), seed=0, num_layers=2):
    m = small_model(dtype, degrees, seed, num_layers=num_layers)
    cfg = gaq_spec(codebook_size=256, force_mode=force_mode)
    gaq.quantize_(m, cfg, step="prepare")
    gaq.calibrate_(m, calibration_molecules(dtype))
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
CPU_KERNELS = ["float32", "float64"] + (["int_mm"] if deploy.int_mm_cpu_available() else [])


@pytest.fixture(params=CPU_KERNELS)
def gemm_kernel(request, monkeypatch):
    """Every CPU integer GEMM kernel this torch can run, forced in turn."""
    monkeypatch.setattr(deploy, "INT_GEMM_CPU", request.param)
    assert deploy.int_gemm_cpu_kernel() == request.param
    return request.param


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


def test_int_matmul_exact_beyond_float32(gemm_kernel):
    # accumulators ~ 5e7 > 2^24: one float32 GEMM would round them; the float32 kernel's blocks of 1024 and
    # the other kernels must not
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


# shapes the CUDA kernel cannot take directly (rows <= 16, sizes not multiples of 8), empty ones, and the
# model's (atoms x 132 -> five projections of 132)
AWKWARD = [(1, 1, 1), (1, 3, 5), (16, 8, 8), (17, 9, 13), (5, 133, 7), (300, 132, 660), (0, 4, 3), (3, 0, 2),
           (2, 5, 0)]  # fmt: skip


def _spy_int_mm(monkeypatch):
    calls = []
    real = torch._int_mm

    def spy(a, b, *args, **kwargs):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "_int_mm", spy)
    return calls


@pytest.mark.parametrize("m,k,n", AWKWARD)
def test_int_matmul_kernel_equals_float64_oracle(m, k, n, gemm_kernel, monkeypatch):
    """Every kernel's int32 accumulators equal the float64 reference and an int64 product exactly."""
    g = torch.Generator().manual_seed(31 * m + 7 * k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    calls = _spy_int_mm(monkeypatch) if gemm_kernel == "int_mm" else None
    out = deploy.int_matmul(a, b)
    oracle = deploy.int_matmul_reference(a, b)
    exact = a.long() @ b.long().t()
    assert out.dtype == oracle.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, oracle), f"max diff {(out.long() - oracle.long()).abs().max()}"
    assert torch.equal(out.long(), exact)
    if calls is not None and m * k * n:
        assert calls, "torch._int_mm was available but not used"
    # non-contiguous operands (a transposed copy's view) give the same result
    assert torch.equal(deploy.int_matmul(a.t().contiguous().t(), b), oracle)


def test_int_matmul_kernel_extremes_and_large_inner_size(gemm_kernel):
    # every product 2^14 (and -2^14 - 2^7 mixed): a kernel that saturates 16-bit partial sums would fail
    for k in (1, 255, 4097, 2**17 - 1):
        a = torch.full((18, k), -128, dtype=torch.int8)
        b = torch.full((9, k), -128, dtype=torch.int8)
        b[1::2] = 127
        out = deploy.int_matmul(a, b)
        assert int(out[0, 0]) == k * 2**14 and int(out[0, 1]) == -k * 128 * 127, k
        assert torch.equal(out, deploy.int_matmul_reference(a, b))


@given(st.integers(0, 40), st.integers(0, 2100), st.integers(0, 40), st.integers(0, 2**31 - 1),
       st.sampled_from(CPU_KERNELS))  # fmt: skip
def test_int_matmul_property_random_shapes(m, k, n, seed, kernel):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    old = deploy.INT_GEMM_CPU
    deploy.INT_GEMM_CPU = kernel
    try:
        out = deploy.int_matmul(a, b)
    finally:
        deploy.INT_GEMM_CPU = old
    ref = deploy.int_matmul_reference(a, b)
    assert torch.equal(out, ref), f"{kernel}: max diff {(out.long() - ref.long()).abs().max()}"


def test_int_matmul_fallback_without_int_mm(monkeypatch):
    g = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (20, 37), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (11, 37), generator=g, dtype=torch.int8)
    expected = a.long() @ b.long().t()
    # a torch without the kernel: the probe says so and the exact float32 kernel is chosen
    monkeypatch.delattr(torch, "_int_mm")
    monkeypatch.setattr(deploy, "_INT_MM_CPU_PROBE", None)
    monkeypatch.setattr(deploy, "_INT_GEMM_CPU_CHOICE", None)
    assert deploy.int_mm_cpu_available() is False
    assert deploy.int_gemm_cpu_kernel() == "float32"
    assert torch.equal(deploy.int_matmul(a, b).long(), expected)
    # a kernel that is present but wrong is rejected by the probe, however fast it is
    monkeypatch.setattr(
        torch, "_int_mm", lambda x, y: (x.long() @ y.long()).to(torch.int32) + 1, raising=False
    )
    monkeypatch.setattr(deploy, "_INT_MM_CPU_PROBE", None)
    monkeypatch.setattr(deploy, "_INT_GEMM_CPU_CHOICE", None)
    monkeypatch.setattr(deploy, "_median_seconds", lambda fn, repeats=5: 0.0)
    assert deploy.int_mm_cpu_available() is False
    assert deploy.int_gemm_cpu_kernel() == "float32"
    assert torch.equal(deploy.int_matmul(a, b).long(), expected)
    # the switch forces the reference even when the kernel exists
    monkeypatch.setattr(torch, "_int_mm", lambda *_: pytest.fail("kernel used despite the switch"))
    monkeypatch.setattr(deploy, "INT_GEMM_CPU", "float64")
    assert torch.equal(deploy.int_matmul(a, b).long(), expected)
    monkeypatch.setattr(deploy, "INT_GEMM_CPU", "int8")
    with pytest.raises(ValueError, match="INT_GEMM_CPU must be None or one of"):
        deploy.int_matmul(a, b)
    monkeypatch.setattr(deploy, "INT_GEMM_CPU", "int_mm")  # forced, but the probe rejected the kernel
    with pytest.raises(ValueError, match="int_mm_cpu_available"):
        deploy.int_matmul(a, b)


def test_int_gemm_kernel_chosen_by_timing(monkeypatch):
    """A correct ``torch._int_mm`` is used only when it times faster than the exact float32 kernel."""
    monkeypatch.setattr(deploy, "_INT_MM_CPU_PROBE", True)
    fast_int = {"int": 1.0, "f32": 2.0}
    slow_int = {"int": 3.0, "f32": 2.0}
    for timings, expected in ((fast_int, "int_mm"), (slow_int, "float32")):
        seen = []

        def fake_median(fn, repeats=5, timings=timings, seen=seen):
            seen.append(fn)
            return timings["int" if len(seen) == 1 else "f32"]

        monkeypatch.setattr(deploy, "_median_seconds", fake_median)
        monkeypatch.setattr(deploy, "_INT_GEMM_CPU_CHOICE", None)
        assert deploy.int_gemm_cpu_kernel() == expected and len(seen) == 2
        assert deploy.int_gemm_cpu_kernel() == expected and len(seen) == 2  # chosen once per process


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_integer_model_same_with_every_gemm_kernel(dtype, monkeypatch):
    """The converted model's energy is bitwise the same whichever CPU kernel runs its integer GEMMs, on the
    fused and the module path, and a fused plan built under one kernel stays right under another."""
    m, _ = converted_model(dtype, "ste")
    im = deploy.convert_to_integer(m)
    mol = molecule(4, dtype=dtype)
    monkeypatch.setattr(deploy, "INT_GEMM_CPU", "float64")
    e_ref = im.integer_energy(mol["z"], mol["pos"])
    e_mod_ref = im.integer_energy(mol["z"], mol["pos"], fused=False)
    for kernel in CPU_KERNELS:
        monkeypatch.setattr(deploy, "INT_GEMM_CPU", kernel)
        calls = _spy_int_mm(monkeypatch) if kernel == "int_mm" else None
        e_kernel = im.integer_energy(mol["z"], mol["pos"])
        if calls is not None:
            assert len(calls) == 2  # layer 1's five projections in one GEMM, the readout's first layer
        assert torch.equal(e_kernel, e_ref), kernel
        im.clear_cache()  # the plan and the weights rebuilt in this kernel's operand form
        assert torch.equal(im.integer_energy(mol["z"], mol["pos"]), e_ref), kernel
        assert torch.equal(im.integer_energy(mol["z"], mol["pos"], fused=False), e_mod_ref), kernel


# ----------------------------------------------------------------------------------------------------------
# weights unpacked once
# ----------------------------------------------------------------------------------------------------------
def test_int4_weights_unpacked_once_and_cache_follows_the_module(monkeypatch):
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(-8, 8, (13, 21), generator=g)
    lin = deploy.IntegerLinear(codes, torch.rand(13, generator=g) + 0.1, torch.randn(13, generator=g),
                               bits=4, act_scale=0.05)  # fmt: skip
    assert lin.weight_packed.numel() == math.ceil(13 * 21 / 2)
    n_unpack = []
    real = deploy.unpack_int4
    monkeypatch.setattr(deploy, "unpack_int4", lambda *a: n_unpack.append(1) or real(*a))
    x = torch.randn(4, 21, generator=g)
    lin.integer = True
    y1 = lin(x)
    y2 = lin(x * 2)
    lin.integer = False
    lin(x)
    assert len(n_unpack) == 1, f"unpacked {len(n_unpack)} times"
    assert torch.equal(lin.int_weight().long(), codes) and lin.int_weight_t().is_contiguous()
    # exact: rescaled int32 accumulator of the requantized input
    q = torch.clamp(torch.round(x / torch.tensor(0.05)), -127, 127).long()
    exact = (q @ codes.t()).float() * (torch.tensor(0.05) * lin.weight_scale) + lin.bias
    assert torch.allclose(y1, exact, rtol=1e-6, atol=1e-6) and not torch.equal(y1, y2)
    lin.double()  # the cache is dropped by a cast ...
    assert lin.dequantized_weight().dtype == torch.float64 and len(n_unpack) == 2
    lin.load_state_dict(lin.state_dict())  # ... and by loading a state
    lin.int_weight()
    assert len(n_unpack) == 3


# ----------------------------------------------------------------------------------------------------------
# the fused integer forward against the module-by-module integer path and the fake-quant model
# ----------------------------------------------------------------------------------------------------------
def _attention_model(dtype, attention, force_mode="ste", num_layers=2):
    m = small_model(dtype, seed=1, num_layers=num_layers)
    cfg = gaq_spec(codebook_size=256, force_mode=force_mode, attention=attention)
    gaq.quantize_(m, cfg, step="prepare")
    gaq.calibrate_(m, calibration_molecules(dtype))
    gaq.quantize_(m, cfg, step="convert")
    return m.eval()


def _three_molecules(dtype):
    mols = [molecule(s, dtype, n=n) for s, n in ((11, 6), (12, 8), (13, 3))]
    z = torch.cat([mm["z"] for mm in mols])
    pos = torch.cat([mm["pos"] + 40.0 * k for k, mm in enumerate(mols)])
    batch = torch.cat([torch.full((len(mm["z"]),), k) for k, mm in enumerate(mols)])
    return z, pos, batch


@pytest.mark.parametrize("attention", ["cosine", "keep"])
@pytest.mark.parametrize("block", [3, 1024])
def test_fused_integer_forward_matches_module_path(attention, block, float_dtype, monkeypatch):
    dtype = TORCH_DTYPES[float_dtype]
    m = _attention_model(dtype, attention)
    im = deploy.convert_to_integer(m)
    assert im.fused_unsupported_reason() is None
    monkeypatch.setattr(deploy, "EDGE_BLOCK", block)  # 3: many blocks of edge pairs
    monkeypatch.setattr(deploy, "PAIR_MIN_EDGES", 0 if block == 3 else 10**9)  # paired / unpaired edges
    z, pos, batch = _three_molecules(dtype)
    e_fused = im.integer_energy(z, pos, batch, fused=True)
    e_module = im.integer_energy(z, pos, batch, fused=False)
    e_fake = m(z, pos, batch, compute_forces=False)["energy"].detach()
    assert e_fused.shape == (3,)
    tol = _energy_tol(dtype, e_module)
    assert (e_fused - e_module).abs().max() <= tol, f"fused vs module {(e_fused - e_module).tolist()}"
    assert (e_fused - e_fake).abs().max() <= tol, f"fused vs fake quant {(e_fused - e_fake).tolist()}"
    # an asymmetric neighbour list (one direction of a pair dropped, edges shuffled): unpaired edges
    ei = radius_graph(pos, m.cutoff, batch)
    keep = torch.ones(ei.shape[1], dtype=torch.bool)
    keep[int(((ei[0] == 1) & (ei[1] == 2)).nonzero())] = False
    ei = ei[:, keep][:, torch.randperm(int(keep.sum()), generator=torch.Generator().manual_seed(0))]
    fwd, rev = deploy._edge_pairs(ei[0], ei[1], len(z))
    assert rev is None and fwd.shape[0] == ei.shape[1]
    kw = dict(edge_index=ei, num_graphs=3)
    e1 = im.integer_energy(z, pos, batch, fused=True, **kw)
    e2 = im.integer_energy(z, pos, batch, fused=False, **kw)
    assert (e1 - e2).abs().max() <= tol
    assert (e1 - e_module).abs().max() > tol  # the dropped edge matters


def test_edge_pairs_reverse_map(monkeypatch):
    monkeypatch.setattr(deploy, "PAIR_MIN_EDGES", 0)
    z, pos, batch = _three_molecules(torch.float64)
    ei = radius_graph(pos, 5.0, batch)
    fwd, rev = deploy._edge_pairs(ei[0], ei[1], len(z))
    i, j = ei
    assert rev is not None and 2 * fwd.shape[0] == ei.shape[1]
    assert bool((i[fwd] < j[fwd]).all()) and torch.equal(i[rev], j[fwd]) and torch.equal(j[rev], i[fwd])
    assert sorted(torch.cat([fwd, rev]).tolist()) == list(range(ei.shape[1]))
    dup = torch.cat([ei, ei[:, :2]], dim=1)  # duplicated edges: no pairing
    assert deploy._edge_pairs(dup[0], dup[1], len(z))[1] is None


def test_fused_mddq_codes_equal_core_encode(float_dtype):
    dtype = TORCH_DTYPES[float_dtype]
    m, _ = converted_model(dtype, "ste")
    mddq = m.layers[0].chi_quant.mddq
    g = torch.Generator().manual_seed(2)
    r_max = mddq.r_max
    v = torch.randn(4000, 3, generator=g, dtype=torch.float64).to(dtype) * r_max
    v[:5] = 0.0  # zero vectors
    v[5:10] *= 1e-30  # magnitude code 0
    v[10:15] *= 1e6  # clipped magnitudes
    v[16:20] *= 1e-40 if dtype == torch.float32 else 1e-310  # subnormal components
    v[15] = torch.tensor([0.0, 0.0, -2.0], dtype=dtype) * r_max  # a codeword direction
    # the polar split is the core's bit for bit (on every row, not only where a code would change)
    from spherequant._backend import polar as _polar

    r, u = deploy._polar_split(v)
    r_ref, u_ref, nonzero = _polar(v)
    assert torch.equal(r, r_ref) and torch.equal(u[nonzero], u_ref[nonzero])
    assert torch.equal(u[~nonzero], torch.tensor([[0.0, 0.0, 1.0]], dtype=dtype).expand(5, 3))
    mag, dire = deploy._mddq_codes(mddq, v)
    ref_mag, ref_dir = mddq.encode(v)
    assert torch.equal(mag, ref_mag.long())
    nz = ref_mag != 0  # the direction of a zero-magnitude code is irrelevant (encode stores 0)
    bad = (dire[nz] != ref_dir[nz].long()).nonzero()
    assert bad.numel() == 0, f"direction codes differ at rows {bad[:5].flatten().tolist()}"
    with pytest.raises(ValueError, match="chi contains NaN"):
        deploy._mddq_codes(mddq, torch.full((2, 3), float("nan"), dtype=dtype))


def _quant_entry(dtype, bits=8, scale=0.037):
    return {"x_bits": bits, "x_scale": torch.tensor(scale, dtype=dtype)}


@pytest.mark.skipif(deploy._numba is None, reason="numba not installed")
def test_compiled_activation_quantizer_equals_torch_chain(float_dtype, monkeypatch):
    dtype = TORCH_DTYPES[float_dtype]
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(50, 33, generator=g, dtype=torch.float64) * 3).to(dtype)
    dx = (torch.randn(50, 40, generator=g, dtype=torch.float64)[:, 3:36]).to(dtype)  # strided view
    entry = _quant_entry(dtype)
    x[0, :5] = torch.tensor([0.5, 1.5, -2.5, 126.5, 300.0], dtype=dtype) * entry["x_scale"]  # ties, clip
    dx[0, :5] = 0
    monkeypatch.setattr(deploy, "COMPILED_QUANT_MIN", 0)
    monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", True)
    dec, codes = deploy._quantize_x(x, dx, entry)
    monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", False)
    dec_ref, codes_ref = deploy._quantize_x(x, dx, entry)
    assert codes.dtype == torch.int8 and torch.equal(codes, codes_ref)
    assert torch.equal(dec, dec_ref), f"max diff {(dec - dec_ref).abs().max():.3e}"
    # independent: round half to even, clip to +-127
    q = torch.clamp(torch.round((x.double() + dx.double()) / float(entry["x_scale"])), -127, 127)
    assert (q - codes.double()).abs().max() <= 1  # ties may differ by the float rounding of x + dx
    assert int(codes[0, 0]) == 0 and int(codes[0, 4]) == 127  # exact tie 0.5 -> 0 (half to even); clip


@pytest.mark.skipif(deploy._numba is None, reason="numba not installed")
def test_compiled_mddq_equals_torch_chain(float_dtype, monkeypatch):
    dtype = TORCH_DTYPES[float_dtype]
    m, _ = converted_model(dtype, "ste")
    im = deploy.convert_to_integer(m)
    entry = im.fused_plan()["layers"][0]
    r_max = entry["mddq"].r_max
    g = torch.Generator().manual_seed(9)
    chi = (torch.randn(3000, 3, generator=g, dtype=torch.float64) * r_max).to(dtype)
    dchi = (torch.randn(3000, 3, generator=g, dtype=torch.float64) * 0.1 * r_max).to(dtype)
    dchi[:4] = -chi[:4]  # zero vectors
    chi[4:8] *= 1e-30  # magnitude code 0
    chi[8:12] *= 1e6  # clipped
    monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", True)
    out = deploy._mddq(chi, dchi, entry)
    monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", False)
    ref = deploy._mddq(chi, dchi, entry)
    assert torch.equal(out, ref), f"rows differ: {(out != ref).any(1).nonzero()[:5].flatten().tolist()}"
    assert torch.equal(out[:4], torch.zeros(4, 3, dtype=dtype))
    for flag in (True, False):
        monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", flag)
        bad = chi.clone()
        bad[7, 1] = float("inf")
        with pytest.raises(ValueError, match="chi contains NaN or infinite"):
            deploy._mddq(bad, dchi, entry)
    # the whole model: the same energies with and without the compiled loops (the compiled logits and
    # softmax round differently; the energy reads only integer codes, so it is equal unless a code flips)
    z, pos, batch = _three_molecules(dtype)
    monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", True)
    e1 = im.integer_energy(z, pos, batch)
    monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", False)
    e2 = im.integer_energy(z, pos, batch)
    assert (e1 - e2).abs().max() <= _energy_tol(dtype, e2), f"compiled vs torch {(e1 - e2).tolist()}"


def _random_graph(seed, n=9, symmetric=True):
    g = torch.Generator().manual_seed(seed)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if torch.rand(1, generator=g) < 0.5]
    edges = [(a, b) for a, b in pairs] + ([(b, a) for a, b in pairs] if symmetric else [])
    ei = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t()
    return ei[:, torch.randperm(ei.shape[1], generator=g)]


@pytest.mark.skipif(deploy._numba is None, reason="numba not installed")
@pytest.mark.parametrize("seed", range(6))
def test_compiled_edge_pairs_equal_torch(seed, monkeypatch):
    monkeypatch.setattr(deploy, "PAIR_MIN_EDGES", 0)
    sym = _random_graph(seed)
    cases = {
        "symmetric": sym,
        "one direction dropped": sym[:, 1:],
        "duplicate": torch.cat([sym, sym[:, :1], sym[:, 1:2].flip(0)], dim=1),
        "self edge": torch.cat([sym, torch.tensor([[2, 5], [2, 5]])], dim=1),
        "one-way pairs": _random_graph(seed, symmetric=False),
        "empty": torch.zeros(2, 0, dtype=torch.long),
    }
    for name, ei in cases.items():
        monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", True)
        fwd, rev = deploy._edge_pairs(ei[0], ei[1], 9)
        monkeypatch.setattr(deploy, "USE_COMPILED_QUANT", False)
        fwd_ref, rev_ref = deploy._edge_pairs(ei[0], ei[1], 9)
        assert torch.equal(fwd, fwd_ref), name
        assert (rev is None) == (rev_ref is None), name
        if rev is not None:
            assert torch.equal(rev, rev_ref), name
    assert deploy._edge_pairs(sym[0], sym[1], 9)[1] is not None  # the symmetric graph is paired


@pytest.mark.skipif(deploy._numba is None, reason="numba not installed")
def test_compiled_softmax_and_messages_match_torch(float_dtype):
    from spherequant.models.so3krates import scatter_softmax

    dtype = TORCH_DTYPES[float_dtype]
    g = torch.Generator().manual_seed(4)
    e, n, hf, dhf = 300, 12, 4, 5
    i = torch.randint(0, n - 1, (e,), generator=g)  # receiver n - 1 gets no edge
    j = torch.randint(0, n, (e,), generator=g)
    logits = (torch.randn(e, hf + 3, generator=g, dtype=torch.float64) * 20).to(dtype)
    phi = torch.rand(e, generator=g, dtype=torch.float64).to(dtype)
    phi[i == 3] = 0.0  # every edge of receiver 3 cut off: zeros, no NaN
    ref = scatter_softmax(logits, i, n, weight=phi).mul_(phi[:, None])
    out = torch.empty_like(logits)
    deploy._kernel("softmax")(logits.numpy(), i.numpy(), phi.numpy(), n, torch.finfo(dtype).tiny, out.numpy())
    assert torch.isfinite(out).all() and torch.equal(out[i == 3], torch.zeros_like(out[i == 3]))
    rel = ((out - ref).abs() / ref.abs().clamp_min(torch.finfo(dtype).tiny)).max()
    assert rel <= 16 * torch.finfo(dtype).eps, f"worst relative difference {rel:.3e}"
    # messages: the products and the order of index_add_, bit for bit (v a strided column block)
    proj = torch.randn(n, 3 * hf * dhf, generator=g, dtype=torch.float64).to(dtype)
    v = proj[:, hf * dhf : 2 * hf * dhf]
    dx_ref = torch.zeros(n, hf * dhf, dtype=dtype)
    dx_ref.index_add_(0, i, v.index_select(0, j).view(e, hf, dhf).mul_(out[:, :hf, None]).view(e, -1))
    dx = torch.zeros(n, hf * dhf, dtype=dtype)
    deploy._kernel("messages")(v.numpy(), out.numpy(), i.numpy(), j.numpy(), hf, dhf, dx.numpy())
    assert torch.equal(dx, dx_ref), f"max diff {(dx - dx_ref).abs().max():.3e}"


@pytest.mark.skipif(deploy._numba is None, reason="numba not installed")
@pytest.mark.parametrize("cosine", [True, False])
def test_compiled_logits_match_float64_formula(cosine, float_dtype):
    """The logits kernel against the formula evaluated in float64 with torch (both directions of a pair
    share one filter row; heads of two widths)."""
    dtype = TORCH_DTYPES[float_dtype]
    g = torch.Generator().manual_seed(6)
    n, c, sizes = 10, 17, [3, 3, 5, 5, 5]
    width, nh = sum(sizes), len(sizes)
    hoff = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    q, k = (torch.randn(n, width, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.randn(c, width, generator=g, dtype=torch.float64)
    i_p, j_p = torch.randint(0, n, (c,), generator=g), torch.randint(0, n, (c,), generator=g)
    recv, send = torch.cat([i_p, j_p]), torch.cat([j_p, i_p])
    eid = torch.randperm(2 * c, generator=g)
    bias = torch.randn(c, nh, generator=g, dtype=torch.float64)
    f64 = torch.float64
    tau, eps = torch.rand(nh, generator=g, dtype=f64) + 0.5, torch.full((nh,), 1e-6, dtype=f64)
    phi, scale = torch.rand(2 * c, generator=g, dtype=f64), torch.rand(nh, generator=g, dtype=f64)
    cast = [t.to(dtype) for t in (q, k, w, bias, tau, eps, phi, scale)]
    logits = torch.zeros(2 * c, nh, dtype=dtype)
    zero = np.zeros((), dtype=np.float32 if dtype == torch.float32 else np.float64)[()]
    deploy._kernel("logits")(cast[0].numpy(), cast[1].numpy(), cast[2].numpy(), recv.numpy(), send.numpy(),
                             eid.numpy(), hoff, cosine, cast[3].numpy(), cast[4].numpy(), cast[5].numpy(),
                             cast[6].numpy(), cast[7].numpy(), zero, logits.numpy())  # fmt: skip
    q64, k64, w64, bias64, tau64, eps64, phi64, scale64 = (t.double() for t in cast)
    p = k64[send] * torch.cat([w64, w64])
    heads = lambda t: torch.stack([t[:, hoff[h] : hoff[h + 1]].sum(1) for h in range(nh)], dim=1)  # noqa: E731
    dot, n2 = heads(q64[recv] * p), heads(p * p)
    if cosine:
        expected = torch.cat([bias64, bias64]) + tau64 * dot / (n2.sqrt() + eps64)
    else:
        expected = dot * phi64[eid][:, None] * scale64
    want = torch.empty_like(expected)
    want[eid] = expected
    err = (logits.double() - want).abs().max() / want.abs().max()
    assert err <= (1e-5 if dtype == torch.float32 else 1e-13), f"worst relative error {err:.3e}"


def test_fused_unsupported_falls_back_to_module_path():
    m, _ = converted_model(torch.float64, "ste", degrees=(1, 2))
    im = deploy.convert_to_integer(m)
    assert "degrees" in im.fused_unsupported_reason()
    mol = molecule(0)
    e = im.integer_energy(mol["z"], mol["pos"])
    e_fake = m(mol["z"], mol["pos"], compute_forces=False)["energy"].detach()
    assert (e - e_fake).abs().max() <= 1e-9
    with pytest.raises(ValueError, match="fused integer forward does not cover"):
        im.integer_energy(mol["z"], mol["pos"], fused=True)
    with pytest.raises(TypeError, match="fused must be a bool"):
        im.integer_energy(mol["z"], mol["pos"], fused=1)


def test_fused_plan_follows_dtype_and_state():
    m, _ = converted_model(torch.float32, "ste")
    im = deploy.convert_to_integer(m)
    mol = molecule(1, torch.float32)
    e32 = im.integer_energy(mol["z"], mol["pos"])
    im.double()  # new plan in float64
    e64 = im.integer_energy(mol["z"], mol["pos"].double())
    assert e64.dtype == torch.float64 and abs(float(e64) - float(e32)) <= 1e-4 * max(1.0, abs(float(e32)))
    # a state loaded into the inner network (not through im) reaches the fused plan too
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in im.net.state_dict().items()}
    state["energy_mlp.2.bias"] += 0.25
    state["layers.1.feature_block.value.weight_scale"] *= 1.5
    im.net.load_state_dict(state)
    e_new = im.integer_energy(mol["z"], mol["pos"].double())
    assert abs(float(e_new - e64)) > 1e-3
    assert abs(float(e_new - im.integer_energy(mol["z"], mol["pos"].double(), fused=False))) <= 1e-9
    with pytest.raises(ValueError, match="z must hold atomic numbers"):
        im.integer_energy(torch.tensor([0, 1]), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="zero edge length"):
        im.integer_energy(torch.tensor([1, 1]), torch.zeros(2, 3, dtype=torch.float64))


# The first shipped converted GAQ checkpoint (now azobenzene-gfn2-gaq-w4a8-small), evaluated by the
# implementation before the integer kernels and the fused forward (float64 integer path, deploy.py of commit
# e64d0ef): three azobenzene frames in one batch.
GAQ_SMALL = "azobenzene-gfn2-gaq-w4a8-small"
SHIPPED_E64 = [-993.3733332042707, -993.3282428586726, -993.166528231804]
SHIPPED_E32 = [-993.3733520507812, -993.3282470703125, -993.1665649414062]
SHIPPED_F64 = {0: [0.07328136849118816, -0.01882351290987211, 0.6804141901480032],
               30: [1.2445956985265008, 1.2571161081132038, -0.5068115172470036]}  # fmt: skip
# The smooth force mode's energies, since the mode keeps the activation quantizers' clipping with rounded
# corners (identity activations before gave [-993.4842122566367, -993.3878092237619, -993.2543947681781]).
SHIPPED_SMOOTH_E64 = [-993.4798969936371, -993.3843314812211, -993.2487872017866]


def _shipped_batch(dtype):
    from spherequant.models import data

    ds = data.load_dataset("azobenzene-gfn2-500K")
    frames = [ds[k] for k in (0, 1234, 4321)]
    z = torch.cat([torch.as_tensor(f["numbers"]) for f in frames])
    pos = torch.cat([torch.as_tensor(f["positions"], dtype=dtype) + 100 * k for k, f in enumerate(frames)])
    return z, pos, torch.arange(3).repeat_interleave(24)


@pytest.mark.skipif(GAQ_SMALL not in checkpoints.available_pretrained(), reason="shipped model missing")
def test_shipped_converted_checkpoint_same_numbers_as_before():
    for dtype, ref, tol in ((torch.float64, SHIPPED_E64, 1e-9), (torch.float32, SHIPPED_E32, 3e-4)):
        q = checkpoints.load_model(GAQ_SMALL).to(dtype)
        im = deploy.convert_to_integer(q)
        assert im.fused_unsupported_reason() is None
        z, pos, batch = _shipped_batch(dtype)
        for fused in (True, False):
            e = im.integer_energy(z, pos, batch, fused=fused)
            err = (e.double() - torch.tensor(ref, dtype=torch.float64)).abs().max()
            assert err <= tol, f"{dtype}, fused={fused}: energies {e.tolist()} vs {ref}"
        if dtype == torch.float64:
            out = im(z, pos, batch)  # "ste": integer energy, straight-through forces
            assert (out["energy"] - torch.tensor(ref, dtype=dtype)).abs().max() <= 1e-9
            for atom, f in SHIPPED_F64.items():
                assert torch.allclose(out["forces"][atom], torch.tensor(f, dtype=dtype), atol=1e-9), atom
            gaq.set_force_mode(q, "smooth")
            out = deploy.convert_to_integer(q)(z, pos, batch, compute_forces=False)
            assert (out["energy"] - torch.tensor(SHIPPED_SMOOTH_E64, dtype=dtype)).abs().max() <= 1e-9
            assert (out["energy_quantized"] - torch.tensor(ref, dtype=dtype)).abs().max() <= 1e-9


# ----------------------------------------------------------------------------------------------------------
# IntegerLinear vs QuantLinear
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
def test_integer_linear_matches_quant_linear(bits, float_dtype):
    dtype = TORCH_DTYPES[float_dtype]
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
        assert x.bits == cfg.format.weight_bits(gaq.branch_of(n)), n
        assert hasattr(x, "weight_packed") == (x.bits <= 4), n
    # the original model is untouched and still works
    assert isinstance(m.layers[0].geometric_block.attention.query, gaq.QuantLinear)


@pytest.mark.parametrize("force_mode", ["smooth", "ste"])
def test_integer_model_matches_fake_quant(force_mode, float_dtype):
    dtype = TORCH_DTYPES[float_dtype]
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
    im.integer_energy(mol["z"], mol["pos"], fused=False)  # the module path keeps the codes
    for layer, ref_layer in zip(im.net.layers, m.layers):
        cq = layer.chi_quant
        assert isinstance(cq, deploy.IntegerVectorQuantizer)
        mag, dire = cq.last_codes
        assert mag.dtype == torch.uint8 and dire.dtype == torch.uint8  # K = 256 -> uint8 (code_dtype)
        assert cq.magnitude_bits + cq.direction_bits == cfg.format.bits_per_vector
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
    gaq.quantize_(m, gaq_spec(codebook_size=64), step="prepare")
    with pytest.raises(ValueError, match="must be converted"):
        deploy.convert_to_integer(m)
    uncal = gaq.ActivationQuantizer(SymmetricQuantizer(8), "invariant")
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
    rep_float = deploy.memory_report(float_model, n_atoms=24, config=gaq_spec(codebook_size=256))
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
        m = small_model()
        cfg = gaq_spec(codebook=book, codebook_size=16)
        gaq.quantize_(m, cfg, step="prepare")
        gaq.calibrate_(m, calibration_molecules())
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
    rep = deploy.memory_report(m, n_atoms=3, config=gaq_spec(codebook_size=4096))
    assert rep["activations_per_atom"]["chi_l1"] == {"fp32": 12, "quantized": 3}  # 8 + 12 bits
    assert rep["activations_per_atom"]["chi_l2"] == {"fp32": 20, "quantized": 5}
    with pytest.raises(ValueError, match="n_atoms must be a positive int"):
        deploy.memory_report(m, n_atoms=0)
    with pytest.raises(ValueError, match="n_edges"):
        deploy.memory_report(m, n_atoms=1, n_edges=-1)
    with pytest.raises(TypeError, match="config must be a QuantizationSpec"):
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
@pytest.mark.slow  # ~10 s on the 2-core machine
def test_latency_benchmark_quick_runs(tmp_path, capsys):
    mod = load_script("benchmarks/latency.py", name="_latency_bench")
    res = mod.main(["--quick", "--device", "cpu", "--features", "8", "--layers", "1",
                    "--json", str(tmp_path / "lat.json")])  # fmt: skip
    assert (tmp_path / "lat.json").exists()
    assert "CPU" in res["device"] and "not comparable" in res["device"]
    assert res["int_gemm_cpu_kernel"] in deploy.INT_GEMM_CPU_KERNELS
    assert isinstance(res["cpu"], dict) and all(isinstance(f, str) for f in res["cpu"].get("flags", []))
    cases = {c["batch"]: c for c in res["cases"]}
    assert set(cases) == {1, 16}
    assert set(cases[1]["variants"]) == set(mod.ENERGY_VARIANTS) | set(mod.FORCE_VARIANTS)
    assert set(cases[16]["variants"]) == set(mod.ENERGY_VARIANTS)
    for c in cases.values():
        for v, entry in c["variants"].items():
            times = entry["times_ms"]
            assert len(times) == 3 and entry["total_ms"] == sorted(times)[1] and min(times) > 0, v
            for d, r in entry["ratio_vs"].items():  # median of the per-repeat ratios, recomputed
                per = sorted(t / u for t, u in zip(times, c["variants"][d]["times_ms"]))
                assert r == per[1], (v, d)
        assert all(t >= -1e-3 for t in c["w4a8_breakdown_ms"].values())
        assert c["w4a8_top_operators"] and all(row[1] >= 1 for row in c["w4a8_top_operators"])
    # the fused integer forward's sections were timed
    bd = cases[16]["w4a8_breakdown_ms"]
    assert bd["gemm"] > 0 and bd["quant"] > 0 and bd["attention"] > 0
    assert set(res["goals"]) == {"w4a8 / bf16 at batch 16 <= 0.8", "w4a8 / fp32 at batch 1 <= 1.0"}
    assert all(g["cpu_ratio"] > 0 for g in res["goals"].values())
    assert "| batch |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--batches", "0"])
