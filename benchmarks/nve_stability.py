"""NVE stability at length of the quantization study's models (issue 16): >= 100 ps each, both force modes.

For every model of the main table (the FP32 parents, the finetuned control, the QAT rows, the naive INT8
PTQ run of ``azobenzene_naive_int8.yaml``) that exists, and for quantized models in both force modes
(``ste``: the straight-through forces of training; ``smooth``: the conservative forces of the
weight-quantized network), it runs NVE (velocity Verlet, 0.5 fs, Maxwell-Boltzmann velocities at 300 K,
seeded) of ``--replicas`` independent copies of the first test frame in one batch
(:func:`spherequant.models.md.run_md`), saving total energies (no positions) every 10 fs into
``benchmarks/runs/nve/<run>/``; a checkpoint is written every 1 ps, so a killed run continues with
``--resume`` semantics (the script resumes by itself) and loses at most 1 ps. The energy + forces pass is
compiled (``--no-compile`` to skip the few minutes this costs once per process). In the smooth mode the
model runs as :func:`spherequant.models.gaq.smooth_float_model`, the same network (quantized weights, no
activation rounding) as plain float modules, which the fast path's written-out forces serve about 2x faster
than the quantization-aware modules (the two agree to float round-off; runs resumed across the change, from
session 10 on, differ from uninterrupted ones only by that round-off).

Drift of a replica: slope of the least-squares line through its total energy vs time (meV/atom/ps). With
several replicas (independent) the reported uncertainty of the mean drift is the standard error over
replicas (``std / sqrt(R)``); with one (the default: on the 2-core CPU two replicas in a batch cost 2.3x one
and four 5x, so 18 quantized runs of 100 ps need one) it is the fit uncertainty of the slope through the
trajectory's 1 ps block means (:func:`block_slope_stderr`); ``max_abs_drift`` is the worst replica. A
blow-up (non-finite state, energy jump > 0.5 eV/atom, broken bond, atoms closer than 0.5 A) ends a run
with the verdict ``unstable`` and the criterion it broke in the row's ``blowup``.

Writes ``benchmarks/results/nve_stability.json`` after every run (rows, and for each a total-energy trace
downsampled to <= 400 points per replica for the Results page's plot).

Usage::

    python benchmarks/nve_stability.py --list
    python benchmarks/nve_stability.py --ps 100                          # every model that exists
    python benchmarks/nve_stability.py --ps 100 --only "GAQ W4A8 (FP32 attention kept)"
    # 1 ns: a larger --ps extends a finished stable run from its folder (its row is then replaced)
    python benchmarks/nve_stability.py --ps 1000 --only "FP32 parent (So3krates attention)"
    python benchmarks/nve_stability.py --ps 1000 --modes smooth --only "GAQ W4A8 (FP32 attention kept)"
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs" / "nve"
OUT = ROOT / "benchmarks" / "results" / "nve_stability.json"
TIMESTEP_FS, TEMPERATURE_K, SAVE_EVERY, TRACE_POINTS = 0.5, 300.0, 20, 400
BLOCK_PS = 1.0  # window of the block means behind a single trajectory's drift uncertainty


def study_models(root: Path = ROOT) -> list[tuple[str, str]]:
    """(row name, config file or pretrained name) of every model of the main table, in table order; the naive
    INT8 PTQ row is the study's ``azobenzene_naive_int8.yaml`` run (its calibrated checkpoint)."""
    from spherequant.models.tables import TABLE_ROWS

    out = []
    for row in TABLE_ROWS["quantization"]:
        if row.force_mode is not None:  # the same checkpoint as another row, other force mode
            continue
        if row.ptq:
            out.append((row.name, "azobenzene_naive_int8.yaml"))
        else:
            out.append((row.name, str(row.config) if row.config is not None else str(row.checkpoint)))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def resolve(source: str, root: Path = ROOT, name: str = "model") -> Path:
    """Checkpoint of a config (its ``output_dir/best.pt``) or a pretrained name; FileNotFoundError if none."""
    from spherequant.models.tables import TableRow

    row = TableRow(name, config=source) if source.endswith(".yaml") else TableRow(name, checkpoint=source)
    return row.resolve(root)


def block_slope_stderr(time_ps, energy, block_ps: float = 1.0) -> float | None:
    """Standard error of the drift (the least-squares slope of ``energy`` vs ``time_ps``) of one trajectory.

    The energies are averaged over consecutive windows of ``block_ps`` (far longer than the few-fs period
    of the total energy's integration error oscillation, so the block means' residuals are close to
    independent) and the textbook standard error of the slope of the block means,
    ``sqrt(sum r^2 / (B - 2) / sum (t_b - t_mean)^2)``, is returned; None with fewer than 3 full blocks or
    non-finite energies. Units: those of ``energy`` per ps.
    """
    t, e = np.asarray(time_ps, dtype=np.float64), np.asarray(energy, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"time_ps and energy must be 1-D of one length, got {t.shape} and {e.shape}")
    if not np.isfinite(e).all() or t.size < 2:
        return None
    per = max(1, round(block_ps / max(float(np.median(np.diff(t))), 1e-300)))
    n_blocks = t.size // per
    if n_blocks < 3:
        return None
    tb = t[: n_blocks * per].reshape(n_blocks, per).mean(1)
    eb = e[: n_blocks * per].reshape(n_blocks, per).mean(1)
    slope, icept = np.polyfit(tb, eb, 1)
    resid = eb - (slope * tb + icept)
    return float(math.sqrt(float(resid @ resid) / (n_blocks - 2) / float(((tb - tb.mean()) ** 2).sum())))


def drift_stats(drift: list[float], block_stderr: float | None = None) -> dict:
    """Mean drift, its standard error and the worst replica (meV/atom/ps).

    With two or more replicas the standard error is taken over the independent replicas
    (``stderr_method = "replicas"``); with one, it is ``block_stderr``, the fit uncertainty of that replica's
    slope from :func:`block_slope_stderr` (``"blocks"``)."""
    d = np.asarray([x for x in drift if x is not None and math.isfinite(x)], dtype=np.float64)
    if d.size == 0:
        return {"drift_mean": None, "drift_stderr": None, "max_abs_drift": None, "stderr_method": None}
    if d.size > 1:
        stderr, method = float(d.std(ddof=1) / math.sqrt(d.size)), "replicas"
    else:
        stderr, method = block_stderr, None if block_stderr is None else "blocks"
    return {"drift_mean": float(d.mean()), "drift_stderr": stderr, "max_abs_drift": float(np.abs(d).max()),
            "stderr_method": method}  # fmt: skip


def energy_trace(out_dir: Path, n_atoms: int) -> dict:
    """Total energy minus its first value (meV/atom) per replica, at <= TRACE_POINTS times (ps)."""
    from spherequant.models.md import load_trajectory

    traj = load_trajectory(out_dir, positions=False)
    t, e, valid = traj["time_fs"], traj["total"], traj["valid"]
    pick = np.unique(np.linspace(0, len(t) - 1, min(TRACE_POINTS, len(t))).round().astype(int))
    rel = np.where(valid, (e - e[:1]) * 1000.0 / n_atoms, np.nan)[pick]
    return {
        "time_ps": (t[pick] / 1000.0).round(4).tolist(),
        "energy_meV_per_atom": [
            [None if not math.isfinite(v) else round(float(v), 5) for v in col] for col in rel.T
        ],
    }


def run_one(name: str, path: Path, mode: str | None, ps: float, replicas: int, progress: bool) -> dict:
    """One NVE run of the checkpoint ``path`` (resumed when its folder holds a checkpoint); its JSON row."""
    import torch
    from spherequant.models import checkpoints, gaq
    from spherequant.models.evaluation import checkpoint_test_data
    from spherequant.models.md import MDBlowUp, run_md

    out_dir = RUNS / f"{_slug(name)}{'' if mode is None else '-' + mode}"
    n_steps = round(ps * 1000.0 / TIMESTEP_FS)
    _, ds, split = checkpoint_test_data(str(path))
    frame = ds[int(split.test[0])]
    model = checkpoints.load_model(path, force_mode=mode)
    if mode == "smooth":  # the same network as plain float modules: the fast written-out forces (~2x)
        model = gaq.smooth_float_model(model)
    z = torch.as_tensor(frame["numbers"])
    pos = torch.as_tensor(frame["positions"], dtype=torch.float64)
    t0 = time.time()
    try:
        result = run_md(
            model,
            z,
            pos,
            n_steps=n_steps,
            timestep_fs=TIMESTEP_FS,
            ensemble="nve",
            temperature_K=TEMPERATURE_K,
            replicas=replicas,
            seed=0,
            save_every=SAVE_EVERY,
            checkpoint_every=2000,
            save_positions=False,
            out_dir=out_dir,
            resume=(out_dir / "checkpoint.pt").is_file(),
            blowup="stop",
            progress=progress,
        )
    except MDBlowUp as err:
        result = err.result
    summary = result.summary()
    drift = summary["drift"]["drift_meV_per_atom_per_ps"]
    block_se = None
    if len(drift) == 1:
        from spherequant.models.md import load_trajectory

        traj = load_trajectory(out_dir, positions=False)
        ok = traj["valid"][:, 0]
        block_se = block_slope_stderr(
            traj["time_fs"][ok] / 1000.0, traj["total"][ok, 0] * 1000.0 / summary["n_atoms"], BLOCK_PS
        )
    row = {
        "name": name,
        "force_mode": mode,
        "checkpoint": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "simulated_ps": summary["simulated_ps"],
        "target_ps": ps,
        "replicas": summary["replicas"],
        "verdict": summary["verdict"],
        "blowup": _blowup_text(summary["blowups"]),
        **drift_stats(drift, block_se),
        "fluctuation_mean": summary["drift"]["fluctuation_mean"],
        "drift_per_replica": summary["drift"]["drift_meV_per_atom_per_ps"],
        "mean_temperature_K": summary["mean_temperature_K"],
        "wall_s_this_call": time.time() - t0,
        "run_dir": str(out_dir.relative_to(ROOT)),
        "trace": energy_trace(out_dir, summary["n_atoms"]),
    }
    return row


def _blowup_text(blowups: list[dict]) -> str | None:
    """Why the first replica to blow up did (``run_md``'s reason), or None for a stable run."""
    if not blowups:
        return None
    first = min(blowups, key=lambda e: e["time_fs"])
    return f"replica {first['replica']} at {first['time_fs'] / 1000:.4f} ps: {first['reason']}"


def _drift_text(row: dict) -> str:
    if row["drift_mean"] is None:
        return "no drift estimate"
    err = "" if row["drift_stderr"] is None else f" +- {row['drift_stderr']:.2g}"
    return f"drift {row['drift_mean']:.3g}{err} meV/atom/ps (worst replica {row['max_abs_drift']:.3g})"


def _table_order(rows: list[dict]) -> list[dict]:
    """``rows`` sorted by their model's place in the main table, then FP32 / smooth / ste."""
    names = [name for name, _ in study_models()]
    modes = [None, "smooth", "ste"]

    def position(row):
        place = names.index(row["name"]) if row["name"] in names else len(names)
        return place, modes.index(row["force_mode"]) if row["force_mode"] in modes else len(modes)

    return sorted(rows, key=position)


def _write(rows: list[dict], out: Path) -> None:
    from spherequant._report import atomic_write_text

    data = {
        "command": "python benchmarks/nve_stability.py",
        "protocol": f"NVE, velocity Verlet, {TIMESTEP_FS} fs, {TEMPERATURE_K:g} K Maxwell-Boltzmann start "
        "(seed 0) from the first test frame; drift = least-squares slope of each replica's total energy; "
        "stderr = standard error of the mean over the independent replicas (stderr_method 'replicas') or, "
        f"for one replica, the fit uncertainty of the slope through its {BLOCK_PS:g} ps block means "
        "('blocks')",
        "units": {"drift": "meV/atom/ps", "fluctuation": "meV/atom", "time": "ps"},
        "rows": _table_order(rows),
    }
    atomic_write_text(out, json.dumps(data, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ps", type=float, default=100.0, help="simulated time per run (default 100 ps)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="independent replicas per run (default 1: on the CPU two replicas cost 2.3x one, four 5x; the "
        "drift's uncertainty of one replica is its block fit uncertainty)",
    )
    parser.add_argument("--only", action="append", metavar="ROW", help="only these table rows (repeatable)")
    parser.add_argument(
        "--modes", default="ste,smooth", help="force modes of quantized models (default both)"
    )
    parser.add_argument("--list", action="store_true", help="print the runs and whether their model exists")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="run the eager fast path (default: compile the energy + forces pass, spherequant.models.fast."
        "set_compile, a few minutes once per process, worth it at 100 ps)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if not (args.ps > 0 and math.isfinite(args.ps)):
        parser.error(f"--ps must be a positive number, got {args.ps}")
    if args.replicas < 1:
        parser.error(f"--replicas must be >= 1, got {args.replicas}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"ste", "smooth"}:
        parser.error(f"--modes must list 'ste' and/or 'smooth', got {args.modes!r}")
    models = study_models()
    if args.only:
        unknown = set(args.only) - {name for name, _ in models}
        if unknown:
            parser.error(f"--only: no table row named {sorted(unknown)}; rows: {[n for n, _ in models]}")
        models = [m for m in models if m[0] in args.only]
    from spherequant.models.checkpoints import read_checkpoint
    from spherequant.models.fast import set_compile

    old_compile = set_compile(not args.no_compile)
    try:
        out = Path(args.out)
        rows = json.loads(out.read_text())["rows"] if out.is_file() else []
        for name, source in models:
            try:
                path = resolve(source, name=name)
            except FileNotFoundError as err:
                print(f"skip    {name}: {err}")
                continue
            quantized = read_checkpoint(path).get("quantization") is not None
            for mode in modes if quantized else [None]:
                label = f"{name} [{mode or 'fp32'}]"
                done = [r for r in rows if (r["name"], r["force_mode"]) == (name, mode)]
                finished = done and (done[0]["simulated_ps"] >= args.ps or done[0]["verdict"] != "stable")
                if args.list:
                    print(f"{'done' if finished else 'todo':7s} {label} <- {source}")
                    continue
                if finished:
                    continue
                print(f"run     {label}: {args.ps:g} ps x {args.replicas} replicas", flush=True)
                row = run_one(name, path, mode, args.ps, args.replicas, not args.no_progress)
                # re-read: another process (disjoint --only) may have written its rows meanwhile
                rows = json.loads(out.read_text())["rows"] if out.is_file() else []
                rows = [r for r in rows if (r["name"], r["force_mode"]) != (name, mode)] + [row]
                _write(rows, out)
                why = f" ({row['blowup']})" if row["blowup"] else ""
                print(
                    f"done    {label}: {row['simulated_ps']:g} ps, {row['verdict']}{why}, {_drift_text(row)}",
                    flush=True,
                )
    finally:
        set_compile(old_compile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
