"""MD engine: units, integrators (vs ASE), energy conservation, Langevin temperature, replicas, resume,
blow-up detection, drift fit, files, CLI, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers import TORCH_DTYPES
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.verlet import VelocityVerlet
from hypothesis import given
from hypothesis import strategies as st
from spherequant.models import md
from spherequant.models.md import (
    BlowUpConfig,
    MDBlowUp,
    MorseLJPotential,
    energy_drift,
    load_trajectory,
    maxwell_boltzmann,
    run_md,
)

# Ethanol-like geometry (Angstrom): C C O H H H H H H
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL_POS = np.array(
    [
        [-0.748, -0.015, 0.024],
        [0.558, 0.420, -0.278],
        [1.513, -0.541, 0.159],
        [-1.561, 0.664, -0.243],
        [-0.962, -0.947, -0.517],
        [-0.786, -0.228, 1.096],
        [0.571, 0.634, -1.359],
        [0.771, 1.366, 0.233],
        [2.385, -0.161, -0.033],
    ]
)


def ethanol_potential():
    return MorseLJPotential.from_molecule(ETHANOL_Z, ETHANOL_POS)


def reference_energy(pot: MorseLJPotential, pos: np.ndarray) -> float:
    """Slow pairwise loop over the same functional form (independent of the vectorised torch code)."""
    bonds = {tuple(b) for b in pot.bonds.tolist()}
    r0 = {tuple(b): float(r) for b, r in zip(pot.bonds.tolist(), pot.r0.tolist(), strict=True)}
    e = 0.0
    n = pos.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            r = float(np.sqrt(((pos[i] - pos[j]) ** 2).sum()))
            if (i, j) in bonds:
                e += pot.depth * (1 - np.exp(-pot.width * (r - r0[(i, j)]))) ** 2
            else:
                e += 4 * pot.lj_epsilon * ((pot.lj_sigma / r) ** 12 - (pot.lj_sigma / r) ** 6)
    return e


# ------------------------------------------------------------------------------------------------ units
def test_unit_constants_match_ase():
    # ASE's time unit is Angstrom * sqrt(amu / eV): 1 amu A^2/fs^2 = 1 / units.fs**2 eV (CODATA 2014 there).
    ase_value = 1.0 / units.fs**2
    assert abs(md.EV_PER_AMU_A2_FS2 / ase_value - 1) < 1e-7, (md.EV_PER_AMU_A2_FS2, ase_value)
    assert abs(md.EV_PER_AMU_A2_FS2 - 103.6427) < 1e-4
    assert abs(md.KB_EV_PER_K / units.kB - 1) < 1e-6
    # one constant, one name: md and data re-export the units module's objects
    from spherequant.models import data
    from spherequant.models import units as sq_units

    assert md.ELEMENTARY_CHARGE_C is sq_units.ELEMENTARY_CHARGE_C
    assert data.KCAL_PER_MOL is sq_units.KCAL_PER_MOL
    assert abs(sq_units.KCAL_PER_MOL / (units.kcal / units.mol) - 1) < 1e-7  # ASE's kcal/mol in eV
    with pytest.warns(DeprecationWarning, match="ELEMENTARY_CHARGE_C"):
        assert data.ELEMENTARY_CHARGE == sq_units.ELEMENTARY_CHARGE_C


def test_masses_kinetic_temperature_kinds(float_dtype, tol):
    m = md.masses_from_numbers(ETHANOL_Z)
    np.testing.assert_allclose(m[:3], [12.011, 12.011, 15.999], atol=1e-3)
    v = maxwell_boltzmann(m, 250.0, replicas=3, seed=4)
    t_np = md.temperature(v, m)
    np.testing.assert_allclose(t_np, 250.0, rtol=1e-12)
    vt = torch.as_tensor(v, dtype=TORCH_DTYPES[float_dtype])
    t_torch = md.temperature(vt, m)
    assert isinstance(t_torch, torch.Tensor) and t_torch.dtype == TORCH_DTYPES[float_dtype]
    err = np.abs(t_torch.numpy() - t_np) / 250.0
    assert err.max() < 10 * tol, f"max rel err {err.max():.3e}"
    # independent kinetic energy: explicit sum over atoms
    ke = sum(0.5 * m[i] * (v[0, i] ** 2).sum() for i in range(len(m))) * md.EV_PER_AMU_A2_FS2
    assert abs(md.kinetic_energy(v, m)[0] - ke) < 1e-12


def test_maxwell_boltzmann_momentum_rotation_and_variance():
    m = md.masses_from_numbers(ETHANOL_Z)
    v = maxwell_boltzmann(m, 300.0, replicas=4, seed=1, positions=ETHANOL_POS, remove_rotation=True)
    p = (m[:, None] * v).sum(1)
    assert np.abs(p).max() < 1e-12, f"COM momentum {p}"
    com = (m[:, None] * ETHANOL_POS).sum(0) / m.sum()
    ang = (m[:, None] * np.cross(ETHANOL_POS - com, v)).sum(1)
    assert np.abs(ang).max() < 1e-10, f"angular momentum {ang}"
    dof = 3 * len(m) - 6
    t = 2 * md.kinetic_energy(v, m) / (dof * md.KB_EV_PER_K)
    np.testing.assert_allclose(t, 300.0, rtol=1e-10)
    # equipartition with the COM constraint: m_i <v_i,k^2> / (kB T) = 1 - m_i / M
    big = maxwell_boltzmann(m, 300.0, replicas=4000, seed=2)
    ratio = (m[:, None] * big**2).mean(axis=(0, 2)) * md.EV_PER_AMU_A2_FS2 / (md.KB_EV_PER_K * 300.0)
    expected = 1 - m / m.sum()
    err = np.abs(ratio - expected)
    assert err.max() < 0.05, f"max err {err.max():.3f} at atom {err.argmax()}: {ratio} vs {expected}"


# ------------------------------------------------------------------------------------------------ potential
def test_morse_lj_energy_and_forces(float_dtype):
    pot = ethanol_potential().to(TORCH_DTYPES[float_dtype])
    rng = np.random.default_rng(0)
    pos = ETHANOL_POS[None] + 0.05 * rng.standard_normal((2, 9, 3))
    out = pot(
        torch.tensor(np.tile(ETHANOL_Z, 2)),
        torch.as_tensor(pos.reshape(-1, 3), dtype=TORCH_DTYPES[float_dtype]),
    )
    ref = np.array([reference_energy(pot, p) for p in pos])
    rtol = 1e-5 if float_dtype == "float32" else 1e-12
    err = np.abs(out["energy"].double().numpy() - ref)
    assert err.max() < rtol * (1 + np.abs(ref).max()), f"max energy err {err.max():.3e}"
    # forces vs central finite differences of the slow reference (float64)
    if float_dtype == "float64":
        h = 1e-6
        fd = np.zeros((9, 3))
        for i in range(9):
            for k in range(3):
                p1, p2 = pos[0].copy(), pos[0].copy()
                p1[i, k] += h
                p2[i, k] -= h
                fd[i, k] = -(reference_energy(pot, p1) - reference_energy(pot, p2)) / (2 * h)
        f = out["forces"].numpy()[:9]
        err = np.abs(f - fd)
        assert err.max() < 1e-6, f"max force err {err.max():.3e} at atom {err.argmax() // 3}"


# ------------------------------------------------------------------------------------------------ vs ASE
class _AseWrapper(Calculator):
    implemented_properties = ["energy", "forces"]  # noqa: RUF012

    def __init__(self, pot):
        super().__init__()
        self.pot = pot

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.pot(torch.as_tensor(self.atoms.numbers), torch.as_tensor(self.atoms.positions))
        self.results = {"energy": float(out["energy"].sum()), "forces": out["forces"].numpy()}


def _ase_trajectory(calc, z, pos, vel, dt, n_steps):
    atoms = Atoms(numbers=z, positions=pos)
    atoms.set_velocities(vel / units.fs)  # Angstrom/fs -> Angstrom per ASE time unit
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=dt * units.fs)
    dyn.run(n_steps)
    return atoms.positions.copy(), atoms.get_velocities() * units.fs


def test_follows_ase_velocity_verlet_analytic():
    pot = ethanol_potential().double()
    vel = maxwell_boltzmann(md.masses_from_numbers(ETHANOL_Z), 500.0, seed=3)
    res = run_md(pot, ETHANOL_Z, ETHANOL_POS, velocities=vel, n_steps=100, timestep_fs=0.5, dtype="float64")
    ase_pos, ase_vel = _ase_trajectory(_AseWrapper(pot), ETHANOL_Z, ETHANOL_POS, vel, 0.5, 100)
    err = np.linalg.norm(res.positions[0] - ase_pos, axis=-1)
    assert err.max() < 1e-6, f"max position diff {err.max():.3e} A at atom {err.argmax()}"
    moved = np.linalg.norm(ase_pos - ETHANOL_POS, axis=-1).max()
    assert moved > 0.05, f"the test must move atoms; moved {moved:.3f} A"
    assert np.abs(res.velocities[0] - ase_vel).max() < 1e-8


def test_follows_ase_velocity_verlet_so3krates_calculator():
    from spherequant.models.calculator import SphereQuantCalculator
    from spherequant.models.so3krates import So3krates

    torch.manual_seed(0)
    model = So3krates(
        num_features=16, num_layers=1, num_heads=2, degrees=(1,), num_rbf=8, max_z=9, cutoff=4.0
    )
    model = model.double().eval()
    model.set_energy_statistics({}, 0.5)
    vel = maxwell_boltzmann(md.masses_from_numbers(ETHANOL_Z), 300.0, seed=5)
    calc = SphereQuantCalculator(model, dtype=torch.float64)
    ase_pos, _ = _ase_trajectory(calc, ETHANOL_Z, ETHANOL_POS, vel, 0.5, 100)
    # blowup="off": a random model need not keep the molecule bonded
    res = run_md(model, ETHANOL_Z, ETHANOL_POS, velocities=vel, n_steps=100, dtype="float64", blowup="off")
    err = np.linalg.norm(res.positions[0] - ase_pos, axis=-1)
    assert err.max() < 1e-6, f"max position diff {err.max():.3e} A at atom {err.argmax()}"
    assert np.linalg.norm(ase_pos - ETHANOL_POS, axis=-1).max() > 0.05


# ------------------------------------------------------------------------------------------------ NVE / NVT
def test_nve_conserves_energy_with_dt_squared_fluctuation():
    pot = ethanol_potential()
    fl = {}
    for dt in (0.4, 0.2):
        res = run_md(
            pot, ETHANOL_Z, ETHANOL_POS, n_steps=round(80 / dt), timestep_fs=dt, replicas=2,
            temperature_K=300.0, save_every=round(0.8 / dt), dtype="float64", seed=11,
        )  # fmt: skip
        assert res.verdict == "stable"
        fl[dt] = res.drift.fluctuation_mean
        # drift small compared with the kinetic energy scale (kB T ~ 26 meV per atom per ps would be huge)
        assert res.drift.abs_drift_mean < 5.0, f"drift {res.drift.drift} meV/atom/ps"
        assert np.all(res.drift.fluctuation < 1.0), f"fluctuation {res.drift.fluctuation} meV/atom"
    ratio = fl[0.4] / fl[0.2]
    assert 3.2 < ratio < 4.8, f"halving dt should quarter the fluctuation; ratio {ratio:.3f} ({fl})"


def test_langevin_reaches_target_temperature():
    pot = ethanol_potential()
    res = run_md(
        pot, ETHANOL_Z, ETHANOL_POS, n_steps=1200, timestep_fs=0.5, ensemble="langevin", temperature_K=150.0,
        friction_per_fs=0.1, replicas=8, save_every=5, dtype="float64", seed=3,
    )  # fmt: skip
    late = res.temperature[res.steps >= 400]
    mean = late.mean()
    assert abs(mean / 150.0 - 1) < 0.07, f"mean temperature {mean:.1f} K, target 150 K"
    # centre-of-mass momentum stays removed
    m = md.masses_from_numbers(ETHANOL_Z)
    assert np.abs((m[:, None] * res.velocities).sum(1)).max() < 1e-10


def test_langevin_reproducible_and_seeded(float_dtype):
    pot = ethanol_potential()
    kw = dict(n_steps=30, ensemble="langevin", replicas=2, save_every=10, dtype=float_dtype)
    a = run_md(pot, ETHANOL_Z, ETHANOL_POS, seed=1, **kw)
    b = run_md(pot, ETHANOL_Z, ETHANOL_POS, seed=1, **kw)
    c = run_md(pot, ETHANOL_Z, ETHANOL_POS, seed=2, **kw)
    assert np.array_equal(a.positions, b.positions)
    assert np.abs(a.positions - c.positions).max() > 1e-4


def test_replicas_equal_single_runs(float_dtype, tol):
    pot = ethanol_potential()
    m = md.masses_from_numbers(ETHANOL_Z)
    vel = maxwell_boltzmann(m, 400.0, replicas=3, seed=8)
    rng = np.random.default_rng(1)
    pos = ETHANOL_POS + 0.02 * rng.standard_normal((3, 9, 3))
    kw = dict(n_steps=40, save_every=10, dtype=float_dtype)
    batch = run_md(pot, ETHANOL_Z, pos, velocities=vel, **kw)
    scale = 1e3 if float_dtype == "float32" else 1.0
    for r in range(3):
        single = run_md(pot, ETHANOL_Z, pos[r], velocities=vel[r], **kw)
        err = np.abs(batch.positions[r] - single.positions[0])
        assert err.max() < scale * tol, f"replica {r}: max diff {err.max():.3e}"
        de = np.abs(batch.total[:, r] - single.total[:, 0]).max()
        assert de < scale * tol * 10, f"replica {r}: energy diff {de:.3e}"
    # independence: changing replica 0 leaves the others bit-identical
    vel2 = vel.copy()
    vel2[0] *= 1.5
    other = run_md(pot, ETHANOL_Z, pos, velocities=vel2, **kw)
    assert np.array_equal(other.positions[1:], batch.positions[1:])
    assert np.abs(other.positions[0] - batch.positions[0]).max() > 1e-4


def test_float32_model_with_float64_or_float32_integration():
    pot = ethanol_potential()
    vel = maxwell_boltzmann(md.masses_from_numbers(ETHANOL_Z), 300.0, seed=9)
    kw = dict(velocities=vel, n_steps=40, dtype="float32", save_every=40)
    mixed = run_md(pot, ETHANOL_Z, ETHANOL_POS, **kw)
    single = run_md(pot, ETHANOL_Z, ETHANOL_POS, integrate_in_float64=False, **kw)
    ref = run_md(pot.double(), ETHANOL_Z, ETHANOL_POS, **{**kw, "dtype": "float64"})
    for name, res in (("float64 state", mixed), ("float32 state", single)):
        err = np.abs(res.positions - ref.positions).max()
        assert err < 1e-4, f"{name}: max diff {err:.3e} A from the float64 run"
    assert not np.array_equal(mixed.positions, single.positions)


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("ensemble", ["nve", "langevin"])
def test_resume_is_exact(tmp_path, ensemble):
    pot = ethanol_potential()
    kw = dict(ensemble=ensemble, replicas=2, save_every=5, checkpoint_every=10, dtype="float64", seed=7)
    full = run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=60, out_dir=tmp_path / "full", **kw)
    run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=30, out_dir=tmp_path / "part", **kw)
    with pytest.raises(FileExistsError, match="resume"):
        run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=60, out_dir=tmp_path / "part", **kw)
    resumed = run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=60, out_dir=tmp_path / "part", resume=True, **kw)
    assert np.array_equal(full.positions, resumed.positions)
    assert np.array_equal(full.velocities, resumed.velocities)
    assert np.array_equal(full.total, resumed.total) and np.array_equal(full.steps, resumed.steps)
    traj = load_trajectory(tmp_path / "part")
    assert np.array_equal(traj["steps"], full.steps)
    assert np.array_equal(traj["positions"][-1], full.positions)
    with pytest.raises(ValueError, match="timestep_fs"):
        run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=90, out_dir=tmp_path / "part", resume=True,
               timestep_fs=0.25, **kw)  # fmt: skip


@pytest.mark.parametrize(("checkpoint_every", "chunk_steps"), [(7, [0, 10, 20, 30]), (None, [0, 30])])
def test_checkpoints_fall_on_saved_frames(tmp_path, checkpoint_every, chunk_steps):
    """checkpoint_every is rounded up to a multiple of save_every (default 100 saved frames); the first frame
    and the last step are always written."""
    pot = ethanol_potential()
    run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=30, save_every=5, checkpoint_every=checkpoint_every,
           dtype="float64", out_dir=tmp_path)  # fmt: skip
    chunks = sorted(tmp_path.glob("traj_*.npz"))
    last = []
    for path in chunks:
        with np.load(path) as f:
            last.append(int(f["steps"][-1]))
    assert last == chunk_steps, f"chunks end at steps {last}, expected {chunk_steps}"
    assert load_trajectory(tmp_path)["steps"].tolist() == list(range(0, 31, 5))


# ------------------------------------------------------------------------------------------------ blow-ups
class Explosive(torch.nn.Module):
    """Morse+LJ plus an inverted harmonic well (pushes atoms away from the centre) of per-replica strength."""

    def __init__(self, base, strength):
        super().__init__()
        self.base = base
        self.register_buffer("strength", torch.as_tensor(strength, dtype=torch.float64))
        self.nan_radius = None

    def forward(self, z, pos, batch=None, compute_forces=True):
        n = self.base.n_atoms
        b = pos.shape[0] // n
        with torch.enable_grad():
            p = pos.detach().requires_grad_(True)
            x = p.reshape(b, n, 3)
            e = self.base.energy(x) - self.strength[:b] * ((x - x.mean(1, keepdim=True)) ** 2).sum((1, 2))
            if self.nan_radius is not None:
                e = torch.where(x.norm(dim=-1).amax(-1) > self.nan_radius, torch.nan, e)
            (g,) = torch.autograd.grad(e.sum(), p)
        return {"energy": e.detach(), "forces": -g}


def test_blowup_stop_keeps_last_good_state(tmp_path):
    pot = Explosive(ethanol_potential(), [0.0, 40.0]).double()
    with pytest.raises(MDBlowUp) as info:
        run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=2000, replicas=2, save_every=5, dtype="float64",
               out_dir=tmp_path, blowup="stop")  # fmt: skip
    err = info.value
    (event,) = err.events
    assert event.replica == 1 and event.step > 0 and event.last_good_step == event.step - 5
    assert "replica 1" in str(err) and f"step {event.step}" in str(err)
    assert any(word in event.reason for word in ("bond", "energy", "non-finite")), event.reason
    res = err.result
    assert res.steps_done == event.last_good_step and res.steps[-1] == event.last_good_step
    assert np.isfinite(res.positions).all()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == event.last_good_step
    assert np.array_equal(ckpt["positions"].numpy(), res.positions)
    # resuming replays the same blow-up from the kept state, reported once
    with pytest.raises(MDBlowUp) as again:
        run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=2000, replicas=2, save_every=5, dtype="float64",
               out_dir=tmp_path, blowup="stop", resume=True)  # fmt: skip
    assert [(e.replica, e.step) for e in again.value.result.blowups] == [(1, event.step)]
    # the kept state passes the checks: bonds of replica 1 within the factor
    bonds = md.detect_bonds(ETHANOL_Z, ETHANOL_POS)
    d = np.linalg.norm(res.positions[1][bonds[:, 0]] - res.positions[1][bonds[:, 1]], axis=-1)
    d0 = np.linalg.norm(ETHANOL_POS[bonds[:, 0]] - ETHANOL_POS[bonds[:, 1]], axis=-1)
    assert (d / d0).max() <= 2.0


def test_blowup_freeze_continues_others():
    pot = Explosive(ethanol_potential(), [0.0, 2.0, 0.0]).double()
    res = run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=300, replicas=3, save_every=5, dtype="float64",
                 blowup="freeze", seed=2)  # fmt: skip
    assert [e.replica for e in res.blowups] == [1] and not res.stable and "1/3" in res.verdict
    assert res.steps_done == 300 and res.valid[:, [0, 2]].all()
    k = res.blowups[0].last_good_step
    assert res.valid[res.steps <= k, 1].all() and not res.valid[res.steps > k, 1].any()
    frozen = res.potential[res.steps >= k, 1]
    assert np.all(frozen == frozen[0]), f"the frozen replica must not move: {frozen}"
    assert np.all(res.kinetic[res.steps > k, 1] == 0)
    assert np.isfinite(res.drift.drift).all(), (
        "drift of the frozen replica uses its frames before the blow-up"
    )


def test_blowup_nonfinite_and_energy_jump():
    pot = Explosive(ethanol_potential(), [10.0]).double()
    pot.nan_radius = 2.6
    with pytest.raises(MDBlowUp, match="non-finite energy"):
        run_md(pot, ETHANOL_Z, ETHANOL_POS, n_steps=2000, save_every=2, dtype="float64",
               blowup=BlowUpConfig(bond_factor=100.0, max_energy_change=1e6))  # fmt: skip
    with pytest.raises(MDBlowUp, match="total energy changed"):
        run_md(ethanol_potential(), ETHANOL_Z, ETHANOL_POS, n_steps=20, timestep_fs=1.0, dtype="float64",
               temperature_K=600.0, blowup=BlowUpConfig(max_energy_change=1e-7))  # fmt: skip


def test_blowup_off_still_gives_the_trajectory_verdict():
    """With blowup="off" nothing stops, but a replica breaking a criterion is reported (once) as unstable."""
    pot = Explosive(ethanol_potential(), [0.0, 40.0]).double()
    kw = dict(n_steps=400, replicas=2, save_every=5, dtype="float64")
    with pytest.raises(MDBlowUp) as stop:
        run_md(pot, ETHANOL_Z, ETHANOL_POS, blowup="stop", **kw)
    (first,) = stop.value.events
    res = run_md(pot, ETHANOL_Z, ETHANOL_POS, blowup="off", **kw)
    assert res.steps_done == 400 and res.valid.all(), "off must neither stop nor freeze a replica"
    assert [(e.replica, e.step) for e in res.blowups] == [(1, first.step)], res.blowups
    assert not res.stable and res.verdict.startswith("unstable: 1/2"), res.verdict
    # a hot trajectory (about 3e6 K) is never called stable, whatever the policy
    hot = run_md(ethanol_potential(), ETHANOL_Z, ETHANOL_POS, n_steps=40, timestep_fs=0.5, dtype="float64",
                 temperature_K=3e6, blowup="off")  # fmt: skip
    assert not hot.stable, f"{hot.verdict}; T = {hot.temperature.max():.3g} K"
    quiet = run_md(ethanol_potential(), ETHANOL_Z, ETHANOL_POS, n_steps=40, dtype="float64", blowup="off")
    assert quiet.stable and quiet.verdict == "stable"


def test_summary_is_strict_json():
    """No bare NaN in the summary: undefined numbers (no steps done, no drift) become null."""
    res = run_md(ethanol_potential(), ETHANOL_Z, ETHANOL_POS, n_steps=0, dtype="float64")
    text = json.dumps(res.summary(), allow_nan=False)
    back = json.loads(text)
    assert back["ns_per_day"] is None and back["drift"]["drift_mean"] is None, text


# ------------------------------------------------------------------------------------------------ drift fit
@given(
    slope=st.floats(-1e-3, 1e-3),
    offset=st.floats(-100.0, 100.0),
    amp=st.floats(0.0, 1e-2),
    n_atoms=st.integers(1, 50),
)
def test_energy_drift_matches_polyfit(slope, offset, amp, n_atoms):
    t = np.linspace(0.0, 2000.0, 201)
    rng = np.random.default_rng(0)
    e = np.stack(
        [offset + slope * t + amp * np.sin(t / 37.0), offset - slope * t + amp * rng.standard_normal(201)], 1
    )
    r = energy_drift(t, e, n_atoms)
    for b in range(2):
        p = np.polyfit(t, e[:, b], 1)
        resid = e[:, b] - np.polyval(p, t)
        assert abs(r.drift[b] - p[0] * 1e6 / n_atoms) < 1e-6 * (1 + abs(p[0]) * 1e6)
        assert abs(r.fluctuation[b] - resid.std() * 1e3 / n_atoms) < 1e-6
    assert abs(r.drift_mean - r.drift.mean()) < 1e-12


def test_energy_drift_valid_mask_and_known_value():
    t = np.arange(0.0, 1001.0, 10.0)
    e = 0.009 * t / 1000.0  # 9 meV over 1 ps, 3 atoms -> 3 meV/atom/ps
    e_bad = e.copy()
    e_bad[60:] = 1e3
    valid = np.arange(t.size) < 60
    r = energy_drift(t, np.stack([e, e_bad], 1), 3, valid=np.stack([np.ones_like(valid), valid], 1))
    np.testing.assert_allclose(r.drift, [3.0, 3.0], rtol=1e-9)
    np.testing.assert_allclose(r.fluctuation, [0.0, 0.0], atol=1e-9)
    assert np.isnan(energy_drift(t[:1], e[:1], 3).drift[0])


# ------------------------------------------------------------------------------------------------ files, CLI
def test_plot_and_cli(tmp_path):
    from spherequant.models import md_cli

    res = run_md(ethanol_potential(), ETHANOL_Z, ETHANOL_POS, n_steps=20, replicas=2, save_every=5,
                 out_dir=tmp_path / "run")  # fmt: skip
    for src in (res, tmp_path / "run"):
        png = md.plot_energy(src, tmp_path / "e.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "cli"
    args = ["--model", "morse", "--dataset", "ethanol-gfn2-500K", "--steps", "20", "--replicas", "2",
            "--out", str(out), "--plot", "--no-progress", "--dtype", "float64"]  # fmt: skip
    assert md_cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_done"] == 20 and summary["verdict"] == "stable" and (out / "energy.png").is_file()
    assert md_cli.main([*args[:5], "40", *args[6:], "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps_done"] == 40
    assert md_cli.main([args[0], "nonexistent-model", *args[2:]]) == 2
    from spherequant.models.so3krates import So3krates

    tiny = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    torch.save({"model_config": tiny.config, "model_state": tiny.state_dict()}, tmp_path / "tiny.pt")
    assert isinstance(md_cli.load_md_model(str(tmp_path / "tiny.pt")), So3krates)


def test_cli_compile_switch(tmp_path, monkeypatch):
    """``--compile`` switches the compiled energy + forces pass on for the run only."""
    from spherequant.models import fast, md_cli

    seen = []
    real = md.run_md

    def spy(*args, **kwargs):
        seen.append(fast.compile_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(md, "run_md", spy)
    monkeypatch.setattr(fast, "_COMPILE", [False])  # as without SPHEREQUANT_COMPILE in the environment
    args = ["--model", "morse", "--dataset", "ethanol-gfn2-500K", "--steps", "4", "--no-progress"]
    assert md_cli.main([*args, "--out", str(tmp_path / "a"), "--compile"]) == 0
    assert md_cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert seen == [True, False] and fast.compile_enabled() is False
    fast._COMPILE[0] = True  # SPHEREQUANT_COMPILE=1: without the flag the environment's choice stands
    assert md_cli.main([*args, "--out", str(tmp_path / "c")]) == 0
    assert seen[-1] is True and fast.compile_enabled() is True


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(model="pot"), TypeError, "model"),
        (dict(z=[6.0, 1.0]), TypeError, "z"),
        (dict(z=[0, 1]), ValueError, "z"),
        (dict(positions=np.zeros((4, 3))), ValueError, "positions"),
        (dict(positions=np.full((9, 3), np.nan)), ValueError, "positions"),
        (dict(n_steps=-1), ValueError, "n_steps"),
        (dict(n_steps=1.5), TypeError, "n_steps"),
        (dict(timestep_fs=0.0), ValueError, "timestep_fs"),
        (dict(ensemble="nvt"), ValueError, "ensemble"),
        (dict(ensemble="langevin", friction_per_fs=0.0), ValueError, "friction_per_fs"),
        (dict(temperature_K=-1.0), ValueError, "temperature_K"),
        (dict(blowup="explode"), ValueError, "blowup"),
        (dict(blowup=3), TypeError, "blowup"),
        (dict(dtype=torch.float16), ValueError, "dtype"),
        (dict(replicas=0), ValueError, "replicas"),
        (dict(positions=np.stack([ETHANOL_POS] * 2), replicas=3), ValueError, "replicas"),
        (dict(save_every=0), ValueError, "save_every"),
        (dict(z=[6], positions=ETHANOL_POS[:1]), ValueError, "at least 2 atoms"),
        (dict(checkpoint_every=0), ValueError, "checkpoint_every"),
        (dict(remove_rotation=1), TypeError, "remove_rotation must be a bool"),
        (dict(integrate_in_float64="yes"), TypeError, "integrate_in_float64 must be a bool"),
    ],
)
def test_bad_inputs_raise(kwargs, exc, match):
    args = dict(model=ethanol_potential(), z=ETHANOL_Z, positions=ETHANOL_POS, n_steps=2)
    args.update(kwargs)
    model, z, positions = args.pop("model"), args.pop("z"), args.pop("positions")
    with pytest.raises(exc, match=match):
        run_md(model, z, positions, **args)


def test_bad_inputs_helpers():
    with pytest.raises(ValueError, match="bonds"):
        MorseLJPotential(3, [[0, 3]], [1.0])
    with pytest.raises(ValueError, match="r0"):
        MorseLJPotential(3, [[0, 1]], [-1.0])
    with pytest.raises(ValueError, match="total_energy"):
        energy_drift(np.arange(3.0), np.zeros(4), 1)
    with pytest.raises(ValueError, match="masses"):
        maxwell_boltzmann(np.array([1.0, -1.0]), 300.0)
    with pytest.raises(ValueError, match="positions"):
        maxwell_boltzmann(np.ones(3), 300.0, remove_rotation=True)
    with pytest.raises(ValueError, match="min_distance"):
        BlowUpConfig(min_distance=-1.0)
