"""TorchSim adapter (spherequant.models.torchsim): energies and forces of a batch of molecules of different
sizes against our own model and the ASE calculator (FP32, QAT-prepared, converted GAQ and integer models,
float64 and float32), TorchSim's NVE integrator against our MD engine from the same start, units, bad inputs.

Skipped when TorchSim (``pip install "spherequant[torchsim]"``) is not installed."""

from __future__ import annotations

import copy
import importlib
import sys

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim")

from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from spherequant.models import gaq  # noqa: E402
from spherequant.models.calculator import SphereQuantCalculator  # noqa: E402
from spherequant.models.checkpoints import load_model  # noqa: E402
from spherequant.models.data import collate, load_dataset  # noqa: E402
from spherequant.models.md import (  # noqa: E402
    energy_drift,
    kinetic_energy,
    masses_from_numbers,
    maxwell_boltzmann,
    run_md,
)
from spherequant.models.torchsim import (  # noqa: E402
    TIME_UNIT_FS,
    SphereQuantModel,
    fs_to_time_unit,
    molecules_to_state,
)

DT = {"float32": torch.float32, "float64": torch.float64}
# The small shipped pair (64 features, 2 layers): fast, and its dynamics of the batch below (with benzene and
# pyridine, outside its training data) stay stable; the study's larger parent's did not within 200 steps.
FP32 = "azobenzene-gfn2-fp32-small"
GAQ = "azobenzene-gfn2-gaq-w4a8-small"


# ----------------------------------------------------------------------------------------------------------
# fixtures: the shipped models in their forms, a batch of molecules of three sizes
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def azobenzene():
    return load_dataset("azobenzene-gfn2-500K")


@pytest.fixture(scope="module")
def molecules(azobenzene):
    """(numbers, positions) of azobenzene (24 atoms, frame 0), benzene (12), pyridine (11), azobenzene
    (frame 7): elements H, C, N, on which the shipped models were trained; dynamics of all three stay
    stable with the small shipped FP32 model."""
    out = [(np.asarray(azobenzene[0]["numbers"]), np.asarray(azobenzene[0]["positions"]))]
    for name in ("C6H6", "C5H5N"):
        a = molecule(name)
        out.append((a.numbers, a.positions))
    out.append((np.asarray(azobenzene[7]["numbers"]), np.asarray(azobenzene[7]["positions"])))
    return out


def _qat_spec():
    # the GAQ W4A8 recipe with the FP32 model's attention kept (QuantizationSpec where gaq has it)
    if hasattr(gaq, "QuantizationSpec"):
        return gaq.QuantizationSpec.from_options("gaq", attention="keep")
    return gaq.QuantizationSpec.from_options("gaq", attention="keep")


@pytest.fixture(scope="module")
def base_models(azobenzene):
    """Float32 models of each form, built once (tests deep-copy them before casting)."""
    fp = load_model(FP32)
    qat = copy.deepcopy(fp)
    gaq.quantize_(qat, _qat_spec(), step="prepare")
    gaq.calibrate_(qat, [collate(azobenzene, [k], dtype=torch.float32) for k in range(4)])
    from spherequant.models.deploy import convert_to_integer

    return {
        "fp32": fp,
        "qat-prepared": qat,
        "converted": load_model(GAQ),
        "integer": convert_to_integer(load_model(GAQ)),
        "integer-smooth": convert_to_integer(load_model(GAQ, force_mode="smooth")),
    }


def _state(molecules, dtype, velocities=None):
    return molecules_to_state([z for z, _ in molecules], [x for _, x in molecules], velocities, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# energies and forces against the model and the ASE calculator
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["fp32", "qat-prepared", "converted", "integer", "integer-smooth"])
def test_batch_matches_model_and_ase(form, float_dtype, base_models, molecules):
    dtype = DT[float_dtype]
    adapter = SphereQuantModel(copy.deepcopy(base_models[form]), dtype=dtype)
    assert adapter.form == {"integer-smooth": "integer"}.get(form, form)
    assert adapter.dtype == dtype and adapter.device == torch.device("cpu")
    assert adapter.trained_elements == (1, 6, 7)
    state = _state(molecules, dtype)
    before = (state.positions.clone(), state.atomic_numbers.clone(), state.system_idx.clone())
    out = adapter(state)
    assert torch.equal(state.positions, before[0]) and torch.equal(state.atomic_numbers, before[1])
    assert torch.equal(state.system_idx, before[2]), "the adapter changed the state"
    assert out["energy"].shape == (len(molecules),) and out["forces"].shape == (state.n_atoms, 3)
    assert out["energy"].dtype == dtype and out["forces"].dtype == dtype
    calc = SphereQuantCalculator(adapter.model, dtype=dtype)
    worst = {"model dE": 0.0, "model dF": 0.0, "ASE dE": 0.0, "ASE dF": 0.0}
    start = 0
    for k, (z, x) in enumerate(molecules):
        n = len(z)
        e, f = out["energy"][k].double().item(), out["forces"][start : start + n].double().numpy()
        ref = adapter.model(torch.as_tensor(z), torch.as_tensor(x, dtype=dtype))  # one molecule alone
        atoms = Atoms(numbers=z, positions=x)
        atoms.calc = calc
        worst["model dE"] = max(worst["model dE"], abs(e - ref["energy"].item()) / abs(e))
        worst["model dF"] = max(worst["model dF"], np.abs(f - ref["forces"].double().numpy()).max())
        worst["ASE dE"] = max(worst["ASE dE"], abs(e - atoms.get_potential_energy()) / abs(e))
        worst["ASE dF"] = max(worst["ASE dF"], np.abs(f - atoms.get_forces()).max())
        start += n
    # energies relative (|E| ~ 500-1000 eV), forces absolute (eV/Angstrom)
    rel_e, abs_f = (1e-13, 1e-9) if dtype == torch.float64 else (1e-6, 1e-4)
    assert max(worst["model dE"], worst["ASE dE"]) < rel_e, f"{form} {float_dtype}: {worst}"
    assert max(worst["model dF"], worst["ASE dF"]) < abs_f, f"{form} {float_dtype}: {worst}"


def test_float64_state_with_float32_model(base_models, molecules):
    """A float64 TorchSim state with a float32 model: positions cast down, outputs cast up (exactly)."""
    adapter = SphereQuantModel(copy.deepcopy(base_models["fp32"]))
    assert adapter.dtype == torch.float32
    out64 = adapter(_state(molecules, torch.float64))
    out32 = adapter(_state(molecules, torch.float32))
    assert out64["energy"].dtype == torch.float64 and out64["forces"].dtype == torch.float64
    assert torch.equal(out64["energy"], out32["energy"].double())
    assert torch.equal(out64["forces"], out32["forces"].double())


def test_energy_only_and_dict_state(base_models, molecules):
    adapter = SphereQuantModel(copy.deepcopy(base_models["fp32"]), dtype=torch.float64, compute_forces=False)
    assert adapter.compute_forces is False and adapter.compute_stress is False
    state = _state(molecules, torch.float64)
    out = adapter(state)
    assert set(out) == {"energy"}
    full = SphereQuantModel(copy.deepcopy(base_models["fp32"]), dtype=torch.float64)
    as_dict = {"positions": state.positions, "atomic_numbers": state.atomic_numbers,
               "batch": state.system_idx, "cell": state.cell, "pbc": False}  # fmt: skip
    out_dict = full(as_dict)
    # the energy-only pass and the energy + forces pass run different kernels (no autograd graph in the
    # first): equal to float64 round-off, not necessarily bit for bit (BLAS blocking differs between CPUs)
    torch.testing.assert_close(out["energy"], out_dict["energy"], rtol=1e-13, atol=0.0)
    # a dict without system indices is one system: the sum of the molecules' energies
    one = full({"positions": state.positions, "atomic_numbers": state.atomic_numbers, "pbc": False})
    assert one["energy"].shape == (1,)
    # far-apart molecules in one system would interact within the cutoff; here they overlap, so only shape
    assert torch.isfinite(one["energy"]).all()


def test_smooth_gaq_reports_quantized_energy(base_models, molecules):
    model = copy.deepcopy(base_models["converted"])
    gaq.set_force_mode(model, "smooth")
    adapter = SphereQuantModel(model, dtype=torch.float64)
    out = adapter(_state(molecules, torch.float64))
    assert out["energy_quantized"].shape == (len(molecules),)
    direct = adapter.model(torch.as_tensor(molecules[1][0]), torch.as_tensor(molecules[1][1]))
    assert abs(out["energy_quantized"][1].item() - direct["energy_quantized"].item()) < 1e-9


# ----------------------------------------------------------------------------------------------------------
# units
# ----------------------------------------------------------------------------------------------------------
def test_units_match_torchsim_and_md(molecules):
    # TorchSim's metal time unit from its own (CODATA 2014) constants: 1 ps = MetalUnits.time units
    from torch_sim.units import MetalUnits

    assert abs(TIME_UNIT_FS * MetalUnits.time / 1000.0 - 1.0) < 1e-6, TIME_UNIT_FS
    assert abs(fs_to_time_unit(0.5) - 0.5 * MetalUnits.time / 1000.0) < 1e-7
    vel = [maxwell_boltzmann(masses_from_numbers(z), 300.0, seed=k) for k, (z, _) in enumerate(molecules)]
    state = _state(molecules, torch.float64, vel)
    ke_ts = ts.calc_kinetic_energy(masses=state.masses, momenta=state.momenta, system_idx=state.system_idx)
    ke_md = [kinetic_energy(v, masses_from_numbers(z)) for v, (z, _) in zip(vel, molecules)]
    np.testing.assert_allclose(ke_ts.numpy(), ke_md, rtol=1e-13)
    assert torch.equal(state.masses, torch.as_tensor(np.concatenate([masses_from_numbers(z)
                                                                     for z, _ in molecules])))  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# NVE dynamics: TorchSim's integrator against our MD engine
# ----------------------------------------------------------------------------------------------------------
def _torchsim_nve(adapter, molecules, vel, n_steps, dt_fs, every):
    """Potential and kinetic energies (S, M) at every ``every`` steps and the final state."""
    f64 = dict(dtype=torch.float64)
    init, update = ts.nve(
        adapter, dt=torch.tensor(fs_to_time_unit(dt_fs), **f64), kT=torch.tensor(0.0, **f64)
    )
    state = init(_state(molecules, torch.float64, vel))
    pot, kin = [], []

    def record(s):
        pot.append(s.energy.clone())
        kin.append(ts.calc_kinetic_energy(masses=s.masses, momenta=s.momenta, system_idx=s.system_idx))

    record(state)
    for step in range(1, n_steps + 1):
        state = update(state)
        if step % every == 0:
            record(state)
    return torch.stack(pot).numpy(), torch.stack(kin).numpy(), state


NVE_CASES = [
    pytest.param("fp32", "float64", 200, id="fp32-float64-200"),
    pytest.param("fp32", "float32", 300, id="fp32-float32-300", marks=pytest.mark.slow),
    pytest.param("qat-prepared-smooth", "float64", 300, id="qat-smooth-float64-300", marks=pytest.mark.slow),
    pytest.param("converted-smooth", "float64", 300, id="gaq-smooth-float64-300", marks=pytest.mark.slow),
    pytest.param("integer-smooth", "float32", 300, id="integer-smooth-float32-300", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("form", "float_dtype", "n_steps"), NVE_CASES)
def test_nve_matches_md_engine(form, float_dtype, n_steps, base_models, molecules):
    """Same start (positions, velocities), same timestep: TorchSim's velocity Verlet on the batch of three
    molecules and :func:`run_md` on each molecule agree frame by frame, and both conserve energy."""
    dtype = DT[float_dtype]
    mols = molecules[:3]
    if form.endswith("-smooth") and not form.startswith("integer"):
        model = copy.deepcopy(base_models[form.removesuffix("-smooth")])
        gaq.set_force_mode(model, "smooth")
    else:
        model = copy.deepcopy(base_models[form])
    adapter = SphereQuantModel(model, dtype=dtype)
    dt_fs, every = 0.5, 10
    vel = [maxwell_boltzmann(masses_from_numbers(z), 300.0, seed=k) for k, (z, _) in enumerate(mols)]
    pot, kin, final = _torchsim_nve(adapter, mols, vel, n_steps, dt_fs, every)
    tol_e, tol_x = (1e-9, 1e-10) if dtype == torch.float64 else (1e-3, 1e-4)
    start, report = 0, []
    for k, (z, x) in enumerate(mols):
        n = len(z)
        ours = run_md(adapter.model, z, x, velocities=vel[k], n_steps=n_steps, timestep_fs=dt_fs,
                      save_every=every, dtype=dtype, blowup="off", save_positions=False)  # fmt: skip
        assert ours.stable and ours.potential.shape == (n_steps // every + 1, 1)
        d_pot = np.abs(ours.potential[:, 0] - pot[:, k]).max()
        d_kin = np.abs(ours.kinetic[:, 0] - kin[:, k]).max()
        d_x = np.abs(ours.positions[0] - final.positions[start : start + n].numpy()).max()
        total_ts = pot[:, k] + kin[:, k]
        drift_ts = energy_drift(ours.time_fs, total_ts, n)
        dev = {  # largest |E_tot(t) - E_tot(0)| per atom, meV/atom
            "ours": 1e3 * np.abs(ours.total[:, 0] - ours.total[0, 0]).max() / n,
            "torchsim": 1e3 * np.abs(total_ts - total_ts[0]).max() / n,
        }
        report.append(f"molecule {k} ({n} atoms): max|dE_pot| {d_pot:.2e} eV, max|dE_kin| {d_kin:.2e} eV, "
                      f"max|dx| {d_x:.2e} A, drift ours {ours.drift.drift[0]:.3f} torchsim "
                      f"{drift_ts.drift[0]:.3f} meV/atom/ps, max dev {dev}")  # fmt: skip
        assert d_pot < tol_e and d_kin < tol_e and d_x < tol_x, "\n".join(report)
        # energy conservation of both engines: the total energy stays within 5 % of the range of the
        # potential energy (which moves by ~0.3-1 eV) and drifts by less than 5 meV/atom/ps
        assert max(dev.values()) * n / 1e3 < 0.05 * np.ptp(pot[:, k]), "\n".join(report)
        assert max(abs(ours.drift.drift[0]), abs(drift_ts.drift[0])) < 5.0, "\n".join(report)
        start += n
    print("\n".join(report))


def test_torchsim_integrate_runner(base_models, molecules):
    """TorchSim's high-level runner (Maxwell-Boltzmann start, its own unit conversion) with the adapter."""
    adapter = SphereQuantModel(copy.deepcopy(base_models["fp32"]), dtype=torch.float64)
    state = _state(molecules[:3], torch.float64)
    final = ts.integrate(state, adapter, integrator=ts.nve, n_steps=10, temperature=300.0, timestep=0.0005,
                         seed=1)  # fmt: skip
    assert final.n_systems == 3 and torch.isfinite(final.positions).all()
    assert float((final.positions - state.positions).abs().max()) > 1e-4  # the atoms moved
    check = adapter(final)
    torch.testing.assert_close(final.energy, check["energy"], rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# construction, loading, bad inputs
# ----------------------------------------------------------------------------------------------------------
def test_from_checkpoint_forms():
    assert SphereQuantModel.from_checkpoint(FP32).form == "fp32"
    assert SphereQuantModel.from_checkpoint(GAQ).form == "converted"
    m = SphereQuantModel.from_checkpoint(GAQ, integer=True, force_mode="smooth", dtype=torch.float64)
    assert m.form == "integer" and m.dtype == torch.float64 and m.model.force_mode == "smooth"
    with pytest.raises(ValueError, match="integer=True needs a converted GAQ checkpoint"):
        SphereQuantModel.from_checkpoint(FP32, integer=True)
    with pytest.raises(TypeError, match="integer must be a bool"):
        SphereQuantModel.from_checkpoint(FP32, integer=1)


def test_bad_constructor_arguments(base_models):
    fp = base_models["fp32"]
    with pytest.raises(TypeError, match="model must be a So3krates"):
        SphereQuantModel(torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="compute_stress=True is not supported"):
        SphereQuantModel(copy.deepcopy(fp), compute_stress=True)
    with pytest.raises(TypeError, match="compute_forces must be a bool"):
        SphereQuantModel(copy.deepcopy(fp), compute_forces="yes")
    with pytest.raises(ValueError, match=r"dtype must be torch\.float32 or torch\.float64"):
        SphereQuantModel(copy.deepcopy(fp), dtype=torch.float16)
    with pytest.raises(ValueError, match="device"):
        SphereQuantModel(copy.deepcopy(fp), device="nonsense")
    adapter = SphereQuantModel(copy.deepcopy(fp))
    with pytest.raises(NotImplementedError):
        adapter.compute_stress = True


def test_bad_states(base_models, molecules):
    adapter = SphereQuantModel(copy.deepcopy(base_models["fp32"]), dtype=torch.float64)
    # periodic systems
    periodic = ts.io.atoms_to_state([bulk("C", "diamond", a=3.57)], torch.device("cpu"), torch.float64)
    with pytest.raises(ValueError, match=r"periodic boundaries \(pbc=True\)"):
        adapter(periodic)
    # an element the model was not trained on: ethanol's oxygen (shipped ethanol data)
    eth = load_dataset("ethanol-gfn2-500K")[0]
    with pytest.raises(ValueError, match=r"O \(Z=8\).*not trained on"):
        adapter(molecules_to_state([eth["numbers"], molecules[1][0]], [eth["positions"], molecules[1][1]]))
    state = _state(molecules[:2], torch.float64)
    base = {"positions": state.positions, "atomic_numbers": state.atomic_numbers,
            "system_idx": state.system_idx, "pbc": False}  # fmt: skip
    nan = state.positions.clone()
    nan[3, 1] = float("nan")
    zero = state.atomic_numbers.clone()
    zero[0] = 0
    bad_idx = state.system_idx.clone()
    bad_idx[-1] = 3  # a gap: no system 2
    cases = [
        (dict(base, positions=nan), ValueError, "NaN or infinite"),
        (dict(base, atomic_numbers=zero), ValueError, r"atomic_numbers must lie in \[1, 100\], got \[0, 7\]"),
        (dict(base, system_idx=bad_idx), ValueError, "system_idx must start at 0"),
        (dict(base, system_idx=state.system_idx + 1), ValueError, "system_idx must start at 0"),
        (dict(base, system_idx=state.system_idx.flip(0)), ValueError, "system_idx must start at 0"),
        (dict(base, system_idx=state.system_idx.double()), ValueError, "system_idx must be an integer"),
        (dict(base, atomic_numbers=None), ValueError, "atomic_numbers must be an integer tensor"),
        (dict(base, atomic_numbers=state.atomic_numbers[:-1]), ValueError, "atomic_numbers must be"),
        (dict(base, positions=state.positions[:, :2]), ValueError, r"positions must be a tensor of shape"),
        (dict(base, positions=state.positions[:0]), ValueError, r"n_atoms >= 1"),
        (dict(base, positions=state.positions.half()), TypeError, "float32 or float64"),
        (dict(base, pbc=torch.tensor([True, False, False])), ValueError, "periodic"),
        ([1, 2, 3], TypeError, "state must be a torch_sim SimState or a dict"),
    ]
    cases.append(
        (dict(base, positions=state.positions.to("meta")), ValueError, "on meta but the model is on cpu")
    )
    for k, (bad, err, match) in enumerate(cases):
        with pytest.raises(err, match=match):
            adapter(bad)
            pytest.fail(f"case {k} ({match!r}) did not raise")
    adapter.validate_inputs = False  # the per-call checks off: periodic states are still refused
    with pytest.raises(ValueError, match="periodic"):
        adapter(periodic)


def test_bad_molecules_to_state():
    with pytest.raises(ValueError, match="one entry per molecule"):
        molecules_to_state([[1, 1]], [[[0, 0, 0], [0.7, 0, 0]], [[0, 0, 0]]])
    with pytest.raises(ValueError, match=r"positions\[0\] must be a finite array of shape \(2, 3\)"):
        molecules_to_state([[1, 1]], [[[0, 0, 0], [np.inf, 0, 0]]])
    with pytest.raises(ValueError, match=r"velocities\[0\]"):
        molecules_to_state([[1, 1]], [[[0, 0, 0], [0.7, 0, 0]]], [[[0, 0, 0]]])
    with pytest.raises(ValueError, match=r"numbers\[0\] must be a non-empty 1-d integer array"):
        molecules_to_state([[1.0, 1.0]], [[[0, 0, 0], [0.7, 0, 0]]])
    with pytest.raises(TypeError, match="numbers must be a non-empty sequence"):
        molecules_to_state([], [])
    with pytest.raises(ValueError, match="dtype must be"):
        molecules_to_state([[1, 1]], [[[0, 0, 0], [0.7, 0, 0]]], dtype=torch.int64)
    with pytest.raises(TypeError, match="dt_fs must be a finite real number"):
        fs_to_time_unit(float("nan"))


def test_import_error_names_the_extra(monkeypatch):
    """Without TorchSim, importing the adapter says which extra to install."""
    monkeypatch.setitem(sys.modules, "torch_sim", None)  # "import torch_sim" now raises ImportError
    monkeypatch.delitem(sys.modules, "spherequant.models.torchsim", raising=False)
    with pytest.raises(ImportError, match=r'pip install "spherequant\[torchsim\]"') as info:
        importlib.import_module("spherequant.models.torchsim")
    assert info.value.name == "torch_sim"
