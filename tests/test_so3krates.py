"""So3krates model: symmetries, conservative forces, cutoff smoothness, batching, validation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from e3nn import o3
from spherequant.models.so3krates import So3krates, cosine_cutoff, scatter_softmax

MODES = ["so3krates", "cosine"]
SMALL = dict(num_features=16, num_layers=2, num_heads=2, degrees=(1, 2, 3), num_rbf=8, max_z=10, cutoff=4.0)


def make_model(attention="so3krates", dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = {**SMALL, **kw}
    model = So3krates(attention=attention, **cfg).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    shift = torch.randn(cfg["max_z"] + 1, generator=g, dtype=torch.float64)
    model.set_energy_statistics(shift, 0.7)
    return model.eval()


def molecule(n=8, seed=0, dtype=torch.float64, spread=1.2):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(1, 9, (n,), generator=g)
    pos = (torch.randn(n, 3, generator=g) * spread).to(dtype)
    return z, pos


def haar_rotations(n, seed):
    torch.manual_seed(seed)
    return o3.rand_matrix(n, dtype=torch.float64)


@pytest.mark.parametrize("attention", MODES)
def test_rotation_equivariance(attention):
    model = make_model(attention)
    z, pos = molecule(9)
    ref = model(z, pos)
    assert ref["forces"].abs().max() > 1e-3, "forces too small for a meaningful test"
    for R in haar_rotations(3, seed=1):
        out = model(z, pos @ R.T)
        e_err = (out["energy"] - ref["energy"]).abs().max().item()
        f_err = (out["forces"] - ref["forces"] @ R.T).norm(dim=-1)
        assert e_err < 1e-10, f"energy changed by {e_err:.3e} under rotation"
        assert f_err.max() < 1e-10, f"max force err {f_err.max():.3e} at atom {f_err.argmax()}"


@pytest.mark.parametrize("attention", MODES)
def test_chi_transforms_with_wigner_D(attention):
    """The equivariant features follow e3nn's convention: chi(R x) = D(R) chi(x), D block diagonal."""
    model = make_model(attention)
    z, pos = molecule(7)
    captured = []
    hook = model.layers[-1].chi_quant.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    R = haar_rotations(1, seed=3)[0]
    model(z, pos, compute_forces=False)
    model(z, pos @ R.T, compute_forces=False)
    hook.remove()
    chi, chi_rot = captured[-3][: len(z)], captured[-1][: len(z)]
    assert chi.shape == (len(z), 3 + 5 + 7)
    # e3nn's D_from_matrix is only ~1e-7 accurate; fit D from its spherical harmonics in float64 instead
    pts = torch.randn(60, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Y = o3.spherical_harmonics([1, 2, 3], pts, normalize=True, normalization="norm")
    Y_rot = o3.spherical_harmonics([1, 2, 3], pts @ R.T, normalize=True, normalization="norm")
    D = torch.linalg.lstsq(Y, Y_rot).solution.T  # Y_rot = Y D^T
    assert (Y_rot - Y @ D.T).abs().max() < 1e-12
    err = (chi_rot - chi @ D.T).abs()
    assert chi.abs().max() > 1e-3
    assert err.max() < 1e-10, f"max chi err {err.max():.3e}"
    # degree-1 block is a plain (x, y, z) vector: D^1(R) == R, and D is block diagonal
    assert torch.allclose(D[:3, :3], R, atol=1e-12)
    assert D[:3, 3:].abs().max() < 1e-12 and D[3:8, 8:].abs().max() < 1e-12


@pytest.mark.parametrize("attention", MODES)
def test_translation_and_permutation(attention):
    model = make_model(attention)
    z, pos = molecule(8, seed=2)
    ref = model(z, pos)
    shifted = model(z, pos + torch.tensor([3.0, -7.0, 11.0], dtype=pos.dtype))
    assert (shifted["energy"] - ref["energy"]).abs().max() < 1e-10
    f_err = (shifted["forces"] - ref["forces"]).abs().max()
    assert f_err < 1e-10, f"translation force err {f_err:.3e}"
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(5))
    out = model(z[perm], pos[perm])
    assert (out["energy"] - ref["energy"]).abs().max() < 1e-10
    p_err = (out["forces"] - ref["forces"][perm]).abs().max()
    assert p_err < 1e-10, f"permutation force err {p_err:.3e}"


@pytest.mark.parametrize("attention", MODES)
def test_forces_are_minus_energy_gradient_finite_differences(attention):
    """Central differences of E along random displacement directions equal -F . v (and per component)."""
    model = make_model(attention)
    z, pos = molecule(6, seed=4)
    forces = model(z, pos)["forces"]
    g = torch.Generator().manual_seed(7)
    h = 1e-5
    directions = [torch.randn(pos.shape, generator=g, dtype=pos.dtype) for _ in range(3)]
    e1 = torch.zeros_like(pos)
    e1[2, 1] = 1.0  # one single Cartesian component as well
    for v in [*directions, e1]:
        v = v / v.norm()
        plus = model(z, pos + h * v, compute_forces=False)["energy"].item()
        minus = model(z, pos - h * v, compute_forces=False)["energy"].item()
        fd = -(plus - minus) / (2 * h)
        analytic = (forces * v).sum().item()
        assert abs(fd - analytic) < 1e-7, f"-dE/dv by FD {fd:.10f} vs F.v {analytic:.10f}"


@pytest.mark.parametrize("attention", MODES)
@pytest.mark.parametrize("with_partner", [False, True])
def test_energy_continuous_across_cutoff(attention, with_partner):
    """An atom crossing r_c changes energy and forces continuously (also when it was the last neighbour)."""
    model = make_model(attention)
    rc = model.cutoff
    base = [[0.0, 0.0, 0.0]]
    z = [6, 1]
    if with_partner:
        base.append([-1.1, 0.3, 0.0])  # keeps atom 0 in a neighbourhood after atom 1 leaves
        z = [6, 8, 1]
    z = torch.tensor(z)
    direction = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    jumps = []
    for eps in (1e-2, 1e-3, 1e-4):
        energies, forces = [], []
        for r in (rc - eps, rc + eps):
            pos = torch.tensor([*base, (r * direction).tolist()], dtype=torch.float64)
            out = model(z, pos)
            energies.append(out["energy"].item())
            forces.append(out["forces"])
        jumps.append(abs(energies[0] - energies[1]))
        f_jump = (forces[0] - forces[1]).abs().max().item()
        assert f_jump < 50 * eps, f"force jump {f_jump:.3e} at eps {eps}"
    assert jumps[-1] < 1e-8, f"energy jumps {jumps}"
    assert jumps[0] > 0 and jumps[-1] < jumps[0], f"energy jumps not shrinking: {jumps}"


@pytest.mark.parametrize("attention", MODES)
def test_isolated_atoms(attention):
    model = make_model(attention)
    z = torch.tensor([1, 6, 8, 7])
    pos = torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]], dtype=torch.float64)
    out = model(z, pos)
    expected = model.energy_shift[z].sum()
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()
    assert abs(out["energy"].item() - expected.item()) < 1e-12
    assert out["forces"].abs().max() == 0
    single = model(z[:1], pos[:1])
    assert abs(single["energy"].item() - model.energy_shift[1].item()) < 1e-12


@pytest.mark.parametrize("attention", MODES)
def test_batch_equals_one_by_one(attention):
    model = make_model(attention)
    mols = [molecule(n, seed=10 + n) for n in (5, 1, 8, 3)]
    z = torch.cat([m[0] for m in mols])
    pos = torch.cat([m[1] for m in mols])
    batch = torch.cat([torch.full((len(m[0]),), k) for k, m in enumerate(mols)])
    out = model(z, pos, batch)
    assert out["energy"].shape == (4,)
    start = 0
    for k, (zk, pk) in enumerate(mols):
        single = model(zk, pk)
        assert abs(out["energy"][k] - single["energy"][0]) < 1e-10
        f_err = (out["forces"][start : start + len(zk)] - single["forces"]).abs().max()
        assert f_err < 1e-10, f"graph {k}: force err {f_err:.3e}"
        start += len(zk)
    gb = SimpleNamespace(z=z, pos=pos, batch=batch, n_atoms=torch.tensor([len(m[0]) for m in mols]))
    assert torch.allclose(model.forward_batch(gb)["energy"], out["energy"], atol=1e-12)


@pytest.mark.parametrize("attention", MODES)
def test_float32_matches_float64(attention):
    m64 = make_model(attention)
    m32 = make_model(attention).float()
    z, pos = molecule(8, seed=6)
    o64, o32 = m64(z, pos), m32(z, pos.float())
    assert o32["energy"].dtype == torch.float32 and o32["forces"].dtype == torch.float32
    assert (o32["energy"].double() - o64["energy"]).abs().max() < 1e-4
    err = (o32["forces"].double() - o64["forces"]).abs().max()
    assert err < 1e-4, f"float32 vs float64 force err {err:.3e}"


@pytest.mark.parametrize("attention", MODES)
def test_force_loss_trains_all_branches(attention):
    model = make_model(attention, learnable_tau=(attention == "cosine")).train()
    z, pos = molecule(6, seed=8)
    out = model(z, pos)
    assert out["forces"].requires_grad, "forces must carry a graph in training mode"
    out["forces"].pow(2).sum().backward()
    layer = model.layers[0]
    for name, mod in [("feature", layer.feature_block), ("geometric", layer.geometric_block)]:
        g = sum(p.grad.abs().sum() for p in mod.parameters() if p.grad is not None)
        assert g > 0, f"no gradient reaches the {name} block"
    if attention == "cosine":
        assert layer.feature_block.attention.log_tau.grad is not None


def test_eval_mode_forces_have_no_graph():
    model = make_model()
    z, pos = molecule(5)
    with torch.no_grad():
        out = model(z, pos)
    assert not out["forces"].requires_grad
    assert torch.isfinite(out["forces"]).all()


def test_branches_and_hooks_are_named_submodules():
    model = make_model()
    names = dict(model.named_modules())
    for k in range(2):
        for part in ("feature_block", "geometric_block", "exchange_block", "x_quant", "chi_quant"):
            assert f"layers.{k}.{part}" in names
        assert isinstance(names[f"layers.{k}.chi_quant"], torch.nn.Identity)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is torch.nn.Linear for m in linears)


def test_attention_shapes_recorded():
    model = make_model("cosine")
    z, pos = molecule(6, spread=0.8)
    for layer in model.layers:
        layer.record_attention = True
    model(z, pos, compute_forces=False)
    a = model.layers[0].last_attention
    e = 6 * 5
    assert a["feature"].shape == (e, 2) and a["geometric"].shape == (e, 3)
    # cosine attention rows are a cutoff-weighted softmax times the cutoff: between 0 and 1
    assert (a["feature"] >= 0).all() and (a["feature"] <= 1).all()


def test_scatter_softmax_against_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 2, generator=g, dtype=torch.float64) * 30
    index = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])
    w = torch.rand(9, generator=g, dtype=torch.float64)
    out = scatter_softmax(logits, index, 4, weight=w)
    for node in range(4):
        rows = index == node
        if rows.any():
            ref = w[rows, None] * torch.exp(logits[rows]) / (w[rows, None] * torch.exp(logits[rows])).sum(0)
            assert torch.allclose(out[rows], ref, atol=1e-12)


def test_cosine_cutoff_values():
    d = torch.tensor([0.0, 1.0, 4.999999, 5.0, 7.0], dtype=torch.float64)
    phi = cosine_cutoff(d, 5.0)
    ref = [0.5 * (math.cos(math.pi * x / 5.0) + 1) if x < 5.0 else 0.0 for x in d.tolist()]
    assert torch.allclose(phi, torch.tensor(ref, dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"num_features": 0}, ValueError, "num_features"),
        ({"num_features": 10, "num_heads": 3}, ValueError, "divisible"),
        ({"degrees": ()}, TypeError, "degrees"),
        ({"degrees": (0, 1)}, ValueError, "degrees"),
        ({"degrees": (1, 1)}, ValueError, "distinct"),
        ({"cutoff": -1.0}, ValueError, "cutoff"),
        ({"attention": "softmax"}, ValueError, "attention"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"num_layers": 1.5}, TypeError, "num_layers"),
        ({"learnable_tau": 1}, TypeError, "learnable_tau"),
    ],
)
def test_constructor_validation(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        So3krates(**{**SMALL, **kwargs})


def test_forward_validation():
    model = make_model()
    z, pos = molecule(4)
    with pytest.raises(ValueError, match="z must hold"):
        model(torch.tensor([1, 2, 3, 99]), pos)
    with pytest.raises(TypeError, match="dtype"):
        model(z, pos.float())
    with pytest.raises(ValueError, match="shape"):
        model(z, pos[:3])
    with pytest.raises(ValueError, match="share a position"):
        model(z, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale"):
        model.set_energy_statistics({1: 0.0}, -1.0)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    """torch.compile (aot_eager backend; the autograd force call graph-breaks) gives the eager results."""
    pytest.importorskip("torch._dynamo")
    model = make_model(dtype=torch.float32)
    model.validate_inputs = False
    z, pos = molecule(6, dtype=torch.float32)
    ref = model(z, pos)
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(z, pos)
    assert torch.allclose(out["energy"], ref["energy"], atol=1e-5)
    assert torch.allclose(out["forces"], ref["forces"], atol=1e-5)
