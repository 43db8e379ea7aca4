"""NVE stability verdict of a potential: the MD criterion used by the evaluation tables.

NVE (velocity Verlet, :func:`~spherequant.models.md.run_md`) of ``replicas`` copies of the molecule (the
tables of :mod:`spherequant.models.tables` start them from the first frames of the test split) with
Maxwell-Boltzmann velocities at ``temperature_K`` (default 300 K, seeded), ``n_steps`` steps of
``timestep_fs`` (default 2000 x 0.5 fs = 1 ps), all replicas in one batch. Blow-up events are those of
:class:`~spherequant.models.md.BlowUpConfig` (non-finite state, total energy moved by more than 0.5 eV/atom,
a bond stretched beyond twice its length, two atoms closer than 0.5 Angstrom), checked every ``save_every``
steps. The drift of a replica is the slope of a least-squares line through its total energy versus time
(meV/atom/ps, :func:`~spherequant.models.md.energy_drift`); the reported ``drift`` is the replica drift of
largest magnitude. Verdict:

``"exploded"``
    a blow-up event occurred (``exploded_at_ps`` is the time of the first one);
``"drifting"``
    no blow-up, but ``|drift| > drift_threshold`` (default 1 meV/atom/ps);
``"stable"``
    no blow-up and ``|drift| <= drift_threshold``;
``"undetermined"``
    fewer than two energy records (no drift estimate).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from spherequant._validation import check_real

from .md import BlowUpConfig, MDBlowUp, run_md

__all__ = ["STABILITY_CRITERION", "stability_check"]

STABILITY_CRITERION = (
    "NVE (velocity Verlet) from the first test frames with seeded Maxwell-Boltzmann velocities; 'exploded' "
    "if a blow-up event occurs (non-finite state, total energy change > 0.5 eV/atom, a bond beyond 2x its "
    "initial length, or two atoms closer than 0.5 A); otherwise 'drifting' if the largest per-replica "
    "|drift| of the total energy (least-squares slope) exceeds the threshold, else 'stable'."
)


def stability_check(
    model: torch.nn.Module,
    z,
    positions,
    *,
    n_steps: int = 2000,
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    seed: int = 0,
    drift_threshold: float = 1.0,
    save_every: int = 10,
    blowup=None,
    device=None,
    dtype=None,
) -> dict:
    """NVE stability verdict of a potential: ``"stable"``, ``"drifting"`` or ``"exploded"`` (see above).

    Parameters
    ----------
    model : torch.nn.Module
        Potential with the So3krates call signature (see :mod:`spherequant.models.md`); moved to
        ``device`` / ``dtype`` in place.
    z : sequence of int, shape (n,)
        Atomic numbers.
    positions : array of shape (n, 3) or (B, n, 3), Angstrom
        Starting structures, one per replica.
    n_steps : int
        Velocity-Verlet steps (>= 1).
    timestep_fs : float
        Timestep (fs).
    temperature_K : float
        Temperature of the Maxwell-Boltzmann initial velocities (K).
    seed : int
        Seed of the initial velocities.
    drift_threshold : float
        Largest ``|drift|`` (meV/atom/ps) of a stable run (>= 0).
    save_every : int
        Steps between energy records and blow-up checks.
    blowup : BlowUpConfig, optional
        Blow-up criteria (default ``BlowUpConfig(mode="stop")``: the run ends at the first event).
    device, dtype
        Passed to :func:`~spherequant.models.md.run_md`.

    Notes
    -----
    The drift is a least-squares slope, meaningful only for runs much longer than the period of the
    total-energy fluctuations of velocity Verlet (a few fs to tens of fs for bond vibrations): over a few
    tens of fs the oscillation itself reads as a slope. Use the default 1 ps or longer for verdicts.

    Returns
    -------
    dict
        ``verdict``; ``drift`` (meV/atom/ps, the replica drift of largest magnitude, over the frames before
        any blow-up), ``drift_mean``, ``fluctuation`` (meV/atom), ``simulated_ps`` (time reached, last good
        state), ``exploded_at_ps`` (None unless exploded), ``reason``, ``replicas``, ``n_steps``,
        ``timestep_fs``, ``temperature_K``, ``drift_threshold``, ``wall_s``.

    Examples
    --------
    >>> from spherequant.models.md import MorseLJPotential
    >>> z = [8, 1, 1]
    >>> pos = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    >>> pot = MorseLJPotential.from_molecule(z, pos)
    >>> stability_check(pot, z, pos, n_steps=400, timestep_fs=0.1, dtype="float64")["verdict"]
    'stable'
    """
    drift_threshold = check_real(drift_threshold, "drift_threshold", minimum=0.0)
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    n_steps = int(n_steps)
    blowup = BlowUpConfig(mode="stop") if blowup is None else blowup
    if not isinstance(blowup, BlowUpConfig) or blowup.mode == "off":
        raise ValueError("blowup must be a BlowUpConfig with mode 'stop' or 'freeze'")
    try:
        res = run_md(
            model,
            z,
            positions,
            n_steps=n_steps,
            timestep_fs=timestep_fs,
            ensemble="nve",
            temperature_K=temperature_K,
            seed=seed,
            save_every=save_every,
            save_positions=False,
            blowup=blowup,
            device=device,
            dtype=dtype,
        )
    except MDBlowUp as err:
        res = err.result
    return _verdict(res, n_steps, timestep_fs, temperature_K, drift_threshold)


def _verdict(res, n_steps: int, timestep_fs: float, temperature_K: float, drift_threshold: float) -> dict:
    """The verdict row of :func:`stability_check` from an MD result (blow-ups first, then the drift)."""
    drift = res.drift.drift if res.drift is not None else np.full(1, np.nan)
    finite = np.isfinite(drift)
    worst = float(drift[finite][np.abs(drift[finite]).argmax()]) if finite.any() else float("nan")
    out = {
        "verdict": "stable",
        "drift": worst,
        "drift_mean": res.drift.drift_mean if res.drift is not None else float("nan"),
        "fluctuation": res.drift.fluctuation_mean if res.drift is not None else float("nan"),
        "simulated_ps": res.steps_done * res.timestep_fs / 1000.0,
        "exploded_at_ps": None,
        "reason": "",
        "replicas": int(res.total.shape[1]),
        "n_steps": int(n_steps),
        "timestep_fs": float(timestep_fs),
        "temperature_K": float(temperature_K),
        "drift_threshold": float(drift_threshold),
        "wall_s": res.wall_s,
    }
    if res.blowups:
        first = min(res.blowups, key=lambda e: e.time_fs)
        out.update(verdict="exploded", exploded_at_ps=first.time_fs / 1000.0, reason=first.message())
    elif not math.isfinite(worst):
        out.update(verdict="undetermined", reason="fewer than two energy records: no drift estimate")
    elif abs(worst) > drift_threshold:
        out.update(
            verdict="drifting",
            reason=f"|drift| {abs(worst):.3g} > {drift_threshold:g} meV/atom/ps without a blow-up",
        )
    else:
        out["reason"] = f"no blow-up; |drift| {abs(worst):.3g} <= {drift_threshold:g} meV/atom/ps"
    return out
