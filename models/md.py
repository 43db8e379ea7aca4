"""Molecular dynamics of many replicas of one molecule as one batch: NVE and Langevin NVT, drift, blow-ups.

Units: positions in Angstrom, time in fs, velocities in Angstrom/fs, masses in amu, energies in eV, forces in
eV/Angstrom, temperatures in K. Kinetic energy is ``0.5 * m * v**2 * EV_PER_AMU_A2_FS2`` with
``EV_PER_AMU_A2_FS2 = 1 amu * (1 Angstrom / 1 fs)**2 in eV ~= 103.6427`` computed from CODATA 2018 constants.

A *potential* is any ``torch.nn.Module`` called as ``model(z, pos, batch)`` (the
:class:`~spherequant.models.so3krates.So3krates` signature) returning ``{"energy": (B,), "forces": (N, 3)}``
in eV and eV/Angstrom. The ``B`` replicas of an ``n``-atom molecule are stacked as ``pos`` of shape
``(B, n, 3)`` and handed to the potential flattened to ``(B * n, 3)`` with a batch vector; there is no Python
loop over replicas. :class:`MorseLJPotential` is a small analytic potential with exact autograd forces, for
tests.

Integrators (one force evaluation per step, ``dt`` the timestep):

* ``"nve"``: velocity Verlet ``v += dt/2 a; x += dt v; a = F(x)/m; v += dt/2 a``.
* ``"langevin"``: BAOAB (Leimkuhler & Matthews 2013): ``B`` half kick, ``A`` half drift,
  ``O`` exact Ornstein-Uhlenbeck update ``v = c1 v + sqrt(1 - c1**2) sqrt(kB T / m) xi`` with
  ``c1 = exp(-friction * dt)`` followed by removal of the centre-of-mass velocity, ``A`` half drift,
  ``B`` half kick. The noise comes from a seeded ``torch.Generator`` saved in checkpoints, so runs are
  reproducible and resumable exactly. NVE replicas evolve exactly as single runs with the same initial
  state; Langevin replicas get independent noise from the one generator, which therefore differs from the
  noise a single run with the same seed would see.

Degrees of freedom for the temperature: ``3n - 3`` (the centre-of-mass momentum is removed from the initial
velocities and, in Langevin, after every O step), minus the rotational degrees of freedom (3, or 2 for a
linear molecule) in NVE when ``remove_rotation=True`` (angular momentum is then zero and conserved).

Blow-up checks run only at save steps (every ``save_every`` steps), so the step itself has no host
synchronisation: non-finite positions / velocities / forces / energies, a total-energy change per atom above a
threshold, a bond (detected from covalent radii in the first replica's initial structure) stretched beyond a
factor of its initial length, or two atoms closer than a minimum distance.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spherequant._report import atomic_write, json_safe
from spherequant._validation import check_int

from .units import AMU_KG, ELEMENTARY_CHARGE_C, EV_PER_AMU_A2_FS2, KB_EV_PER_K  # re-exported for md users

__all__ = [
    "AMU_KG",
    "ELEMENTARY_CHARGE_C",
    "EV_PER_AMU_A2_FS2",
    "KB_EV_PER_K",
    "BlowUpConfig",
    "BlowUpEvent",
    "DriftResult",
    "MDBlowUp",
    "MDResult",
    "MorseLJPotential",
    "detect_bonds",
    "energy_drift",
    "kinetic_energy",
    "load_trajectory",
    "masses_from_numbers",
    "maxwell_boltzmann",
    "plot_energy",
    "run_md",
    "temperature",
]


_CHECKPOINT = "checkpoint.pt"
_CHUNK = "traj_{:05d}.npz"


# ----------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------
def _real(name, value, *, minimum=None, strict=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def _numbers(z) -> np.ndarray:
    arr = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"z must be a non-empty 1-d sequence of atomic numbers, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"z must hold integers (atomic numbers), got dtype {arr.dtype}")
    if arr.min() < 1 or arr.max() > 118:
        raise ValueError(f"z must hold atomic numbers in [1, 118], got {arr.tolist()}")
    return arr.astype(np.int64)


def _coords(x, name: str, n: int) -> np.ndarray:
    """Return ``x`` as float64 numpy of shape (B, n, 3) (a (n, 3) array gets B = 1)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (n, 3):
        raise ValueError(f"{name} must have shape ({n}, 3) or (B, {n}, 3) to match z, got {np.shape(x)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


# ----------------------------------------------------------------------------------------------------------
# masses, kinetic energy, temperature, initial velocities
# ----------------------------------------------------------------------------------------------------------
def masses_from_numbers(z) -> np.ndarray:
    """Atomic masses (amu) of atomic numbers ``z``, from ASE's table (``ase.data.atomic_masses``).

    Parameters
    ----------
    z : sequence of int, shape (n,)

    Returns
    -------
    numpy.ndarray of shape (n,), float64, amu

    Examples
    --------
    >>> masses_from_numbers([1, 6, 8]).round(2).tolist()
    [1.01, 12.01, 16.0]
    """
    from ase.data import atomic_masses

    return np.asarray(atomic_masses, dtype=np.float64)[_numbers(z)]


def kinetic_energy(velocities, masses):
    """Kinetic energy (eV) per replica: ``0.5 * sum m v**2 * EV_PER_AMU_A2_FS2``.

    Parameters
    ----------
    velocities : array or tensor of shape (..., n, 3), Angstrom/fs
    masses : array or tensor of shape (n,), amu

    Returns
    -------
    array or tensor of shape (...,), eV (same kind as ``velocities``)

    Examples
    --------
    >>> round(float(kinetic_energy(np.ones((1, 3)), np.ones(1))) / EV_PER_AMU_A2_FS2, 9)
    1.5
    """
    if isinstance(velocities, torch.Tensor):
        m = torch.as_tensor(masses, dtype=velocities.dtype, device=velocities.device)
        return 0.5 * EV_PER_AMU_A2_FS2 * (m[:, None] * velocities**2).sum(dim=(-1, -2))
    v = np.asarray(velocities, dtype=np.float64)
    return 0.5 * EV_PER_AMU_A2_FS2 * (np.asarray(masses, dtype=np.float64)[:, None] * v**2).sum(axis=(-1, -2))


def temperature(velocities, masses, dof: int | None = None):
    """Instantaneous temperature (K): ``2 * kinetic_energy / (dof * KB_EV_PER_K)``.

    Parameters
    ----------
    velocities : array or tensor of shape (..., n, 3), Angstrom/fs
    masses : array of shape (n,), amu
    dof : int, optional
        Degrees of freedom (default ``3n - 3``: centre-of-mass momentum removed).

    Examples
    --------
    >>> v = maxwell_boltzmann(np.array([12.0, 16.0, 1.0]), 300.0, seed=0)
    >>> round(float(temperature(v, np.array([12.0, 16.0, 1.0]))), 6)
    300.0
    """
    n = np.shape(masses)[0]
    dof = 3 * n - 3 if dof is None else check_int(dof, "dof", minimum=1)
    return 2.0 * kinetic_energy(velocities, masses) / (dof * KB_EV_PER_K)


def _rotational_dof(pos: np.ndarray, masses: np.ndarray) -> int:
    """Rank of the inertia tensor of ``pos`` (n, 3): 3, 2 for a linear molecule, 0 for one atom."""
    r = pos - (masses[:, None] * pos).sum(0) / masses.sum()
    inertia = (masses * (r**2).sum(1)).sum() * np.eye(3) - np.einsum("i,ij,ik->jk", masses, r, r)
    ev = np.linalg.eigvalsh(inertia)
    return int((ev > 1e-8 * max(ev.max(), 1e-300)).sum())


def _remove_com(v: np.ndarray, masses: np.ndarray) -> np.ndarray:
    p = (masses[:, None] * v).sum(-2, keepdims=True)
    return v - p / masses.sum()


def _remove_rotation(v: np.ndarray, pos: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Remove the rigid rotation (angular momentum about the COM) from ``v`` (B, n, 3)."""
    com = (masses[:, None] * pos).sum(-2, keepdims=True) / masses.sum()
    r = pos - com
    ang = (masses[:, None] * np.cross(r, v)).sum(-2)  # (B, 3)
    rr = (r**2).sum(-1)
    inertia = (masses * rr).sum(-1)[:, None, None] * np.eye(3) - np.einsum("i,bij,bik->bjk", masses, r, r)
    omega = np.einsum("bjk,bk->bj", np.linalg.pinv(inertia, rcond=1e-10), ang)
    return v - np.cross(omega[:, None, :], r)


def maxwell_boltzmann(
    masses, temperature_K, *, replicas: int | None = None, seed=0, positions=None, remove_rotation=False
) -> np.ndarray:
    """Maxwell-Boltzmann velocities (Angstrom/fs) at exactly ``temperature_K``.

    Draws ``v ~ N(0, kB T / m)`` per component, removes the centre-of-mass momentum (and, with
    ``remove_rotation``, the angular momentum about the centre of mass, which needs ``positions``), then
    rescales so that :func:`temperature` with ``dof = 3n - 3`` (``3n - 3 - rotational dof`` with
    ``remove_rotation``) equals ``temperature_K``.

    Parameters
    ----------
    masses : array of shape (n,), amu
    temperature_K : float, >= 0
    replicas : int, optional
        Return shape (replicas, n, 3) instead of (n, 3).
    seed : int or numpy.random.Generator
    positions : array of shape (n, 3) or (replicas, n, 3), optional
    remove_rotation : bool

    Returns
    -------
    numpy.ndarray of shape (n, 3) or (replicas, n, 3)

    Examples
    --------
    >>> v = maxwell_boltzmann(np.array([1.0, 1.0]), 100.0, seed=1)
    >>> bool(np.abs(v.sum(0)).max() < 1e-12)
    True
    """
    m = np.asarray(masses, dtype=np.float64)
    if m.ndim != 1 or m.size < 2 or not (np.isfinite(m).all() and (m > 0).all()):
        raise ValueError(f"masses must be a 1-d array of >= 2 positive finite values, got {m!r}")
    t = _real("temperature_K", temperature_K, minimum=0.0)
    b = 1 if replicas is None else check_int(replicas, "replicas", minimum=1)
    n = m.size
    gen = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    v = gen.standard_normal((b, n, 3)) * np.sqrt(KB_EV_PER_K * max(t, 1.0) / (m * EV_PER_AMU_A2_FS2))[:, None]
    v = _remove_com(v, m)
    dof = 3 * n - 3
    if remove_rotation:
        if positions is None:
            raise ValueError("remove_rotation=True needs positions")
        pos = np.broadcast_to(_coords(positions, "positions", n), (b, n, 3))
        v = _remove_rotation(v, pos, m)
        v = _remove_com(v, m)
        dof -= _rotational_dof(pos[0], m)
    current = 2.0 * kinetic_energy(v, m) / (dof * KB_EV_PER_K)
    v = v * np.sqrt(t / current)[:, None, None]
    return v[0] if replicas is None else v


# ----------------------------------------------------------------------------------------------------------
# analytic reference potential
# ----------------------------------------------------------------------------------------------------------
def detect_bonds(z, positions, scale: float = 1.2) -> np.ndarray:
    """Bonded pairs ``i < j`` with distance below ``scale * (r_cov[z_i] + r_cov[z_j])`` (ASE covalent radii).

    Parameters
    ----------
    z : sequence of int, shape (n,)
    positions : array of shape (n, 3), Angstrom
    scale : float
        Tolerance factor on the sum of covalent radii.

    Returns
    -------
    numpy.ndarray of shape (M, 2), int64

    Examples
    --------
    >>> detect_bonds([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]).tolist()
    [[0, 1], [0, 2]]
    """
    from ase.data import covalent_radii

    zz = _numbers(z)
    pos = _coords(positions, "positions", zz.size)[0]
    scale = _real("scale", scale, minimum=0.0, strict=True)
    rc = np.asarray(covalent_radii)[zz]
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    i, j = np.triu_indices(zz.size, k=1)
    keep = d[i, j] < scale * (rc[i] + rc[j])
    return np.stack([i[keep], j[keep]], axis=1).astype(np.int64)


class MorseLJPotential(nn.Module):
    """Morse bonds plus Lennard-Jones between non-bonded pairs, for ``B`` replicas of one ``n``-atom molecule.

    ``E = sum_bonds D (1 - exp(-a (r - r0)))**2 + sum_nonbonded 4 eps ((s / r)**12 - (s / r)**6)``
    per replica (eV); forces ``-dE/dpos`` by autograd (exact). Follows the So3krates call signature.

    Parameters
    ----------
    n_atoms : int
        Atoms per molecule; inputs must hold whole molecules, replica after replica.
    bonds : array of shape (M, 2), int
        Bonded pairs (indices within the molecule).
    r0 : array of shape (M,)
        Equilibrium bond lengths (Angstrom).
    depth : float
        Morse well depth D (eV).
    width : float
        Morse parameter a (1/Angstrom).
    lj_epsilon : float
        LJ well depth (eV); 0 switches LJ off.
    lj_sigma : float
        LJ length (Angstrom).

    Examples
    --------
    >>> z = [8, 1, 1]
    >>> pos = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], dtype=torch.float64)
    >>> pot = MorseLJPotential.from_molecule(z, pos).double()
    >>> out = pot(torch.tensor(z), pos)
    >>> out["energy"].shape, out["forces"].shape
    (torch.Size([1]), torch.Size([3, 3]))
    """

    def __init__(self, n_atoms, bonds, r0, depth=4.0, width=2.0, lj_epsilon=0.01, lj_sigma=2.0):
        super().__init__()
        self.n_atoms = check_int(n_atoms, "n_atoms", minimum=1)
        b = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        if b.size and (b.min() < 0 or b.max() >= n_atoms or (b[:, 0] == b[:, 1]).any()):
            raise ValueError(f"bonds must be pairs of distinct indices in [0, {n_atoms}), got {b.tolist()}")
        r0 = np.asarray(r0, dtype=np.float64).reshape(-1)
        if r0.shape[0] != b.shape[0] or not (np.isfinite(r0).all() and (r0 > 0).all()):
            raise ValueError(f"r0 must hold {b.shape[0]} positive finite lengths, got {r0.tolist()}")
        self.depth = _real("depth", depth, minimum=0.0)
        self.width = _real("width", width, minimum=0.0, strict=True)
        self.lj_epsilon = _real("lj_epsilon", lj_epsilon, minimum=0.0)
        self.lj_sigma = _real("lj_sigma", lj_sigma, minimum=0.0, strict=True)
        bonded = np.zeros((n_atoms, n_atoms), dtype=bool)
        bonded[b[:, 0], b[:, 1]] = bonded[b[:, 1], b[:, 0]] = True
        i, j = np.triu_indices(n_atoms, k=1)
        nb = ~bonded[i, j]
        self.register_buffer("bonds", torch.as_tensor(b))
        self.register_buffer("r0", torch.as_tensor(r0, dtype=torch.float32))
        self.register_buffer("pairs", torch.as_tensor(np.stack([i[nb], j[nb]]), dtype=torch.long))

    @classmethod
    def from_molecule(cls, z, positions, bond_scale: float = 1.2, **kwargs) -> MorseLJPotential:
        """Potential with the bonds of ``positions`` (n, 3) (:func:`detect_bonds`), ``r0`` their lengths."""
        zz = _numbers(z)
        pos = _coords(positions, "positions", zz.size)[0]
        bonds = detect_bonds(zz, pos, bond_scale)
        r0 = np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=-1)
        return cls(zz.size, bonds, r0, **kwargs)

    def energy(self, pos: torch.Tensor) -> torch.Tensor:
        """Energies (B,) in eV of positions (B, n, 3)."""
        rb = torch.linalg.vector_norm(pos[:, self.bonds[:, 0]] - pos[:, self.bonds[:, 1]], dim=-1)
        e = (self.depth * (1.0 - torch.exp(-self.width * (rb - self.r0))) ** 2).sum(-1)
        if self.lj_epsilon > 0 and self.pairs.shape[1]:
            rp = torch.linalg.vector_norm(pos[:, self.pairs[0]] - pos[:, self.pairs[1]], dim=-1)
            s6 = (self.lj_sigma / rp) ** 6
            e = e + (4.0 * self.lj_epsilon * (s6 * s6 - s6)).sum(-1)
        return e

    def forward(self, z, pos, batch=None, *, compute_forces: bool = True, num_graphs: int | None = None):
        """``{"energy": (B,), "forces": (N, 3)}`` for ``pos`` (N, 3) with ``N = B * n_atoms``."""
        if not isinstance(pos, torch.Tensor) or pos.ndim != 2 or pos.shape[-1] != 3:
            raise ValueError("pos must be a tensor of shape (N, 3)")
        if pos.shape[0] % self.n_atoms or pos.shape[0] == 0:
            raise ValueError(
                f"pos has {pos.shape[0]} atoms, not a positive multiple of n_atoms={self.n_atoms}"
            )
        if not isinstance(z, torch.Tensor) or z.shape != pos.shape[:1]:
            raise ValueError(f"z must be a tensor of shape ({pos.shape[0]},)")
        b = pos.shape[0] // self.n_atoms
        create_graph = pos.requires_grad
        with torch.set_grad_enabled(compute_forces or torch.is_grad_enabled()):
            p = pos if pos.requires_grad or not compute_forces else pos.detach().requires_grad_(True)
            energy = self.energy(p.reshape(b, self.n_atoms, 3))
            out = {"energy": energy}
            if compute_forces:
                (grad,) = torch.autograd.grad(energy.sum(), p, create_graph=create_graph)
                out["forces"] = -grad
                if not create_graph:
                    out["energy"] = energy.detach()
        return out


# ----------------------------------------------------------------------------------------------------------
# drift
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DriftResult:
    """Energy drift and fluctuation of total energies.

    Attributes
    ----------
    drift : numpy.ndarray of shape (B,)
        Slope of the least-squares line through total energy vs time, meV/atom/ps (NaN if < 2 frames).
    fluctuation : numpy.ndarray of shape (B,)
        Standard deviation of the detrended total energy, meV/atom.
    drift_mean, abs_drift_mean, fluctuation_mean : float
        Means over replicas with a defined drift.
    """

    drift: np.ndarray
    fluctuation: np.ndarray
    drift_mean: float
    abs_drift_mean: float
    fluctuation_mean: float

    def to_dict(self) -> dict:
        return {
            "drift_meV_per_atom_per_ps": self.drift.tolist(),
            "fluctuation_meV_per_atom": self.fluctuation.tolist(),
            "drift_mean": self.drift_mean,
            "abs_drift_mean": self.abs_drift_mean,
            "fluctuation_mean": self.fluctuation_mean,
        }


def energy_drift(time_fs, total_energy, n_atoms: int, valid=None) -> DriftResult:
    """Drift (meV/atom/ps) and fluctuation (meV/atom) of total energies from a linear least-squares fit.

    Parameters
    ----------
    time_fs : array of shape (S,), fs
    total_energy : array of shape (S,) or (S, B), eV
    n_atoms : int
    valid : bool array of shape (S,) or (S, B), optional
        Frames to use per replica (e.g. those before a blow-up).

    Returns
    -------
    DriftResult

    Examples
    --------
    >>> t = np.arange(0.0, 1001.0, 10.0)          # 1 ps
    >>> r = energy_drift(t, 0.002 * t / 1000.0, n_atoms=2)   # +2 meV over 1 ps, 2 atoms
    >>> round(float(r.drift[0]), 6), round(float(r.fluctuation[0]), 6)
    (1.0, 0.0)
    """
    t = np.asarray(time_fs, dtype=np.float64)
    e = np.asarray(total_energy, dtype=np.float64)
    n_atoms = check_int(n_atoms, "n_atoms", minimum=1)
    if t.ndim != 1:
        raise ValueError(f"time_fs must be 1-d, got shape {t.shape}")
    if e.ndim == 1:
        e = e[:, None]
    if e.ndim != 2 or e.shape[0] != t.shape[0]:
        raise ValueError(f"total_energy must have shape ({t.shape[0]},) or ({t.shape[0]}, B), got {e.shape}")
    mask = np.ones(e.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if mask.ndim == 1:
        mask = mask[:, None]
    mask = np.broadcast_to(mask, e.shape) & np.isfinite(e) & np.isfinite(t)[:, None]
    drift = np.full(e.shape[1], np.nan)
    fluct = np.full(e.shape[1], np.nan)
    for b in range(e.shape[1]):
        m = mask[:, b]
        if m.sum() < 2 or np.ptp(t[m]) == 0:
            continue
        tc = t[m] - t[m].mean()
        ec = e[m, b] - e[m, b].mean()
        slope = (tc * ec).sum() / (tc * tc).sum()  # eV/fs
        drift[b] = slope * 1e6 / n_atoms  # meV/ps
        fluct[b] = (ec - slope * tc).std() * 1e3 / n_atoms
    ok = np.isfinite(drift)
    mean = lambda x: float(x[ok].mean()) if ok.any() else float("nan")  # noqa: E731
    return DriftResult(drift, fluct, mean(drift), mean(np.abs(drift)), mean(fluct))


# ----------------------------------------------------------------------------------------------------------
# blow-up detection
# ----------------------------------------------------------------------------------------------------------
@dataclass
class BlowUpConfig:
    """Blow-up criteria, checked at every save step.

    Attributes
    ----------
    mode : {"stop", "freeze", "off"}
        ``"stop"``: restore the last good state, write it as checkpoint and raise :class:`MDBlowUp`;
        ``"freeze"``: put the blown-up replica back to its last good state, stop moving it and continue the
        others; ``"off"``: never intervene. The criteria are checked at every saved frame in every mode, so
        the verdict of :class:`MDResult` comes from the trajectory, not from the stopping policy: with
        ``"off"`` a replica that breaks a criterion keeps running and is reported (its first violation) as a
        blow-up.
    max_energy_change : float
        Largest allowed ``|E_tot - E_tot(0)| / n`` (eV/atom).
    bond_factor : float
        Largest allowed ratio of a bond's length to its initial length.
    min_distance : float
        Smallest allowed distance between any two atoms (Angstrom).
    bond_scale : float
        Covalent-radius factor used to find the bonds (see :func:`detect_bonds`).
    """

    mode: str = "stop"
    max_energy_change: float = 0.5
    bond_factor: float = 2.0
    min_distance: float = 0.5
    bond_scale: float = 1.2

    def __post_init__(self):
        if self.mode not in ("stop", "freeze", "off"):
            raise ValueError(f"blowup mode must be 'stop', 'freeze' or 'off', got {self.mode!r}")
        _real("max_energy_change", self.max_energy_change, minimum=0.0, strict=True)
        _real("bond_factor", self.bond_factor, minimum=1.0, strict=True)
        _real("min_distance", self.min_distance, minimum=0.0)
        _real("bond_scale", self.bond_scale, minimum=0.0, strict=True)


@dataclass
class BlowUpEvent:
    """One replica's blow-up: which replica, at which step and time, and why; ``last_good_step`` is kept."""

    replica: int
    step: int
    time_fs: float
    reason: str
    last_good_step: int

    def message(self) -> str:
        return (
            f"replica {self.replica} blew up at step {self.step} (t = {self.time_fs / 1000:.4f} ps): "
            f"{self.reason}; last good state at step {self.last_good_step}"
        )


@dataclass
class MDResult:
    """Outcome of :func:`run_md`.

    Attributes
    ----------
    steps : numpy.ndarray of shape (S,), int
        Saved steps.
    time_fs : numpy.ndarray of shape (S,)
    potential, kinetic, total : numpy.ndarray of shape (S, B), eV
    temperature : numpy.ndarray of shape (S, B), K
    valid : numpy.ndarray of shape (S, B), bool
        False for frames of a replica after it blew up (frozen).
    drift : DriftResult
        From the valid frames.
    blowups : list of BlowUpEvent
    positions, velocities : numpy.ndarray of shape (B, n, 3)
        Final (last good) state.
    n_atoms, dof : int
    steps_done : int
        Last step reached.
    wall_s : float
        Wall time of this call.
    ns_per_day : float
        Simulated ns per wall-clock day in this call.
    out_dir : pathlib.Path or None
    """

    steps: np.ndarray
    time_fs: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    total: np.ndarray
    temperature: np.ndarray
    valid: np.ndarray
    drift: DriftResult
    blowups: list = field(default_factory=list)
    positions: np.ndarray | None = None
    velocities: np.ndarray | None = None
    n_atoms: int = 0
    dof: int = 0
    steps_done: int = 0
    timestep_fs: float = 0.0
    wall_s: float = 0.0
    ns_per_day: float = float("nan")
    out_dir: Path | None = None

    @property
    def stable(self) -> bool:
        """True when no replica broke a blow-up criterion at a saved frame (whatever the blow-up mode)."""
        return not self.blowups

    @property
    def verdict(self) -> str:
        """``"stable"`` or ``"unstable: k/B replicas blew up (first at t ps)"``."""
        if self.stable:
            return "stable"
        first = min(e.time_fs for e in self.blowups) / 1000
        return (
            f"unstable: {len(self.blowups)}/{self.total.shape[1]} replicas blew up (first at {first:.4f} ps)"
        )

    def summary(self) -> dict:
        """JSON-ready summary (lengths, drift, verdict, blow-ups, speed); undefined numbers are ``None``."""
        return json_safe(
            {
                "steps_done": self.steps_done,
                "timestep_fs": self.timestep_fs,
                "simulated_ps": self.steps_done * self.timestep_fs / 1000,
                "replicas": int(self.total.shape[1]),
                "n_atoms": self.n_atoms,
                "dof": self.dof,
                "verdict": self.verdict,
                "drift": self.drift.to_dict(),
                "mean_temperature_K": float(np.nanmean(np.where(self.valid, self.temperature, np.nan))),
                "blowups": [asdict(e) for e in self.blowups],
                "wall_s": self.wall_s,
                "ns_per_day": self.ns_per_day,
            }
        )


class MDBlowUp(RuntimeError):
    """Raised in blow-up mode ``"stop"``: ``.events`` (BlowUpEvent list), ``.result`` (run so far)."""

    def __init__(self, events, result):
        super().__init__("; ".join(e.message() for e in events))
        self.events = events
        self.result = result


# ----------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------
def load_trajectory(out_dir, positions: bool = True) -> dict[str, np.ndarray]:
    """Concatenate the trajectory chunks ``traj_*.npz`` of ``out_dir`` covered by its checkpoint.

    Returns
    -------
    dict
        ``steps`` (S,), ``time_fs`` (S,), ``potential``, ``kinetic``, ``total``, ``temperature``, ``valid``
        (S, B), and ``positions`` (S, B, n, 3) Angstrom when saved and ``positions=True``.
    """
    out_dir = Path(out_dir)
    ckpt = out_dir / _CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(f"no {_CHECKPOINT} in {str(out_dir)!r}")
    n_chunks = torch.load(ckpt, map_location="cpu", weights_only=True)["n_chunks"]
    parts: dict[str, list] = {}
    for k in range(n_chunks):
        with np.load(out_dir / _CHUNK.format(k)) as f:
            for key in f.files:
                if key != "config" and (key != "positions" or positions):
                    parts.setdefault(key, []).append(f[key])
    return {k: np.concatenate(v) for k, v in parts.items()}


def plot_energy(result, path, *, relative: bool = True) -> Path:
    """PNG of total energy vs time per replica (meV/atom relative to t = 0 when ``relative``).

    Parameters
    ----------
    result : MDResult or path-like
        A result, or an output folder of :func:`run_md`.
    path : path-like
        Where to write the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(result, MDResult):
        t, e, valid, n = result.time_fs, result.total, result.valid, result.n_atoms
    else:
        d = load_trajectory(result, positions=False)
        t, e, valid = d["time_fs"], d["total"], d["valid"]
        n = int(json.loads(str(np.load(Path(result) / _CHUNK.format(0))["config"]))["n_atoms"])
    e = np.where(valid, e, np.nan)
    y = (e - e[:1]) * 1000 / n if relative else e
    fig, ax = plt.subplots(figsize=(7, 4))
    for b in range(y.shape[1]):
        ax.plot(t / 1000, y[:, b], lw=0.8, label=f"replica {b}" if y.shape[1] <= 8 else None)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E_tot - E_tot(0) (meV/atom)" if relative else "E_tot (eV)")
    if y.shape[1] <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# engine
# ----------------------------------------------------------------------------------------------------------
class _Engine:
    """State and one-step updates of B replicas; all tensors (B, n, 3) / (B,)."""

    def __init__(self, model, z, masses, cfg, device, dtype, model_dtype):
        self.model = model
        self.cfg = cfg
        self.b, self.n = cfg["replicas"], len(z)
        self.dtype, self.device, self.model_dtype = dtype, device, model_dtype
        self.z_flat = torch.as_tensor(z, device=device).repeat(self.b)
        self.batch = torch.arange(self.b, device=device).repeat_interleave(self.n)
        self.masses = torch.as_tensor(masses, dtype=dtype, device=device)
        params = inspect.signature(model.forward).parameters
        self.kw = {"num_graphs": self.b} if "num_graphs" in params else {}
        self.dt = cfg["timestep_fs"]
        self.set_active(torch.ones(self.b, dtype=dtype, device=device))
        if cfg["ensemble"] == "langevin":
            self.c1 = math.exp(-cfg["friction_per_fs"] * self.dt)
            self.c2 = math.sqrt(1.0 - self.c1**2)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg["seed"])

    def set_active(self, active):
        self.active = active
        m = self.masses[None, :, None]
        self.inv_m = active[:, None, None] / (m * EV_PER_AMU_A2_FS2)
        kt = KB_EV_PER_K * self.cfg.get("temperature_K", 0.0)
        self.sigma = active[:, None, None] * torch.sqrt(kt / (m * EV_PER_AMU_A2_FS2))

    def forces(self, x):
        with torch.no_grad():
            out = self.model(self.z_flat, x.reshape(-1, 3).to(self.model_dtype), self.batch, **self.kw)
        return out["forces"].detach().reshape(self.b, self.n, 3).to(self.dtype), out["energy"].detach().to(
            self.dtype
        )

    def step(self, x, v, f):
        h = 0.5 * self.dt
        v = v + h * f * self.inv_m
        if self.cfg["ensemble"] == "nve":
            x = x + self.dt * v
        else:
            x = x + h * v
            noise = torch.randn(x.shape, generator=self.gen, device=self.device, dtype=self.dtype)
            v = self.c1 * v + self.c2 * self.sigma * noise
            m = self.masses[None, :, None]
            v = v - (m * v).sum(1, keepdim=True) / m.sum()
            x = x + h * v
        f, e = self.forces(x)
        v = v + h * f * self.inv_m
        return x, v, f, e

    def kinetic(self, v):
        return 0.5 * EV_PER_AMU_A2_FS2 * (self.masses[None, :, None] * v * v).sum((1, 2))


def _resolve_dtype(dtype, model):
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        if dtype is None:
            dtype = next((b.dtype for b in model.buffers() if b.is_floating_point()), torch.float64)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (or their names), got {dtype!r}")
    return dtype


def _check_state(x, v, f, e, e0, bond_idx, bond0, cfg: BlowUpConfig, n):
    """Return a list (B,) of reasons (None when fine) for the blow-up criteria."""
    b = x.shape[0]
    finite = {
        "positions": torch.isfinite(x).all(dim=(1, 2)),
        "velocities": torch.isfinite(v).all(dim=(1, 2)),
        "forces": torch.isfinite(f).all(dim=(1, 2)),
        "energy": torch.isfinite(e),
    }
    de = ((e - e0).abs() / n).cpu().numpy()
    d = torch.linalg.vector_norm(x[:, :, None] - x[:, None], dim=-1)
    iu = torch.triu_indices(n, n, 1, device=x.device)
    dmin = d[:, iu[0], iu[1]].amin(-1).cpu().numpy() if n > 1 else np.full(b, np.inf)
    if bond_idx.shape[1]:
        ratio = (d[:, bond_idx[0], bond_idx[1]] / bond0).cpu().numpy()
    else:
        ratio = np.ones((b, 1))
    finite = {k: t.cpu().numpy() for k, t in finite.items()}
    reasons = []
    for r in range(b):
        bad = [k for k, ok in finite.items() if not ok[r]]
        if bad:
            reasons.append("non-finite " + ", ".join(bad))
        elif de[r] > cfg.max_energy_change:
            reasons.append(
                f"total energy changed by {de[r]:.4g} eV/atom (> {cfg.max_energy_change} eV/atom) since t = 0"
            )
        elif ratio[r].max() > cfg.bond_factor:
            k = int(ratio[r].argmax())
            i, j = int(bond_idx[0, k]), int(bond_idx[1, k])
            reasons.append(
                f"bond {i}-{j} stretched to {ratio[r, k]:.3g} x its initial length (> {cfg.bond_factor})"
            )
        elif dmin[r] < cfg.min_distance:
            reasons.append(f"two atoms at {dmin[r]:.3g} A (< min_distance {cfg.min_distance} A)")
        else:
            reasons.append(None)
    return reasons


def run_md(
    model: nn.Module,
    z,
    positions,
    *,
    n_steps: int,
    timestep_fs: float = 0.5,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    friction_per_fs: float = 0.01,
    replicas: int | None = None,
    velocities=None,
    remove_rotation: bool = False,
    seed: int = 0,
    save_every: int = 10,
    checkpoint_every: int | None = None,
    save_positions: bool = True,
    out_dir=None,
    resume: bool = False,
    device=None,
    dtype=None,
    integrate_in_float64: bool = True,
    blowup: str | BlowUpConfig = "stop",
    progress: bool = False,
) -> MDResult:
    """NVE (velocity Verlet) or Langevin (BAOAB) dynamics of ``replicas`` copies of a molecule as one batch.

    Parameters
    ----------
    model : torch.nn.Module
        Potential ``model(z, pos, batch) -> {"energy": (B,), "forces": (N, 3)}`` (eV, eV/Angstrom); it is
        moved to ``device`` and ``dtype`` in place.
    z : sequence of int, shape (n,)
        Atomic numbers (masses from :func:`masses_from_numbers`).
    positions : array or tensor of shape (n, 3) or (replicas, n, 3)
        Initial positions (Angstrom); one structure is copied to every replica.
    n_steps : int
        Total number of steps (with ``resume``, the run continues from the checkpoint up to ``n_steps``).
    timestep_fs : float
        Timestep (fs).
    ensemble : {"nve", "langevin"}
    temperature_K : float
        Temperature of the initial velocities and of the Langevin bath (K).
    friction_per_fs : float
        Langevin friction (1/fs), e.g. 0.01 = 10/ps.
    replicas : int, optional
        Number of replicas B (default: from ``positions`` / ``velocities``, else 1).
    velocities : array of shape (n, 3) or (B, n, 3), optional
        Initial velocities (Angstrom/fs), used as given; default Maxwell-Boltzmann at ``temperature_K``
        (:func:`maxwell_boltzmann` with a numpy generator seeded by ``seed``).
    remove_rotation : bool
        Remove the initial angular momentum (then dof is ``3n - 6`` in NVE).
    seed : int
        Seed of the initial velocities and of the Langevin noise (torch Generator).
    save_every : int
        Steps between saved frames; blow-up checks and progress updates happen at saved frames only.
    checkpoint_every : int, optional
        Steps between checkpoint + trajectory chunk writes (default ``100 * save_every``); rounded up to a
        multiple of ``save_every``. Also written at the end and on a blow-up.
    save_positions : bool
        Store positions in the trajectory chunks.
    out_dir : path-like, optional
        Folder for ``checkpoint.pt`` and ``traj_XXXXX.npz`` (written atomically); None writes nothing.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` exactly (starts fresh if there is none). Without ``resume`` an
        existing checkpoint raises ``FileExistsError``.
    device : str or torch.device, optional
        Default: the model's device.
    dtype : torch.dtype or {"float32", "float64"}, optional
        Dtype the model runs in (default: the model's floating dtype).
    integrate_in_float64 : bool
        Keep positions, velocities and forces in float64 whatever ``dtype`` (positions are cast to ``dtype``
        for each force call); avoids float32 round-off in the integration of long runs. False integrates in
        ``dtype``.
    blowup : {"stop", "freeze", "off"} or BlowUpConfig
        What happens when a replica breaks a blow-up criterion (see :class:`BlowUpConfig`); the criteria
        are checked at every saved frame in every mode, and the verdict reports them.
    progress : bool
        tqdm progress bar on stderr with ns/day.

    Returns
    -------
    MDResult

    Raises
    ------
    MDBlowUp
        In blow-up mode ``"stop"``, after writing the last good state (``.result`` holds the run so far).

    Examples
    --------
    >>> z = [8, 1, 1]
    >>> pos = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    >>> pot = MorseLJPotential.from_molecule(z, pos)
    >>> res = run_md(pot, z, pos, n_steps=20, replicas=2, dtype="float64", temperature_K=100.0)
    >>> res.total.shape, res.verdict
    ((3, 2), 'stable')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    zz, pos0, vel0, replicas, n_steps = _structure(z, positions, velocities, replicas, n_steps)
    blowup = _blowup_config(blowup)
    _check_flags(remove_rotation=remove_rotation, integrate_in_float64=integrate_in_float64)
    model_dtype = _resolve_dtype(dtype, model)
    state_dtype = torch.float64 if integrate_in_float64 else model_dtype
    masses = masses_from_numbers(zz)
    cfg = _run_config(
        zz, pos0, masses, replicas, timestep_fs, ensemble, temperature_K, friction_per_fs, seed, save_every,
        model_dtype, state_dtype, remove_rotation, blowup,
    )  # fmt: skip
    checkpoint_every = _checkpoint_interval(checkpoint_every, cfg["save_every"])
    device = _place_model(model, device, model_dtype)
    eng = _Engine(model, zz, masses, cfg, device, state_dtype, model_dtype)
    traj = _Trajectory(out_dir, cfg, save_positions=save_positions)
    bonds = torch.as_tensor(detect_bonds(zz, pos0[0], blowup.bond_scale).T.copy(), device=device)
    from ._quant_state import quantized_energy_report

    with quantized_energy_report(model, False):  # a quantized model's extra report pass: unused here
        run = _start_run(eng, traj, pos0, vel0, masses, bonds, remove_rotation, resume)
        return _integrate(eng, traj, run, bonds, blowup, n_steps, checkpoint_every, progress)


# ----------------------------------------------------------------------------------------------------------
# run_md, step by step
# ----------------------------------------------------------------------------------------------------------
def _structure(z, positions, velocities, replicas, n_steps):
    """Validated ``(z (n,), positions (B, n, 3), velocities (n, 3) / (B, n, 3) or None, B, n_steps)``."""
    zz = _numbers(z)
    n = zz.size
    if n < 2:
        raise ValueError(f"z must have at least 2 atoms for dynamics, got {n}")
    pos0 = _coords(positions, "positions", n)
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    vel0 = None if velocities is None else _coords(velocities, "velocities", n)
    replicas = _replica_count(replicas, pos0, vel0)
    return zz, np.broadcast_to(pos0, (replicas, n, 3)).copy(), vel0, replicas, n_steps


def _check_flags(**flags) -> None:
    """TypeError naming the first of ``flags`` that is not a bool."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def _checkpoint_interval(checkpoint_every, save_every: int) -> int:
    """Steps between checkpoints (default ``100 * save_every``), a multiple of ``save_every`` (rounded up)."""
    if checkpoint_every is None:
        return 100 * save_every
    every = check_int(checkpoint_every, "checkpoint_every", minimum=1)
    return -(-every // save_every) * save_every


def _place_model(model: nn.Module, device, model_dtype) -> torch.device:
    """Move ``model`` in place to ``device`` (default: where its parameters are) and ``model_dtype``."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model.to(device=device, dtype=model_dtype)
    return device


def _start_run(eng, traj, pos0, vel0, masses, bonds, remove_rotation: bool, resume: bool) -> _RunState:
    """The run state from ``traj``'s checkpoint, or a fresh one whose first frame is recorded and written."""
    ckpt = traj.open(resume)
    if ckpt is not None:
        return _RunState.from_checkpoint(ckpt, eng, dtype=eng.dtype, device=eng.device)
    run = _fresh_run(eng, pos0, vel0, masses, bonds, traj.cfg, remove_rotation)
    traj.record(run.now, eng)
    traj.write(run, eng)
    return run


def _replica_count(replicas, pos0: np.ndarray, vel0: np.ndarray | None) -> int:
    """Number of replicas B: as given, else from positions / velocities (one structure fits any B)."""
    sizes = {pos0.shape[0], 1 if vel0 is None else vel0.shape[0]} - {1}
    if replicas is None:
        replicas = sizes.pop() if sizes else 1
    replicas = check_int(replicas, "replicas", minimum=1)
    if sizes - {replicas}:
        raise ValueError(f"positions/velocities hold {sorted(sizes)} replicas but replicas={replicas}")
    return replicas


def _blowup_config(blowup) -> BlowUpConfig:
    if isinstance(blowup, str):
        blowup = BlowUpConfig(mode=blowup)
    if not isinstance(blowup, BlowUpConfig):
        raise TypeError(
            f"blowup must be 'stop', 'freeze', 'off' or a BlowUpConfig, got {type(blowup).__name__}"
        )
    return blowup


def _run_config(
    z, pos0, masses, replicas, timestep_fs, ensemble, temperature_K, friction_per_fs, seed, save_every,
    model_dtype, state_dtype, remove_rotation, blowup,
) -> dict:  # fmt: skip
    """The validated settings of a run, JSON-ready; stored with every checkpoint and trajectory chunk."""
    dt = _real("timestep_fs", timestep_fs, minimum=0.0, strict=True)
    if ensemble not in ("nve", "langevin"):
        raise ValueError(f"ensemble must be 'nve' or 'langevin', got {ensemble!r}")
    temp = _real("temperature_K", temperature_K, minimum=0.0)
    gamma = _real("friction_per_fs", friction_per_fs, minimum=0.0)
    if ensemble == "langevin" and gamma == 0:
        raise ValueError("friction_per_fs must be > 0 for ensemble='langevin'")
    n = len(z)
    dof = 3 * n - 3 - (_rotational_dof(pos0[0], masses) if remove_rotation and ensemble == "nve" else 0)
    if dof < 1:
        raise ValueError(f"{n} atoms leave no degrees of freedom")
    return dict(
        z=z.tolist(),
        n_atoms=n,
        replicas=replicas,
        timestep_fs=dt,
        ensemble=ensemble,
        temperature_K=temp,
        friction_per_fs=gamma,
        seed=check_int(seed, "seed", minimum=0),
        save_every=check_int(save_every, "save_every", minimum=1),
        dtype=str(model_dtype).replace("torch.", ""),
        state_dtype=str(state_dtype).replace("torch.", ""),
        remove_rotation=remove_rotation,
        dof=dof,
        blowup=asdict(blowup),
    )


@dataclass
class _Snapshot:
    """One consistent point of the integration: (B, n, 3) positions, velocities, forces; (B,) energies."""

    x: torch.Tensor
    v: torch.Tensor
    f: torch.Tensor
    e: torch.Tensor
    step: int
    rng_state: torch.Tensor

    def copy(self) -> _Snapshot:
        return _Snapshot(self.x.clone(), self.v.clone(), self.f.clone(), self.e.clone(), self.step,
                         self.rng_state.clone())  # fmt: skip


@dataclass
class _RunState:
    """Everything a resume needs: the current and last good snapshots, references and blow-up events."""

    now: _Snapshot
    last_good: _Snapshot
    e0: torch.Tensor  # (B,) initial total energy, eV
    bond0: torch.Tensor  # (B, n_bonds) initial bond lengths, Angstrom
    events: list
    start_step: int

    @classmethod
    def from_checkpoint(cls, ckpt: dict, eng: _Engine, *, dtype, device) -> _RunState:
        tt = dict(dtype=dtype, device=device)
        eng.gen.set_state(ckpt["rng_state"])
        eng.set_active(ckpt["active"].to(**tt))
        now = _Snapshot(*(ckpt[k].to(**tt) for k in ("positions", "velocities", "forces", "energy")),
                        int(ckpt["step"]), eng.gen.get_state())  # fmt: skip
        events = [BlowUpEvent(**d) for d in ckpt["events"]]
        return cls(now, now.copy(), ckpt["e0"].to(**tt), ckpt["bond0"].to(**tt), events, now.step)


def _fresh_run(eng: _Engine, pos0, vel0, masses, bonds, cfg, remove_rotation) -> _RunState:
    """Initial state: positions as given, velocities as given or Maxwell-Boltzmann (seeded), forces."""
    tt = dict(dtype=eng.dtype, device=eng.device)
    x = torch.as_tensor(pos0, **tt)
    if vel0 is None:
        v_np = maxwell_boltzmann(masses, cfg["temperature_K"], replicas=cfg["replicas"], seed=cfg["seed"],
                                 positions=pos0, remove_rotation=remove_rotation)  # fmt: skip
    else:
        v_np = np.broadcast_to(vel0, (cfg["replicas"], cfg["n_atoms"], 3))
    v = torch.as_tensor(np.array(v_np), **tt)
    f, e = eng.forces(x)
    now = _Snapshot(x, v, f, e, 0, eng.gen.get_state())
    bond0 = torch.linalg.vector_norm(x[:, bonds[0]] - x[:, bonds[1]], dim=-1)
    return _RunState(now, now.copy(), e + eng.kinetic(v), bond0, [], 0)


class _Trajectory:
    """Saved frames: kept in memory for the result and, with an ``out_dir``, written as atomic chunks
    ``traj_XXXXX.npz`` plus ``checkpoint.pt`` (the chunks a checkpoint covers are the trajectory)."""

    _KEYS = ("steps", "time_fs", "potential", "kinetic", "total", "temperature", "valid")

    def __init__(self, out_dir, cfg: dict, *, save_positions: bool):
        self.out = None if out_dir is None else Path(out_dir)
        self.cfg = cfg
        self.save_positions = save_positions
        self.hist: dict[str, list] = {k: [] for k in self._KEYS}
        self.pending: dict[str, list] = {}
        self.n_chunks = 0

    def open(self, resume: bool) -> dict | None:
        """The checkpoint to resume from (checked against this run's settings), or None for a fresh run."""
        path = None if self.out is None else self.out / _CHECKPOINT
        if path is None or not path.is_file():
            return None
        if not resume:
            raise FileExistsError(f"{str(path)!r} exists; pass resume=True or use another out_dir")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        old = dict(ckpt["config"])
        for key, value in self.cfg.items():
            if key != "blowup" and old.get(key) != value:
                raise ValueError(f"resume: {key} = {value!r} differs from the checkpoint's {old.get(key)!r}")
        self.n_chunks = int(ckpt["n_chunks"])
        for k in range(self.n_chunks):
            with np.load(self.out / _CHUNK.format(k)) as fz:
                for key in self.hist:
                    self.hist[key].extend(list(fz[key]))
        for stale in self.out.glob("traj_*.npz"):  # chunks written after the checkpoint
            if int(stale.stem.split("_")[1]) >= self.n_chunks:
                stale.unlink()
        return ckpt

    def record(self, snap: _Snapshot, eng: _Engine) -> None:
        kin = eng.kinetic(snap.v)
        row = {
            "steps": np.int64(snap.step),
            "time_fs": np.float64(snap.step * self.cfg["timestep_fs"]),
            "potential": snap.e.double().cpu().numpy(),
            "kinetic": kin.double().cpu().numpy(),
            "total": (snap.e + kin).double().cpu().numpy(),
            "temperature": (2 * kin / (self.cfg["dof"] * KB_EV_PER_K)).double().cpu().numpy(),
            "valid": (eng.active > 0).cpu().numpy(),
        }
        for k, val in row.items():
            self.hist[k].append(val)
            self.pending.setdefault(k, []).append(val)
        if self.save_positions:
            np_dtype = np.float32 if self.cfg["dtype"] == "float32" else np.float64
            self.pending.setdefault("positions", []).append(snap.x.cpu().numpy().astype(np_dtype))

    def write(self, run: _RunState, eng: _Engine) -> None:
        """Flush the pending frames as one chunk, then the checkpoint of ``run.now`` (both atomic)."""
        if self.out is None:
            return
        if self.pending:
            arrays = {k: np.stack(val) for k, val in self.pending.items()}
            arrays["config"] = np.array(json.dumps(self.cfg))
            atomic_write(self.out / _CHUNK.format(self.n_chunks), lambda fh: np.savez(fh, **arrays))
            self.n_chunks += 1
            self.pending.clear()
        snap = run.now
        state = {
            "config": self.cfg,
            "positions": snap.x.cpu(),
            "velocities": snap.v.cpu(),
            "forces": snap.f.cpu(),
            "energy": snap.e.cpu(),
            "e0": run.e0.cpu(),
            "bond0": run.bond0.cpu(),
            "step": snap.step,
            "rng_state": eng.gen.get_state(),
            "active": eng.active.cpu(),
            "events": [asdict(ev) for ev in run.events],
            "n_chunks": self.n_chunks,
        }
        atomic_write(self.out / _CHECKPOINT, lambda fh: torch.save(state, fh))

    def result(self, run: _RunState, wall: float) -> MDResult:
        replicas, dt = self.cfg["replicas"], self.cfg["timestep_fs"]
        arr = {k: np.stack(val) if val else np.zeros((0, replicas)) for k, val in self.hist.items()}
        for k in ("steps", "time_fs"):
            arr[k] = np.asarray(self.hist[k]).reshape(-1)
        n, step = self.cfg["n_atoms"], run.now.step
        done = step - run.start_step
        return MDResult(
            steps=arr["steps"],
            time_fs=arr["time_fs"],
            potential=arr["potential"],
            kinetic=arr["kinetic"],
            total=arr["total"],
            temperature=arr["temperature"],
            valid=arr["valid"].astype(bool),
            drift=energy_drift(arr["time_fs"], arr["total"], n, arr["valid"]) if arr["total"].size else None,
            blowups=list(run.events),
            positions=run.now.x.double().cpu().numpy(),
            velocities=run.now.v.double().cpu().numpy(),
            n_atoms=n,
            dof=self.cfg["dof"],
            steps_done=step,
            timestep_fs=dt,
            wall_s=wall,
            ns_per_day=(done * dt * 1e-6) / (wall / 86400) if wall > 0 and done else float("nan"),
            out_dir=self.out,
        )


def _apply_blowup_policy(eng, traj, run: _RunState, new: list, mode: str, t_start: float) -> None:
    """React to new blow-up events: record them ("off"), freeze their replicas ("freeze") or stop ("stop")."""
    if mode == "stop":
        # the checkpoint is the last good state, from which a resume would replay the blow-up
        run.now = run.last_good.copy()
        eng.gen.set_state(run.now.rng_state)
        traj.write(run, eng)
        run.events.extend(new)
        raise MDBlowUp(new, traj.result(run, time.perf_counter() - t_start))
    run.events.extend(new)
    if mode == "off":
        return
    good, now = run.last_good, run.now
    bad = torch.zeros(eng.b, dtype=torch.bool, device=eng.device)
    bad[[ev.replica for ev in new]] = True
    mask = bad[:, None, None]
    now.x = torch.where(mask, good.x, now.x)
    now.v = torch.where(mask, torch.zeros_like(now.v), now.v)
    now.f = torch.where(mask, good.f, now.f)
    now.e = torch.where(bad, good.e, now.e)
    eng.set_active(eng.active * (~bad).to(eng.dtype))


def _new_blowups(eng, run: _RunState, bonds, blowup: BlowUpConfig, n: int, dt: float) -> list:
    """Blow-up events of ``run.now``: active replicas, not reported before, that break a criterion.

    The criteria are checked in every mode (the verdict comes from the trajectory); the mode only decides what
    happens next. A replica is reported once: frozen replicas stop moving, and with "off" only the first
    violation of a replica that keeps running is recorded.
    """
    now = run.now
    reasons = _check_state(now.x, now.v, now.f, now.e + eng.kinetic(now.v), run.e0, bonds, run.bond0,
                           blowup, n)  # fmt: skip
    flagged = {ev.replica for ev in run.events}
    return [
        BlowUpEvent(r, now.step, now.step * dt, why, run.last_good.step)
        for r, why in enumerate(reasons)
        if why is not None and eng.active[r] > 0 and r not in flagged
    ]


def _integrate(eng, traj, run: _RunState, bonds, blowup: BlowUpConfig, n_steps, checkpoint_every, progress):
    """Step to ``n_steps``; at saved frames check the criteria, apply the policy, record, checkpoint."""
    cfg, n, dt = traj.cfg, traj.cfg["n_atoms"], traj.cfg["timestep_fs"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, initial=run.now.step, file=sys.stderr, unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    try:
        while run.now.step < n_steps:
            now = run.now
            now.x, now.v, now.f, now.e = eng.step(now.x, now.v, now.f)
            now.step += 1
            if now.step % cfg["save_every"] and now.step != n_steps:
                continue
            new = _new_blowups(eng, run, bonds, blowup, n, dt)
            if new:
                _apply_blowup_policy(eng, traj, run, new, blowup.mode, t_start)
            now = run.now
            now.rng_state = eng.gen.get_state()
            traj.record(now, eng)
            run.last_good = now.copy()
            any_active = bool((eng.active > 0).any())
            if now.step % checkpoint_every == 0 or now.step == n_steps or not any_active:
                traj.write(run, eng)
            if bar is not None:
                wall = time.perf_counter() - t_start
                bar.update(now.step - bar.n)
                if wall > 0:
                    bar.set_postfix(ns_day=f"{(now.step - run.start_step) * dt * 1e-6 / (wall / 86400):.3g}")
            if not any_active:
                break
    finally:
        if bar is not None:
            bar.close()
    if traj.out is not None and (traj.pending or run.now.step == run.start_step):
        traj.write(run, eng)
    return traj.result(run, time.perf_counter() - t_start)
