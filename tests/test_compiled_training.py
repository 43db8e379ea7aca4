"""The compiled training step (spherequant.models.compiled) against the eager reference: energies, forces and
the parameter gradients of a force loss (float64 to 1e-10, float32 to 1e-5), batches of molecules of
different sizes and changing edge counts without recompiling, the fall-back for models it does not handle,
and the ``compile`` switch of training (exact resume); the same graph as the compiled inference pass of
quantization-aware and cosine-attention models (``fast.set_compile``).

The traced graph is checked under the ``aot_eager`` backend (AOTAutograd's first-order backward of the traced
energy + forces graph, without code generation: seconds); the inductor compilation itself (minutes) is in
the slow tests."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from _helpers import (
    DTYPES,
    REFERENCE_TOL,
    assert_close,
    batch_of,
    force_loss_grads,
    morse_dataset,
    shifted_model,
    tiny_config,
)
from spherequant.models import compiled, gaq
from spherequant.models.checkpoints import read_checkpoint
from spherequant.models.neighbors import radius_graph
from spherequant.models.train import train


@pytest.fixture
def counting_backend(monkeypatch):
    """``aot_eager`` that counts its compilations; the compiled-graph cache is emptied around the test."""
    from torch._dynamo.backends.debugging import aot_eager

    calls = []

    def backend(gm, example_inputs):
        calls.append(len(example_inputs))
        return aot_eager(gm, example_inputs)

    monkeypatch.setattr(compiled, "BACKEND", [backend])
    monkeypatch.setattr(compiled, "_CACHE", {})
    monkeypatch.setattr(compiled, "_FAILED", {})
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def compiled_grads(model, z, pos, b):
    """Energy, forces and force-loss gradients through :func:`compiled.training_forward` (the loss of
    :func:`_helpers.force_loss_grads`)."""
    model.train()
    out = compiled.training_forward(model, z, pos, b, num_graphs=int(b[-1]) + 1)
    assert out is not None, compiled.unsupported_reason(model)
    target_f = torch.sin(torch.arange(pos.numel(), dtype=pos.dtype)).reshape(pos.shape)
    loss = (out["energy"] ** 2).mean() * 1e-3 + ((out["forces"] - target_f) ** 2).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return out["energy"].detach(), out["forces"].detach(), grads


def check_against_reference(model, frames, tol, truth=None):
    """Per parameter tensor, relative to its largest reference gradient; a tensor whose reference gradient
    vanishes up to rounding (below 100 eps of the largest gradient of all parameters: the readout bias, where
    atoms and isolated-atom references cancel exactly) relative to that largest gradient.

    ``truth``: a float64 copy of a float32 ``model``. A float32 gradient that cancels (small against the
    others) may miss ``tol`` with the eager float32 reference itself off by as much; such a tensor passes if
    the compiled gradient is no farther from the float64 result than 4x the eager float32 one (and within
    100x ``tol``)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for z, pos, b in frames:
        e_ref, f_ref, g_ref = force_loss_grads(model, z, pos, b, reference=True)
        e, f, g = compiled_grads(model, z, pos, b)
        assert_close("energy", e, e_ref, tol)
        assert_close("forces", f, f_ref, tol)
        top = max(float(t.abs().max()) for t in g_ref if t.numel())
        zero = 100 * torch.finfo(pos.dtype).eps * top
        errs = []
        for a, r in zip(g, g_ref):
            own = float(r.abs().max())
            errs.append(float((a - r).abs().max()) / (own if own > zero else top))
        over = [k for k, err in enumerate(errs) if err > tol]
        if over and truth is not None:
            g64 = force_loss_grads(truth, z, pos.double(), b, reference=True)[2]
            for k in list(over):
                scale = float(g64[k].abs().max())
                off_cmp = float((g[k].double() - g64[k]).abs().max()) / scale
                off_ref = float((g_ref[k].double() - g64[k]).abs().max()) / scale
                if off_cmp <= 4 * off_ref and errs[k] <= 100 * tol:
                    over.remove(k)
                    errs[k] = 0.0
        k = max(range(len(errs)), key=errs.__getitem__)
        assert errs[k] <= tol, f"gradient of {names[k]}: relative error {errs[k]:.3e} > {tol:.0e}"


def frames_of_changing_size(dtype):
    """Batches of different molecules and sizes (so different atom and edge counts), one with 1 molecule."""
    frames = [
        batch_of(sizes, seed=s, dtype=dtype) for s, sizes in enumerate([(5, 3, 7), (12,), (4, 6, 9, 2)])
    ]
    z, pos, b = batch_of((8,), seed=7, dtype=dtype)
    frames.append((z, pos * 1.6, b))  # stretched: fewer edges inside the cutoff
    return frames


@pytest.mark.parametrize("dtype", [torch.float64, pytest.param(torch.float32, marks=pytest.mark.slow)])
def test_traced_graph_matches_reference_without_recompiling(dtype, counting_backend):
    model = shifted_model(dtype)
    frames = frames_of_changing_size(dtype)
    edges = [int(radius_graph(p, model.cutoff, b).shape[1]) for _, p, b in frames]
    assert len(set(edges)) == len(frames) and len({int(z.shape[0]) for z, _, _ in frames}) == len(frames)
    check_against_reference(model, frames[:1], REFERENCE_TOL[dtype])
    first = len(counting_backend)
    assert first >= 1
    check_against_reference(model, frames[1:], REFERENCE_TOL[dtype])
    # compiled at the first frame only (atom and edge counts are dynamic)
    assert len(counting_backend) == first, f"{len(counting_backend) - first} recompilations"


@pytest.mark.slow
def test_parent_sized_model_traces(counting_backend):
    """Widths of the study's parents (more features than the frame has atoms or edges to tie to)."""
    model = shifted_model(torch.float64, num_features=32, num_layers=3, num_heads=4, num_rbf=12)
    check_against_reference(model, frames_of_changing_size(torch.float64)[:2], REFERENCE_TOL[torch.float64])


@pytest.mark.slow
def test_parameter_updates_reach_the_compiled_graph(counting_backend):
    model = shifted_model(torch.float64)
    z, pos, b = batch_of((5, 4))
    check_against_reference(model, [(z, pos, b)], 1e-10)
    first = len(counting_backend)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    check_against_reference(model, [(z, pos, b)], 1e-10)
    assert len(counting_backend) == first


@pytest.mark.parametrize("learnable_tau", [False, True])
def test_cosine_attention_gradients_match_reference(learnable_tau, counting_backend):
    """The paper's cosine attention (softmax, normalised queries and keys, optionally a learnable
    temperature) compiles with force-loss gradients equal to the eager reference (a trace through
    ``torch.autograd.grad`` got them wrong by more than 100 %)."""
    model = shifted_model(torch.float64, attention="cosine", learnable_tau=learnable_tau)
    assert compiled.unsupported_reason(model) is None
    check_against_reference(model, frames_of_changing_size(torch.float64)[:2], REFERENCE_TOL[torch.float64])


def test_forces_traced_through_a_saved_output_keep_their_parameter_gradient():
    """Why the traced forces use ``torch.func.grad``: for ``E = sum(v * exp(x w))`` the derivative of ``exp``
    reuses its output; ``make_fx`` over ``torch.autograd.grad`` records it detached (the force-loss gradient
    in ``w`` comes out wrong), the functorch transform keeps it. Exact reference: the same loss, eager."""
    from torch.fx.experimental.proxy_tensor import make_fx

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    v = torch.randn(4, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def energy(w, v, x):
        return (torch.exp(x @ w) * v).sum()

    def forces_autograd(w, v, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(energy(w, v, x), x, create_graph=True)
        return -gx

    def forces_func(w, v, x):
        return -torch.func.grad(energy, argnums=2)(w, v, x)

    def loss_gradient(fn):
        wp, vp = w.clone().requires_grad_(True), v.clone().requires_grad_(True)
        return torch.autograd.grad((fn(wp, vp, x) ** 2).sum(), (wp, vp))

    eager = loss_gradient(forces_autograd)
    traced = loss_gradient(make_fx(forces_func)(w, v, x))
    for a, r in zip(traced, eager):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=0)
    # the negative control: the autograd-traced graph differs (if torch fixes this, the workaround can go)
    broken = loss_gradient(make_fx(forces_autograd)(w, v, x))
    assert not all(torch.allclose(a, r) for a, r in zip(broken, eager)), "make_fx now keeps saved outputs"


def test_unsupported_models_fall_back(counting_backend):
    z, pos, b = batch_of((5, 4))
    cases = {
        "degrees": shifted_model(torch.float64, degrees=(1, 2)),
    }
    qat = shifted_model(torch.float64)
    gaq.quantize_(qat, gaq.QuantizationSpec.from_options("gaq", attention="keep"))
    cases["calibrating"] = qat  # quantization-aware, still observing its ranges
    for method in ("qdrop", "degree_quant"):  # random masks (and Degree-Quant's in-degree hooks)
        cases[method] = _quantized(method)
    for word, model in cases.items():
        model.train()
        assert compiled.training_forward(model, z, pos, b, num_graphs=2) is None, word
        reason = compiled.unsupported_reason(model)
        expected = {"qdrop": "random masks", "degree_quant": "hooks"}.get(word, word)
        assert reason is not None and expected in reason, (word, reason)
    model = shifted_model(torch.float64)
    model.eval()
    assert compiled.training_forward(model, z, pos, b, num_graphs=2) is None  # inference: not a training step
    model.train()
    handle = model.layers[0].register_forward_hook(lambda *a: None)
    assert compiled.training_forward(model, z, pos, b, num_graphs=2) is None
    assert "hooks" in compiled.unsupported_reason(model)
    handle.remove()
    assert compiled.unsupported_reason(model) is None
    assert counting_backend == []


# ------------------------------------------------------------------------------------- quantization-aware
def _quantized(method, dtype=torch.float64, attention="keep", seed=0):
    """A calibrated (frozen) QAT-prepared copy of :func:`shifted_model`; ``method`` as the study's rows."""
    from _helpers import calibration_molecules

    model = shifted_model(dtype, seed=seed)
    options = {"gaq": dict(codebook_size=64, attention=attention), "svq_kmeans": dict(codebook_size=16)}
    gaq.quantize_(model, gaq.QuantizationSpec.from_options(method, **options.get(method, {})))
    gaq.calibrate_(model, calibration_molecules(dtype))
    return model


QAT_CASES = [
    ("gaq", "keep"),
    ("gaq", "cosine"),
    ("lsq", "keep"),
    ("naive_int8", "keep"),
    ("svq_kmeans", "keep"),
]


@pytest.mark.parametrize("method,attention", QAT_CASES)
def test_quantization_aware_models_match_reference_without_recompiling(method, attention, counting_backend):
    """Fake-quantized weights and activations, MDDQ (the direction lookup as one custom-op node) and LSQ
    steps trace: energy, forces and every force-loss gradient (straight-through estimators included) equal
    the eager reference on batches whose atom and edge counts change, compiled once."""
    model = _quantized(method, attention=attention)
    assert compiled.unsupported_reason(model) is None
    frames = frames_of_changing_size(torch.float64)
    check_against_reference(model, frames[:1], REFERENCE_TOL[torch.float64])
    first = len(counting_backend)
    check_against_reference(model, frames[1:], REFERENCE_TOL[torch.float64])
    assert len(counting_backend) == first, f"{len(counting_backend) - first} recompilations"


@pytest.mark.slow
@pytest.mark.parametrize("method,attention", QAT_CASES)
def test_quantization_aware_models_match_reference_float32(method, attention, counting_backend):
    model = _quantized(method, torch.float32, attention)
    truth = copy.deepcopy(model).double()  # the same quantized function in float64
    frames = frames_of_changing_size(torch.float32)[:2]
    check_against_reference(model, frames, REFERENCE_TOL[torch.float32], truth=truth)


def test_qat_schedule_switch_traces_again(counting_backend):
    """The staged warm-up switches quantizers on without registering modules: the state the graph baked in
    (``enabled``, ranges) is part of its key, so the switch traces once more and both states are right."""
    model = _quantized("gaq")
    frames = frames_of_changing_size(torch.float64)[:2]
    quantizers = [m for m in model.modules() if hasattr(m, "enabled")]
    for m in quantizers:
        m.enabled = False  # warm-up: full precision through the quantized modules
    check_against_reference(model, frames, REFERENCE_TOL[torch.float64])
    warm = len(counting_backend)
    for m in quantizers:
        m.enabled = True
    check_against_reference(model, frames, REFERENCE_TOL[torch.float64])
    assert len(counting_backend) > warm
    again = len(counting_backend)
    vfq = next(m for m in model.modules() if hasattr(m, "mddq"))
    vfq.mddq.r_max *= 1.5  # a new magnitude range is a new graph, not a stale constant
    vfq.mddq._mq = vfq.mddq._make_mq(vfq.mddq.r_max)
    check_against_reference(model, frames[:1], REFERENCE_TOL[torch.float64])
    assert len(counting_backend) > again


def test_uninitialised_lsq_is_not_traced(counting_backend):
    model = shifted_model(torch.float64).train()
    gaq.quantize_(model, gaq.QuantizationSpec.from_options("lsq"))
    for m in model.modules():
        if hasattr(m, "calibrate"):
            m.calibrate(False)
    z, pos, b = batch_of((5, 4))
    assert compiled.training_forward(model, z, pos, b, num_graphs=2) is None
    assert "not initialised" in compiled.unsupported_reason(model)


def test_bad_inputs_still_refused(counting_backend):
    model = shifted_model(torch.float64).train()
    z, pos, b = batch_of((5, 4))
    pos[1] = pos[0]
    with pytest.raises(ValueError, match="share a position"):
        compiled.training_forward(model, z, pos, b, num_graphs=2)
    z, pos, b = batch_of((5, 4))
    pos[0, 0] = float("nan")
    with pytest.raises(ValueError):
        compiled.training_forward(model, z, pos, b, num_graphs=2)


@pytest.fixture
def broken_backend(monkeypatch):
    """A torch.compile backend that always fails; the compiled-graph cache is emptied around the test."""

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiled, "BACKEND", [broken])
    monkeypatch.setattr(compiled, "_CACHE", {})
    monkeypatch.setattr(compiled, "_FAILED", {})
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiler_failure_warns_and_falls_back(broken_backend):
    model = shifted_model(torch.float64).train()
    z, pos, b = batch_of((5, 4))
    with pytest.warns(RuntimeWarning, match="torch.compile of the training step failed"):
        assert compiled.training_forward(model, z, pos, b, num_graphs=2) is None
    assert compiled.training_forward(model, z, pos, b, num_graphs=2) is None  # no second attempt


TRAIN_MODEL = dict(num_features=8, num_layers=2, num_heads=2, degrees=[1], cutoff=4.0, num_rbf=6, max_z=10)


@pytest.mark.slow
def test_training_with_compile_resumes_exactly_and_learns_the_same(tmp_path, counting_backend):
    dataset = morse_dataset()
    kw = dict(model=dict(TRAIN_MODEL), evaluate_test=False, compile=True)
    full = tiny_config(tmp_path / "a", epochs=2, **kw)
    train(full, dataset=dataset)
    half = tiny_config(tmp_path / "b", epochs=1, **kw)
    train(half, dataset=dataset)
    train(tiny_config(tmp_path / "b", epochs=2, **kw), dataset=dataset, resume=True)
    assert len(counting_backend) >= 1  # the compiled path ran
    a = read_checkpoint(Path(full.output_dir) / "last.pt")
    b = read_checkpoint(Path(tmp_path / "b" / "run") / "last.pt")
    for key in ("model_state", "ema_state"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
    # the same training without compile: the same function, so the same weights up to rounding
    plain = tiny_config(tmp_path / "c", epochs=2, model=dict(TRAIN_MODEL), evaluate_test=False)
    train(plain, dataset=dataset)
    c = read_checkpoint(Path(plain.output_dir) / "last.pt")
    for name, t in a["model_state"].items():
        assert_close(name, t.double(), c["model_state"][name].double(), 1e-8)
    # (``compile`` is resume-mutable: test_resume_may_switch_compile_on)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", [None, "gaq"])
def test_inductor_compiled_step_matches_reference(dtype, method):
    """The real thing: inductor-compiled forward and backward (minutes on a small CPU; on-disk cache), for
    the FP32 model and its GAQ QAT-prepared form (the custom lookup op inside generated code)."""
    torch._dynamo.reset()
    model = shifted_model(dtype) if method is None else _quantized(method, dtype)
    check_against_reference(model, frames_of_changing_size(dtype), REFERENCE_TOL[dtype])


def test_compile_key_is_checked(tmp_path):
    with pytest.raises(TypeError, match="compile"):
        tiny_config(tmp_path, compile="yes")
    assert tiny_config(tmp_path).compile is False


def test_resume_may_switch_compile_on(tmp_path, counting_backend):
    """``compile`` is resume-mutable: a run started uncompiled continues on the compiled path (the same
    function, so validation errors stay where they were)."""
    dataset = morse_dataset()
    kw = dict(model=dict(TRAIN_MODEL), evaluate_test=False)
    train(tiny_config(tmp_path, epochs=1, **kw), dataset=dataset)
    assert counting_backend == []
    train(tiny_config(tmp_path, epochs=2, compile=True, **kw), dataset=dataset, resume=True)
    assert len(counting_backend) >= 1  # the second epoch ran compiled
    last = read_checkpoint(Path(tmp_path / "run") / "last.pt")
    assert last["epoch"] == 2, last["epoch"]


@pytest.mark.slow
def test_qat_training_with_compile_learns_the_same(tmp_path, counting_backend):
    """GAQ QAT (staged warm-up, LEE penalty) with ``compile: true`` runs its steps and the LEE passes through
    the compiled graph (traced once per warm-up state) and ends at the weights of the uncompiled run."""
    from _helpers import qat_config
    from spherequant.models.train import export_model

    dataset = morse_dataset()
    parent = tiny_config(tmp_path / "fp32", epochs=1, model=dict(TRAIN_MODEL), evaluate_test=False)
    train(parent, dataset=dataset)
    init = export_model(Path(parent.output_dir) / "best.pt", tmp_path / "fp32.pt")
    runs = {}
    for flag in (True, False):
        cfg = qat_config(tmp_path / f"qat_{flag}", init, "gaq", epochs=2, compile=flag, evaluate_test=False)
        train(cfg, dataset=dataset)
        runs[flag] = read_checkpoint(Path(cfg.output_dir) / "last.pt")["model_state"]
    # two graphs (warm-up, quantized: different inputs); dynamo may hand a graph to the backend twice when
    # it restarts its analysis to specialise a Python float, but never again at later steps
    assert len(set(counting_backend)) == 2 and len(counting_backend) <= 4, counting_backend
    # relative to the tensor's scale, floored at the largest weight (the cosine attention's bias gets a
    # gradient that vanishes up to rounding, so it stays near 0 in both runs)
    floats = {k: t.double() for k, t in runs[False].items() if torch.is_tensor(t) and t.is_floating_point()}
    top = max(float(t.abs().max()) for t in floats.values() if t.numel())
    for name, ref in floats.items():
        err = float((runs[True][name].double() - ref).abs().max()) / max(float(ref.abs().max()), top)
        assert err <= 1e-8, f"{name}: relative difference {err:.3e} between compiled and uncompiled QAT"


# ------------------------------------------------------------------------------------- compiled inference
@pytest.fixture
def compile_on():
    """Inference energies + forces compiled (``fast.set_compile``), restored afterwards."""
    from spherequant.models import fast

    old = fast.set_compile(True)
    yield
    fast.set_compile(old)


INFERENCE_CASES = [
    ("gaq", "keep", "ste"),
    ("gaq", "keep", "smooth"),
    ("gaq", "cosine", "ste"),
    ("lsq", "keep", "ste"),
    ("naive_int8", "keep", "ste"),
    ("svq_kmeans", "keep", "ste"),
    ("qdrop", "keep", "ste"),  # eval mode: no random masks
    ("degree_quant", "keep", "smooth"),  # eval mode: no masks, the in-degree pre-hook skipped
]


@pytest.mark.parametrize("method,attention,mode", INFERENCE_CASES)
def test_compiled_inference_matches_reference_without_recompiling(
    method, attention, mode, counting_backend, compile_on
):
    """``model(...)`` of a quantization-aware model in eval mode with compilation on runs the traced graph
    (no autograd graph in the outputs): energies and forces equal the eager reference on batches whose atom
    and edge counts change, compiled once; in the ``smooth`` force mode the model's own hook still reports
    the quantized energy."""
    model = _quantized(method, attention=attention).eval()
    gaq.set_force_mode(model, mode)
    frames = frames_of_changing_size(torch.float64)
    first = None
    for k, (z, pos, b) in enumerate(frames):
        out = model(z, pos, b)
        first = first or len(counting_backend)
        assert first >= 1 and len(counting_backend) == first, f"frame {k}: recompiled"
        ref = model.reference_forward(z, pos, b)
        assert not out["forces"].requires_grad and not out["energy"].requires_grad
        assert sorted(out) == sorted(ref), (sorted(out), sorted(ref))
        for key in ref:
            assert_close(f"{key} (frame {k})", out[key], ref[key], REFERENCE_TOL[torch.float64])


def test_compiled_inference_of_cosine_parent(counting_backend, compile_on):
    """A full-precision model with cosine attention (the written-out pass covers "so3krates" attention
    only) runs the traced graph too."""
    model = shifted_model(torch.float64, attention="cosine").eval()
    first = None
    for z, pos, b in frames_of_changing_size(torch.float64)[:2]:
        out, ref = model(z, pos, b), model.reference_forward(z, pos, b)
        assert_close("energy", out["energy"], ref["energy"], REFERENCE_TOL[torch.float64])
        assert_close("forces", out["forces"], ref["forces"], REFERENCE_TOL[torch.float64])
        first = first or len(counting_backend)
    assert first >= 1 and len(counting_backend) == first


def test_a_trace_leaves_no_fake_tensor_in_caches(counting_backend, compile_on):
    """Tensors made lazily inside the trace (MDDQ's magnitude levels and codebook points for a new dtype)
    are fake; they must not be cached, or the next eager call computes with them (a regression: the eager
    call after the first compiled one returned fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensor

    model = _quantized("gaq").float().eval()  # calibrated in float64: no float32 tensors cached yet
    z, pos, b = batch_of((5, 4), dtype=torch.float32)
    out = model(z, pos, b)
    assert len(counting_backend) >= 1
    ref = model.reference_forward(z, pos, b)
    for key in ("energy", "forces"):
        assert not isinstance(ref[key], FakeTensor) and not isinstance(out[key], FakeTensor), key
        assert_close(key, out[key], ref[key], REFERENCE_TOL[torch.float32])


def test_cached_tensors_keeps_only_real_tensors():
    from torch.fx.experimental.proxy_tensor import make_fx

    from spherequant._backend import cached_tensors

    cache = {}

    def f(x):
        return x + cached_tensors(cache, "k", lambda: torch.arange(3.0))

    make_fx(f, tracing_mode="fake")(torch.zeros(3))
    assert cache == {}
    assert torch.equal(f(torch.zeros(3)), torch.arange(3.0)) and torch.equal(cache["k"], torch.arange(3.0))
    g = make_fx(f, tracing_mode="fake", _allow_non_fake_inputs=True)(torch.zeros(3))  # cached: a constant
    assert torch.equal(g(torch.ones(3)), torch.arange(3.0) + 1)


def test_compiled_inference_falls_back(counting_backend, compile_on):
    """Layer hooks and calibrating quantizers keep the eager path (same numbers); a model the written-out
    pass covers never reaches the traced graph."""
    z, pos, b = batch_of((5, 4))
    calibrating = shifted_model(torch.float64)
    gaq.quantize_(calibrating, gaq.QuantizationSpec.from_options("gaq", attention="keep"))
    hooked = _quantized("gaq").eval()
    hooked.layers[0].register_forward_hook(lambda *a: None)
    degree = _quantized("degree_quant").eval()
    degree.layers[1].register_forward_pre_hook(lambda *a: None)  # not marked inert: a hook like any other
    models = {"calibrating": calibrating.eval(), "hooks": hooked, "pre-hook": degree,
              "plain": shifted_model(torch.float64).eval()}  # fmt: skip
    for word, model in models.items():
        if word != "plain":
            assert compiled.inference_forward(model, z, pos, radius_graph(pos, model.cutoff, b)) is None, word
        if word == "calibrating":
            continue  # each call updates its ranges: no second call to compare
        out, ref = model(z, pos, b), model.reference_forward(z, pos, b)
        assert_close(f"forces ({word})", out["forces"], ref["forces"], REFERENCE_TOL[torch.float64])
    assert counting_backend == []


def test_compiled_inference_failure_warns_and_falls_back(broken_backend, compile_on):
    model = _quantized("gaq").eval()
    z, pos, b = batch_of((5, 4))
    with pytest.warns(RuntimeWarning, match="torch.compile of the inference pass failed"):
        out = model(z, pos, b)
    ref = model.reference_forward(z, pos, b)
    assert_close("forces", out["forces"], ref["forces"], REFERENCE_TOL[torch.float64])
