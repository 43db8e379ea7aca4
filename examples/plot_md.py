"""
Molecular dynamics with the ASE calculator
==========================================

A force field is only useful if a trajectory run with it behaves. In the microcanonical (NVE) ensemble the
total energy :math:`E_\\text{tot} = E_\\text{pot} + E_\\text{kin}` of an exact integration is a constant, so
how much it *drifts* in a finite-timestep simulation measures two things at once: how smooth the potential is
(a force that is not the gradient of the reported energy, or an energy with kinks, heats or cools the system)
and how well the timestep resolves the fastest vibrations.

This tutorial loads the shipped FP32 azobenzene model as an ASE calculator, runs NVE with ASE's
``VelocityVerlet`` from a 300 K Maxwell-Boltzmann start, measures the drift with
:func:`spherequant.models.md.energy_drift`, then runs the same dynamics with spherequant's batched torch
engine :func:`spherequant.models.md.run_md` for several replicas at once and compares drift and speed.
"""

# %%
# The model and a starting structure
# ----------------------------------
# :meth:`~spherequant.models.calculator.SphereQuantCalculator.from_pretrained` loads a shipped checkpoint
# (energies in eV, forces in eV/Angstrom). The starting geometry is a frame of the shipped GFN2-xTB azobenzene
# trajectory, the data the model was trained on.
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from ase import Atoms, units
from ase.md.verlet import VelocityVerlet
from spherequant.models.calculator import SphereQuantCalculator
from spherequant.models.data import load_dataset
from spherequant.models.md import KB_EV_PER_K, energy_drift, maxwell_boltzmann, run_md, temperature

torch.set_num_threads(1)
QUICK = os.environ.get("SPHEREQUANT_DOCS_QUICK", "0") == "1"
N_STEPS = 200 if QUICK else 2000  # 0.1 ps / 1 ps at 0.5 fs
REPLICAS = 4 if QUICK else 6
SAVE_EVERY = 5  # record the energy every 5 steps (2.5 fs)
TIMESTEP_FS = 0.5
TEMPERATURE_K = 300.0

calc = SphereQuantCalculator.from_pretrained("azobenzene-gfn2-fp32")
frame = load_dataset("azobenzene-gfn2-500K")[0]
atoms = Atoms(numbers=frame["numbers"], positions=frame["positions"])
atoms.calc = calc
n_atoms = len(atoms)
print(f"{atoms.get_chemical_formula()}: {n_atoms} atoms, model dtype {calc.dtype}")

# %%
# Initial velocities
# ------------------
# :func:`~spherequant.models.md.maxwell_boltzmann` draws Maxwell-Boltzmann velocities (Angstrom/fs), removes
# the centre-of-mass momentum and, here, the angular momentum, and rescales to exactly 300 K. (ASE's own
# ``ase.md.velocitydistribution.thermalize_momenta`` draws the same distribution.) Drawing them once and
# handing the *same* velocities to both engines makes ASE's run and replica 0 of the batched run the same
# initial-value problem; the other replicas get their own draws. ASE measures velocity in Angstrom per ASE
# time unit, so Angstrom/fs is divided by ``ase.units.fs``.
v0 = maxwell_boltzmann(
    atoms.get_masses(),
    TEMPERATURE_K,
    replicas=REPLICAS,
    seed=0,
    positions=atoms.get_positions(),
    remove_rotation=True,
)  # (REPLICAS, n_atoms, 3), Angstrom/fs
atoms.set_velocities(v0[0] / units.fs)
dof = 3 * n_atoms - 6  # no centre-of-mass motion and no rotation
print(f"initial temperature: {float(temperature(v0[0], atoms.get_masses(), dof=dof)):.1f} K")

# %%
# NVE with ASE's velocity Verlet
# ------------------------------
# One force call per step; the total energy is recorded every ``SAVE_EVERY`` steps by an observer (the
# calculator caches the last result, so recording costs no extra model call).
dyn = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
ase_time, ase_total = [], []


def record():
    ase_time.append(dyn.get_time() / units.fs)
    ase_total.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())


dyn.attach(record, interval=SAVE_EVERY)
t0 = time.perf_counter()
dyn.run(N_STEPS)
ase_wall = time.perf_counter() - t0
ase_time, ase_total = np.array(ase_time), np.array(ase_total)
ase_drift = energy_drift(ase_time, ase_total, n_atoms)
print(f"ASE: {N_STEPS} steps in {ase_wall:.1f} s ({N_STEPS / ase_wall:.0f} steps/s)")
print(f"drift {ase_drift.drift[0]:+.3f} meV/atom/ps, fluctuation {ase_drift.fluctuation[0]:.3f} meV/atom")

# %%
# The drift
# ---------
# :func:`~spherequant.models.md.energy_drift` fits a straight line to :math:`E_\text{tot}(t)` by least
# squares and reports its slope per atom, in meV/atom/ps, together with the *fluctuation*, the standard
# deviation of the detrended total energy (meV/atom). Velocity Verlet is symplectic: with a smooth,
# conservative force field and a small enough timestep the total energy oscillates around a constant (a
# fluctuation that shrinks as :math:`\Delta t^2`) but does not wander off, so the slope is near zero. A steady
# slope means energy is being pumped in or out, e.g. by non-conservative forces or by a potential that is not
# smooth. A short run gives a noisy slope: the fit is dominated by the oscillation, so quote it together
# with the simulated time.
fig, ax = plt.subplots(figsize=(7, 3.6))
rel = (ase_total - ase_total[0]) * 1000 / n_atoms
ax.plot(ase_time / 1000, rel, lw=1.2, label="ASE VelocityVerlet")
fit = np.polyval(np.polyfit(ase_time / 1000, rel, 1), ase_time / 1000)
ax.plot(ase_time / 1000, fit, "k--", lw=1, label=f"fit: {ase_drift.drift[0]:+.3f} meV/atom/ps")
ax.set_xlabel("time (ps)")
ax.set_ylabel("E_tot - E_tot(0) (meV/atom)")
ax.legend()
fig.tight_layout()

# %%
# The batched engine
# ------------------
# :func:`~spherequant.models.md.run_md` integrates ``B`` replicas of the molecule as one batch: positions of
# shape ``(B, n, 3)`` go through the network as a single graph batch, with no Python loop over replicas. It
# keeps positions, velocities and forces in float64 (the model still runs in float32) and checks for
# blow-ups at every saved frame (non-finite values, a total-energy change above 0.5 eV/atom, a bond stretched
# beyond twice its initial length, or two atoms closer than 0.5 Angstrom). A run is *stable* when no replica
# tripped any of these checks.
res = run_md(
    calc.model,
    frame["numbers"],
    frame["positions"],
    n_steps=N_STEPS,
    timestep_fs=TIMESTEP_FS,
    velocities=v0,
    save_every=SAVE_EVERY,
)
print(f"run_md, {REPLICAS} replicas: {res.verdict}; {N_STEPS} steps in {res.wall_s:.1f} s")
print("drift per replica (meV/atom/ps):", np.array2string(res.drift.drift, precision=3, sign="+"))

# Replica 0 started from ASE's state: the same initial-value problem, so at first the two total-energy curves
# agree to the float32 resolution of the model's energy (about 1e-4 eV on a total near -1000 eV); over longer
# times chaotic dynamics amplifies such round-off differences and the trajectories separate.
assert np.allclose(res.time_fs, ase_time), "ASE and run_md should record at the same times"
early = res.time_fs <= 50.0
gap = float(np.abs(res.total[early, 0] - ase_total[early]).max() * 1000 / n_atoms)
print(f"replica 0 vs ASE, first 50 fs: max |E_tot difference| = {gap:.2e} meV/atom")
assert gap < 0.1, f"replica 0 and ASE should start on the same trajectory, got {gap:.3e} meV/atom apart"

# %%
# For the speed comparison a single replica is also run with the batched engine (a shorter run suffices).
n_speed = 100 if QUICK else 300
single = run_md(
    calc.model,
    frame["numbers"],
    frame["positions"],
    n_steps=n_speed,
    timestep_fs=TIMESTEP_FS,
    velocities=v0[0],
    save_every=SAVE_EVERY,
)

ase_verdict = "finite" if np.isfinite(ase_total).all() else "non-finite"  # ASE has no blow-up checks
rows = [
    ("ASE VelocityVerlet", 1, N_STEPS, ase_wall, ase_drift, ase_verdict),
    ("run_md", 1, n_speed, single.wall_s, single.drift, single.verdict),
    ("run_md", REPLICAS, N_STEPS, res.wall_s, res.drift, res.verdict),
]
header = f"{'engine':<19} {'replicas':>8} {'ps':>5} {'steps/s':>8} {'mol-steps/s':>12}"
header += f" {'|drift|':>8} {'fluct.':>7}  verdict"
print(header)
print("-" * len(header))
for name, b, steps, wall, drift, verdict in rows:
    ps, sps = steps * TIMESTEP_FS / 1000, steps / wall
    speed = f"{name:<19} {b:>8} {ps:>5.2f} {sps:>8.0f} {sps * b:>12.0f}"
    print(f"{speed} {drift.abs_drift_mean:>8.3f} {drift.fluctuation_mean:>7.3f}  {verdict}")

# %%
# ``ps`` is the simulated time, ``steps/s`` counts integration steps, ``mol-steps/s`` molecule-steps (steps
# times replicas); ``|drift|`` is the mean absolute drift over replicas (meV/atom/ps) and ``fluct.`` the mean
# fluctuation (meV/atom). On a CPU with one thread a single 24-atom molecule leaves the network little work
# per call, so per-step overhead weighs heavily and batching replicas raises the throughput in
# molecule-steps; batching matters most on a GPU, where one small molecule occupies a tiny fraction of the
# device. On a busy machine all timings are noisy. Compare drifts only at equal simulated time: the slope of
# a short window is dominated by the energy oscillation, which is why the short single-replica speed run
# can show a larger ``|drift|`` than the long runs.
#
# What counts as small? At 300 K the kinetic energy is about :math:`\tfrac32 k_B T \approx 39` meV per
# atom. A stable NVE run keeps the total energy within a tiny fraction of that, with no trend: here the
# fluctuation is a few hundredths of a meV/atom, and the line below converts the largest measured drift
# into the simulated time it would need to shift the total energy by 1% of the thermal kinetic energy. A
# model with non-conservative forces (for example a quantized model run with straight-through forces, see
# the quantization-aware training tutorial) or with kinks in its energy shows a steady slope or jumps
# instead, and a broken one trips the blow-up checks. (The command line ``spherequant md`` wraps
# :func:`~spherequant.models.md.run_md` with checkpoints, resume and an energy plot,
# :func:`~spherequant.models.md.plot_energy`.)
kinetic_scale = 1.5 * KB_EV_PER_K * TEMPERATURE_K * 1000  # meV/atom
worst = float(np.abs(res.drift.drift).max())
print(f"1.5 kB T = {kinetic_scale:.1f} meV/atom; largest |drift| {worst:.3f} meV/atom/ps")
one_percent_ps = 0.01 * kinetic_scale / max(worst, 1e-9)
print(f"time for that drift to change E_tot by 1% of 1.5 kB T: {one_percent_ps:.0f} ps")
assert res.stable and np.isfinite(ase_total).all(), "the FP32 model should give a stable NVE run"
fig, ax = plt.subplots(figsize=(7, 3.6))
rel = (res.total - res.total[:1]) * 1000 / n_atoms
for b in range(REPLICAS):
    ax.plot(res.time_fs / 1000, rel[:, b], lw=0.8, label=f"run_md replica {b}" if b < 3 else None)
ax.plot(ase_time / 1000, (ase_total - ase_total[0]) * 1000 / n_atoms, "k:", lw=1.5, label="ASE")
ax.set_xlabel("time (ps)")
ax.set_ylabel("E_tot - E_tot(0) (meV/atom)")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
