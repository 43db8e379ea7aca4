"""The fast path of So3krates (spherequant.models.fast) against the eager reference (``reference_forward``):
energies, forces and parameter gradients of a force loss, for FP32 and quantization-aware models, batches of
molecules of different sizes, frames whose edge count changes, the cache and the switch."""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    DTYPES,
    REFERENCE_TOL,
    assert_close,
    batch_of,
    force_loss_grads,
    random_molecule,
    shifted_model,
)
from _scripts import load_script
from spherequant.models import fast, gaq
from spherequant.models.baselines import prepare_baseline
from spherequant.models.neighbors import radius_graph
from torch import nn


def compare(model, z, pos, b, tol, seed=0):
    """Fast path against the reference: energies, forces (eval) and the gradients of a force loss (train)."""
    model.eval()
    ng = int(b[-1]) + 1
    ref = model.reference_forward(z, pos, b, num_graphs=ng)
    out = model(z, pos, b, num_graphs=ng)
    assert_close("energy", out["energy"], ref["energy"], tol)
    # the energy relative to the element shifts (the part the network computes)
    shift = torch.zeros(ng, dtype=pos.dtype, device=pos.device).index_add_(0, b, model.energy_shift[z])
    # ... up to the rounding of the totals themselves (a few ulp of |E|, which the shifts dominate)
    net_err = float((out["energy"] - ref["energy"]).abs().max())
    net_scale = float((ref["energy"] - shift).abs().max())
    ulp = 4 * torch.finfo(pos.dtype).eps * float(ref["energy"].abs().max())
    assert net_err <= tol * net_scale + ulp, f"energy - shifts: {net_err:.3e} > {tol:.0e} * {net_scale:.3e}"
    assert_close("forces", out["forces"], ref["forces"], tol)
    e1, f1, g1 = force_loss_grads(model, z, pos, b, reference=False, seed=seed)
    e0, f0, g0 = force_loss_grads(model, z, pos, b, reference=True, seed=seed)
    assert_close("energy (train)", e1, e0, tol)
    assert_close("forces (train)", f1, f0, tol)
    # errors relative to the largest gradient entry of the model (some gradients vanish identically, e.g. a
    # logit bias shared by all neighbours under a softmax)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    scale = max(float(g.abs().max()) for g in g0 if g.numel())
    assert scale > 0
    worst = max(zip(names, g1, g0), key=lambda t: float((t[1] - t[2]).abs().max()) if t[1].numel() else 0.0)
    err = float((worst[1] - worst[2]).abs().max()) / scale
    assert err <= tol, f"gradient of {worst[0]}: error {err:.3e} of the largest gradient entry > {tol:.0e}"
    model.eval()


# ----------------------------------------------------------------------------------------------------------
# full-precision models
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kw",
    [
        dict(degrees=(1,)),
        dict(degrees=(1, 2, 3), num_heads=4),
        dict(degrees=(1, 2), attention="cosine"),
        dict(
            degrees=(2, 1), num_layers=3, num_features=12, num_heads=3, attention="cosine", learnable_tau=True
        ),
        dict(degrees=(1,), num_layers=1),
    ],
    ids=["l1", "l123", "cos-l12", "cos-l21-3layers", "one-layer"],
)
def test_fp32_model_matches_reference(dtype, kw):
    model = shifted_model(dtype, **kw)
    z, pos, b = batch_of([3, 7, 1, 5], seed=3, dtype=dtype)  # one isolated atom among molecules
    compare(model, z, pos, b, REFERENCE_TOL[dtype])


def test_model_without_layers_matches_reference():
    model = shifted_model(torch.float64, num_layers=0)
    z, pos, b = batch_of([4, 2])
    compare(model, z, pos, b, REFERENCE_TOL[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_count_changes_between_frames(dtype):
    """A trajectory whose neighbour list changes from frame to frame: every frame matches the reference."""
    model = shifted_model(dtype).eval()
    z, pos0 = random_molecule(8, seed=5, dtype=dtype)
    direction = torch.linspace(-1, 1, 24, dtype=dtype).reshape(8, 3)
    counts = []
    for k in range(6):
        pos = pos0 + 0.35 * k * direction
        counts.append(radius_graph(pos, model.cutoff).shape[1])
        ref = model.reference_forward(z, pos)
        out = model(z, pos)
        assert_close(f"energy frame {k}", out["energy"], ref["energy"], REFERENCE_TOL[dtype])
        assert_close(f"forces frame {k}", out["forces"], ref["forces"], REFERENCE_TOL[dtype])
    assert len(set(counts)) >= 3, f"edge counts {counts} should change along the trajectory"
    b = torch.zeros(8, dtype=torch.long)
    compare(model, z, pos0 + 0.7 * direction, b, REFERENCE_TOL[dtype])


def test_explicit_edges_and_empty_graph():
    model = shifted_model().eval()
    z, pos = random_molecule(5, seed=1)
    ei = radius_graph(pos, 2.0)  # a sparser graph than the cutoff gives
    for kw in (dict(edge_index=ei), dict(edge_index=torch.zeros(2, 0, dtype=torch.long))):
        assert_close("energy", model(z, pos, **kw)["energy"], model.reference_forward(z, pos, **kw)["energy"],
                     1e-10)  # fmt: skip
        assert_close("forces", model(z, pos, **kw)["forces"], model.reference_forward(z, pos, **kw)["forces"],
                     1e-10)  # fmt: skip
    out = model(z[:0], pos[:0])
    assert out["energy"].shape == (1,) and out["forces"].shape == (0, 3)


# ----------------------------------------------------------------------------------------------------------
# quantization-aware models
# ----------------------------------------------------------------------------------------------------------
def _calibration(dtype):
    return [random_molecule(6, 100 + s, dtype) for s in range(3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("attention", ["cosine", "keep"])
def test_gaq_prepared_model_matches_reference(dtype, attention):
    model = shifted_model(dtype)
    gaq.quantize_(model, gaq.QuantizationSpec.from_options("gaq", codebook_size=64, attention=attention))
    gaq.calibrate_(model, _calibration(dtype))
    assert any(isinstance(m, gaq.QuantLinear) for m in model.modules())
    z, pos, b = batch_of([4, 6, 3], seed=11, dtype=dtype)
    compare(model, z, pos, b, REFERENCE_TOL[dtype])
    gaq.set_force_mode(model, "smooth")
    compare(model, z, pos, b, REFERENCE_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["lsq", "qdrop", "degree_quant"])
def test_baseline_prepared_model_matches_reference(dtype, name):
    """LSQ (learned weight steps), QDrop (random masks) and Degree-Quant (in-degree pre-hook, masks)."""
    model = shifted_model(dtype)
    calibration = _calibration(dtype) if name != "lsq" else None
    prepare_baseline(model, name, calibration)
    z, pos, b = batch_of([5, 3, 6], seed=21, dtype=dtype)
    compare(model, z, pos, b, REFERENCE_TOL[dtype], seed=7)


def test_converted_gaq_model_matches_reference():
    model = shifted_model(torch.float64)
    cfg = gaq.QuantizationSpec.from_options("gaq", codebook_size=64, attention="keep")
    gaq.quantize_(model, cfg)
    gaq.calibrate_(model, _calibration(torch.float64))
    gaq.quantize_(model, cfg, step="convert")
    z, pos, b = batch_of([4, 5], seed=2)
    model.eval()
    for key in ("energy", "forces"):
        assert_close(key, model(z, pos, b)[key], model.reference_forward(z, pos, b)[key], 1e-10)


# ----------------------------------------------------------------------------------------------------------
# cache, switch, fall-back
# ----------------------------------------------------------------------------------------------------------
def test_cache_follows_parameter_updates_and_module_swaps():
    model = shifted_model().eval()
    z, pos = random_molecule(6, seed=4)

    def check(what):
        assert_close(what, model(z, pos)["energy"], model.reference_forward(z, pos)["energy"], 1e-10)
        assert_close(what, model(z, pos)["forces"], model.reference_forward(z, pos)["forces"], 1e-10)

    check("initial")
    assert "_fast_cache" in model.__dict__, "a plain model in inference should use the cache"
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    out = model(z, pos)
    (out["forces"] ** 2).sum().backward()
    opt.step()
    model.eval()
    check("after an optimiser step")
    state = {k: v + 0.01 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    check("after load_state_dict")
    with torch.no_grad():
        model.energy_shift[6] += 1.5
    check("after an in-place buffer change")
    gaq.quantize_(model, gaq.QuantizationSpec.from_options("gaq", codebook_size=64, attention="keep"))
    gaq.calibrate_(model, _calibration(torch.float64))
    check("after quantize_")
    model2 = shifted_model(torch.float32).eval()
    z32, pos32 = z, pos.float()
    model2(z32, pos32)
    model2.double()
    assert_close(
        "after .double()", model2(z, pos)["energy"], model2.reference_forward(z, pos)["energy"], 1e-10
    )


def test_switch_turns_the_fast_path_off(monkeypatch):
    model = shifted_model().eval()
    z, pos = random_molecule(5, seed=2)
    calls = []
    for name in ("atomic_energies", "energies_and_forces"):
        original = getattr(fast, name)

        def spy(*args, original=original, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(fast, name, spy)
    model(z, pos)
    assert calls, "the fast path should run by default"
    calls.clear()
    with fast.fast_path(False):
        assert not fast.fast_path_enabled()
        model(z, pos)
    assert not calls, "fast_path(False) should run the reference"
    assert fast.fast_path_enabled()
    model.reference_forward(z, pos)
    assert not calls
    old = fast.set_fast_path(False)
    try:
        model(z, pos)
        assert not calls
    finally:
        fast.set_fast_path(old)
    with pytest.raises(TypeError, match="enabled"):
        fast.set_fast_path("no")


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), (" False ", False), ("1", True),
                                             ("", True), ("on", True)])  # fmt: skip
def test_environment_switch(value, expected):
    assert fast._env_enabled(value) is expected


def test_layer_with_forward_hook_runs_the_reference():
    model = shifted_model().eval()
    seen = []
    model.layers[0].register_forward_hook(lambda mod, args, out: seen.append(out[0].shape))
    assert fast.unsupported_reason(model) == "a layer has forward hooks"
    z, pos = random_molecule(5, seed=3)
    out = model(z, pos)
    assert seen, "the reference (which calls the layer) should have run"
    assert_close("energy", out["energy"], model.reference_forward(z, pos)["energy"], 1e-12)


def test_unknown_linear_module_falls_back_and_opt_in_fuses():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2.0 * super().forward(x)

    class OptIn(Scaled):
        def fast_linear_params(self):
            return 2.0 * self.weight, 2.0 * self.bias

    for cls, supported in ((Scaled, False), (OptIn, True)):
        model = shifted_model().eval()
        old = model.layers[1].exchange_block.mlp[0]
        new = cls(old.in_features, old.out_features).double()
        model.layers[1].exchange_block.mlp[0] = new
        assert (fast.unsupported_reason(model) is None) == supported
        z, pos, b = batch_of([4, 3], seed=9)
        compare(model, z, pos, b, 1e-10)


def test_recorded_attention_matches_reference():
    model = shifted_model(degrees=(1, 2)).eval()
    z, pos = random_molecule(6, seed=8)
    for layer in model.layers:
        layer.record_attention = True
    model.reference_forward(z, pos)
    ref = [dict(layer.last_attention) for layer in model.layers]
    model(z, pos)
    for k, layer in enumerate(model.layers):
        for key in ("feature", "geometric"):
            assert_close(f"layer {k} {key}", layer.last_attention[key], ref[k][key], 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_radius_graph_single_is_radius_graph(dtype):
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 9, 30):
        pos = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 6).to(dtype)
        pos[-1] = pos[0] + torch.tensor([3.0, 0.0, 0.0], dtype=dtype)  # a pair exactly at the cutoff
        assert torch.equal(fast.radius_graph_single(pos, 3.0), radius_graph(pos, 3.0))


def test_zero_length_edge_and_nan_positions_still_refused():
    model = shifted_model().eval()
    z, pos = random_molecule(4, seed=1)
    pos[1] = pos[0]
    with pytest.raises(ValueError, match="share a position"):
        model(z, pos)
    pos[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(z, pos)


# ----------------------------------------------------------------------------------------------------------
# shipped checkpoints and devices
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["azobenzene-gfn2-fp32", "azobenzene-gfn2-gaq-w4a8"])
def test_shipped_checkpoints_give_the_reference_numbers(name):
    from spherequant.models.checkpoints import load_model
    from spherequant.models.data import load_dataset

    model = load_model(name)
    ds = load_dataset("azobenzene-gfn2-500K")
    n = int(ds.ptr[3])  # the first three frames
    zz = torch.as_tensor(ds.numbers[:n]).long()
    frames = torch.as_tensor(ds.positions[:n]).to(model.dtype)
    b = torch.arange(3).repeat_interleave(torch.as_tensor(ds.n_atoms[:3]).long())
    ref = model.reference_forward(zz, frames, b, num_graphs=3)
    out = model(zz, frames, b, num_graphs=3)
    tol = REFERENCE_TOL[model.dtype]
    assert_close("energy", out["energy"], ref["energy"], tol)
    assert_close("forces", out["forces"], ref["forces"], tol)
    k = int(ds.ptr[1])
    one = model(zz[:k], frames[:k])
    assert_close("single-frame forces", one["forces"], ref["forces"][:k], tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_path_on_cuda_matches_reference():
    model = shifted_model(torch.float64).cuda()
    z, pos, b = batch_of([4, 6, 2], seed=5)
    compare(model, z.cuda(), pos.cuda(), b.cuda(), 1e-10)


def test_model_speed_benchmark_quick(tmp_path):
    """benchmarks/model_speed.py at toy size: every workload has an eager and a fast row with their ratio."""
    import json

    mod = load_script("benchmarks/model_speed.py")
    out = tmp_path / "speed.json"
    torch_threads = torch.get_num_threads()
    try:
        result = mod.main(["--quick", "--out", str(out), "--peer", "off"])
    finally:
        torch.set_num_threads(torch_threads)
    data = json.loads(out.read_text())
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    workloads = {r["workload"] for r in data["rows"]}
    assert any(w.startswith("energy+forces, batch 1") for w in workloads)
    assert any(w.startswith("training step") for w in workloads)
    assert any(w.startswith("MD NVE, 4 replicas") for w in workloads)
    for w in workloads:
        rows = [r for r in data["rows"] if r["workload"] == w]
        names = {r["row"].split(": ")[-1] for r in rows}
        engines = w.startswith("MD engines")  # with TorchSim installed: our engine against its integrator
        expected = {"our engine (run_md)", "TorchSim nve"} if engines else {"eager reference", "fast path"}
        assert names >= expected, w
        ratio = "speedup_vs_ours" if engines else "speedup_vs_eager"
        for r in rows:
            assert r["ms_median"] > 0 and r["per_s"] > 0 and r[ratio] > 0, r
    with pytest.raises(SystemExit) as exc:
        mod.main(["--quick", "--threads", "0", "--out", ""])
    assert exc.value.code == 2


def test_hooks_on_identity_hook_points_are_called():
    model = shifted_model().eval()
    z, pos = random_molecule(5, seed=6)
    seen = []
    model.layers[1].x_quant.register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    out = model(z, pos)
    assert seen and set(seen) == {16}, "the fast path should call a hooked nn.Identity"
    assert_close("energy", out["energy"], model.reference_forward(z, pos)["energy"], 1e-10)


def test_cache_built_in_inference_mode_is_not_reused_for_forces():
    model = shifted_model().eval()
    z, pos = random_molecule(5, seed=7)
    with torch.inference_mode():
        e = model(z, pos, compute_forces=False)["energy"]
    out = model(z, pos)  # forces need autograd: tensors cached under inference_mode must not be used
    ref = model.reference_forward(z, pos)
    assert_close("energy", e, ref["energy"], 1e-10)
    assert_close("forces", out["forces"], ref["forces"], 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hand_written_forces_match_autograd(dtype):
    """The inference path's written-out reverse pass against autograd through the reference, on a batch of
    different molecules, with and without an isolated atom, for 1 to 3 layers."""
    for layers in (1, 2, 3):
        model = shifted_model(dtype, num_layers=layers, num_heads=4, seed=layers).eval()
        z, pos, b = batch_of([6, 1, 9, 4], seed=30 + layers, dtype=dtype)
        ei = radius_graph(pos, model.cutoff, b)
        assert ei.shape[1] <= fast.ANALYTIC_MAX_EDGES
        res = fast.energies_and_forces(model, z, pos, ei)
        assert res is not None, "a plain degree-1 so3krates-attention model should take the written-out path"
        ref = model.reference_forward(z, pos, b, edge_index=ei, num_graphs=4)
        energy = torch.zeros(4, dtype=dtype).index_add_(0, b, res[0])
        assert_close(f"energy ({layers} layers)", energy, ref["energy"], REFERENCE_TOL[dtype])
        assert_close(f"forces ({layers} layers)", res[1], ref["forces"], REFERENCE_TOL[dtype])
        # the forward uses it (no autograd graph), and pos.requires_grad still gives differentiable forces
        out = model(z, pos, b, num_graphs=4)
        assert not out["forces"].requires_grad
        assert_close("forward forces", out["forces"], ref["forces"], REFERENCE_TOL[dtype])
        p = pos.clone().requires_grad_(True)
        diff = model(z, p, b, num_graphs=4)
        assert diff["forces"].requires_grad
        assert_close("differentiable forces", diff["forces"].detach(), ref["forces"], REFERENCE_TOL[dtype])


def test_hand_written_forces_only_where_supported():
    z, pos = random_molecule(5, seed=12)
    ei = radius_graph(pos, 4.0)
    for kw in (dict(degrees=(1, 2)), dict(attention="cosine"), dict(num_layers=0)):
        assert fast.energies_and_forces(shifted_model(**kw).eval(), z, pos, ei) is None, kw
    model = shifted_model().eval()
    gaq.quantize_(model, gaq.QuantizationSpec.from_options("gaq", codebook_size=64, attention="keep"))
    gaq.calibrate_(model, _calibration(torch.float64))
    assert fast.energies_and_forces(model, z, pos, ei) is None
    model = shifted_model().eval()
    model.layers[0].record_attention = True
    assert fast.energies_and_forces(model, z, pos, ei) is None
    model.layers[0].record_attention = False
    assert fast.energies_and_forces(model, z, pos, ei) is not None
    big = torch.zeros(2, fast.ANALYTIC_MAX_EDGES + 1, dtype=torch.long)
    assert fast.energies_and_forces(model, z, pos, big) is None  # large graphs take the autograd path


@pytest.mark.slow
def test_compiled_inference_pass_matches_reference():
    """torch.compile of the written-out pass (opt-in): same numbers, no recompilation when edges change."""
    model = shifted_model(torch.float64, num_layers=1).eval()
    old = fast.set_compile(True)
    graphs = torch._dynamo.utils.counters["stats"]
    try:
        for k, sizes in enumerate(([5, 3], [6, 4], [2, 7], [9, 8])):
            z, pos, b = batch_of(sizes, seed=40 + k)
            before = graphs["unique_graphs"]
            out = model(z, pos, b, num_graphs=2)
            if k:  # compiled once, at the first batch: other atom and edge counts reuse it
                assert graphs["unique_graphs"] == before, f"recompiled for atoms {sizes}"
            ref = model.reference_forward(z, pos, b, num_graphs=2)
            assert_close("energy", out["energy"], ref["energy"], 1e-10)
            assert_close("forces", out["forces"], ref["forces"], 1e-10)
        z, pos = random_molecule(4, seed=1)
        pos[1] = pos[0]
        with pytest.raises(ValueError, match="share a position"):
            model(z, pos)
    finally:
        fast.set_compile(old)
    with pytest.raises(TypeError, match="enabled"):
        fast.set_compile(1)


def _benchmark_module(name):
    return load_script(f"benchmarks/{name}.py")


def test_training_profile_categories():
    """benchmarks/training_profile.py sorts profiler events into categories: the first compiled graph called
    is the forward one, events inside the optimizer step count as optimizer, unknown events as the rest."""
    mod = _benchmark_module("training_profile")
    events = [
        ("## Call CompiledFxGraph bwd", 30.0, 5.0),
        ("## Call CompiledFxGraph fwd", 20.0, 1.0),
        ("## Call CompiledFxGraph fwd", 22.0, 11.0),
        ("aten::mm", 7.0, 2.0),
        ("Optimizer.step#Adam.step", 4.0, 8.0),
        ("aten::_fused_adam_", 1.0, 8.5),
        ("TorchDynamo Cache Lookup", 2.0, 0.5),
        ("aten::mean", 3.0, 6.0),
    ]
    us, top = mod.categorize(events)
    assert us == {
        "forward graph: generated kernels": 42.0,
        "backward graph: generated kernels": 30.0,
        "matmuls": 7.0,
        "autograd and runtime glue": 2.0,
        "optimizer": 5.0,
        "loss and rest": 3.0,
    }
    assert top[0] == ("## Call CompiledFxGraph fwd", "forward graph: generated kernels", 42.0, 2)


@pytest.mark.slow
def test_training_profile_quick(tmp_path):
    """The profile script end to end on a toy model (inductor compiles it: about a minute)."""
    import json

    mod = _benchmark_module("training_profile")
    torch_threads = torch.get_num_threads()
    try:
        mod.main(["--quick", "--steps", "4", "--repeats", "1", "--out", str(tmp_path / "p.json")])
    finally:
        torch.set_num_threads(torch_threads)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["step_ms_median"] > 0 and abs(sum(r["share"] for r in data["rows"]) - 1.0) < 1e-9
    assert {r["category"] for r in data["rows"]} == set(mod.CATEGORIES) and data["top_events"]


# ----------------------------------------------------------------------------------------------------------
# the smooth force mode's float network (gaq.smooth_float_model)
# ----------------------------------------------------------------------------------------------------------
def _prepared(method, dtype, attention="keep", convert=False):
    model = shifted_model(dtype)
    if method == "gaq":
        spec = gaq.QuantizationSpec.from_options("gaq", codebook_size=64, attention=attention)
        gaq.quantize_(model, spec)
        gaq.calibrate_(model, _calibration(dtype))
        if convert:
            gaq.quantize_(model, spec, step="convert")
    else:
        options = {"codebook_size": 16} if method == "svq_kmeans" else {}
        prepare_baseline(model, method, None if method == "lsq" else _calibration(dtype), **options)
    gaq.set_force_mode(model, "smooth")
    return model.eval()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("method", "attention", "convert"),
    [("gaq", "keep", False), ("gaq", "keep", True), ("gaq", "cosine", False), ("naive_int8", "keep", False),
     ("svq_kmeans", "keep", False), ("degree_quant", "keep", False), ("lsq", "keep", False),
     ("qdrop", "keep", False)],
)  # fmt: skip
def test_smooth_float_model_is_the_smooth_mode_network(dtype, method, attention, convert):
    """The plain copy gives the smooth mode's energies and forces (to the fast-path tolerance), is a plain
    model (the written-out forces run for So3krates attention), and leaves the quantized model as it was."""
    model = _prepared(method, dtype, attention, convert)
    z, pos, b = batch_of([4, 6, 3], seed=31, dtype=dtype)
    ref = model.reference_forward(z, pos, b, num_graphs=3)  # (LSQ's activation steps start on a first call)
    state_before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    plain = gaq.smooth_float_model(model)
    out = plain(z, pos, b, num_graphs=3)
    assert_close("energy", out["energy"], ref["energy"], REFERENCE_TOL[dtype])
    assert_close("forces", out["forces"], ref["forces"], REFERENCE_TOL[dtype])
    kinds = {type(m) for m in plain.modules()}
    assert not kinds & {gaq.QuantLinear, gaq.QuantEmbedding, gaq.ActivationQuantizer}
    assert not any(isinstance(m, gaq.ActivationQuantizer) for m in plain.modules())
    assert gaq.quantization_state(plain) is None and not plain.training
    assert all(p.dtype == dtype for p in plain.parameters())
    _, is_plain = fast.build_plan(plain)
    assert is_plain
    if attention == "keep":  # the hand-written forces (no autograd) serve the copy
        assert fast.energies_and_forces(plain, z, pos, radius_graph(pos, 4.0, b)) is not None
    assert gaq.quantization_state(model).force_mode == "smooth"
    assert any(isinstance(m, gaq.ActivationQuantizer) for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state_before.items())


def test_smooth_float_model_refusals():
    model = _prepared("gaq", torch.float64)
    gaq.set_force_mode(model, "ste")
    with pytest.raises(ValueError, match="smooth force mode"):
        gaq.smooth_float_model(model)
    with pytest.raises(ValueError, match="quantiz"):
        gaq.smooth_float_model(shifted_model(torch.float64))  # a float model has no smooth mode
    with pytest.raises(TypeError, match="model must be a So3krates"):
        gaq.smooth_float_model(nn.Linear(2, 2))
    gaq.set_force_mode(model, "smooth")
    model.layers[0].register_forward_hook(lambda mod, args, out: out)
    with pytest.raises(ValueError, match=r"layers\.0 has forward hooks"):
        gaq.smooth_float_model(model)


def test_md_integrates_the_smooth_mode_as_its_float_network():
    """``spherequant md`` hands run_md the plain copy of a smooth-mode model, any other model unchanged."""
    from spherequant.models import md_cli

    model = _prepared("gaq", torch.float64)
    plain = md_cli._md_network(model)
    assert plain is not model and gaq.quantization_state(plain) is None
    z, pos, b = batch_of([5], seed=3)
    assert_close("forces", plain(z, pos, b)["forces"], model(z, pos, b)["forces"], 1e-10)
    gaq.set_force_mode(model, "ste")
    assert md_cli._md_network(model) is model
    fp32 = shifted_model(torch.float64)
    assert md_cli._md_network(fp32) is fp32
    gaq.set_force_mode(model, "smooth")
    model.register_forward_pre_hook(lambda mod, args: None)  # cannot be carried over: the model itself runs
    assert md_cli._md_network(model) is model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [0.0, 0.5, 3.0])
def test_written_out_forces_through_active_clamps(dtype, width):
    """The smooth float copy of a GAQ model whose ranges are tight (clamps and magnitude clips act on many
    activations) keeps Clamp / DegreeOneNormClip at its hook points, and the hand-written reverse pass
    (no autograd) gives the reference's energies and forces through them, with plain (width 0) and rounded
    corners."""
    from spherequant.models.saturation import Clamp, DegreeOneNormClip

    model = _prepared("gaq", dtype)
    for m in model.modules():
        if isinstance(m, gaq.ActivationQuantizer):
            m.saturation_width = width
    for m in model.modules():
        if isinstance(m, gaq.VectorFeatureQuantizer):
            m.mddq.set_extra_state({"r_max": m.mddq.r_max * 0.3, "calibrating": False})
        elif isinstance(m, gaq.ActivationQuantizer):
            m.quantizer.running_range.mul_(0.3)
    plain = gaq.smooth_float_model(model)
    assert all(
        type(lay.x_quant) is Clamp and type(lay.chi_quant) is DegreeOneNormClip for lay in plain.layers
    )
    assert all(bool((lay.x_quant.width > 0).all()) == (width > 0) for lay in plain.layers)
    assert all((lay.chi_quant.width > 0) == (width > 0) for lay in plain.layers)
    z, pos, b = batch_of([4, 6, 3], seed=31, dtype=dtype)
    acts = []
    hooks = [lay.x_quant.register_forward_pre_hook(lambda mod, args: acts.append((mod, args[0])))
             for lay in plain.layers] + [lay.chi_quant.register_forward_pre_hook(
                 lambda mod, args: acts.append((mod, args[0]))) for lay in plain.layers]  # fmt: skip
    ref = plain.reference_forward(z, pos, b, num_graphs=3)
    for h in hooks:
        h.remove()
    n_x = sum(int(((a < m.lo) | (a > m.hi)).sum()) for m, a in acts if type(m) is Clamp)
    n_chi = sum(int((a.norm(dim=-1) > m.r_max).sum()) for m, a in acts if type(m) is DegreeOneNormClip)
    assert n_x > 0 and n_chi > 0, f"clamps must act for this test: {n_x} x entries, {n_chi} chi rows"
    e_atoms, forces = fast.energies_and_forces(plain, z, pos, radius_graph(pos, 4.0, b))
    energy = torch.zeros(3, dtype=dtype).index_add_(0, b, e_atoms)
    assert_close("energy", energy, ref["energy"], REFERENCE_TOL[dtype])
    assert_close("forces", forces, ref["forces"], REFERENCE_TOL[dtype])
    assert_close("energy (smooth mode)", energy, model.reference_forward(z, pos, b, num_graphs=3)["energy"],
                 REFERENCE_TOL[dtype])  # fmt: skip
