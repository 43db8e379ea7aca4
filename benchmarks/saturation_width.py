"""Energy conservation and accuracy of the smooth force mode against the corner width of its clamps.

The smooth force mode replaces each activation quantizer by its clamp (:mod:`spherequant.models.saturation`)
with the corners rounded over ``SMOOTH_SATURATION_WIDTH`` grid steps. This script measures that choice: for
each study model given (default: naive INT8, whose calibrated ranges clip the most activations, and the
shipped GAQ W4A8 with its attention kept) and each width (default 0 = the plain clamp, 0.5, 4 steps) it runs
NVE in the smooth mode (velocity Verlet, 0.5 fs, 300 K start from the first test frame, one replica, seed 0,
as ``benchmarks/nve_stability.py``) and scores the test force MAE of the same network. Drift: least-squares
slope of the total energy, with its fit uncertainty over 1 ps block means (meV/atom/ps).

Writes ``benchmarks/results/saturation_width.json`` (atomic, after every run) and prints a table.

Usage::

    python benchmarks/saturation_width.py                     # 10 ps per run, 2000 test frames
    python benchmarks/saturation_width.py --ps 2 --max-frames 50 --widths 0,0.5 --out /tmp/sat.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "saturation_width.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_ROWS = ("naive INT8 (PTQ)", "GAQ W4A8 (FP32 attention kept)")


def smooth_network(path: Path, width: float):
    """The smooth-mode float network of checkpoint ``path`` with clamp corners of ``width`` grid steps."""
    from spherequant.models import checkpoints, gaq

    model = checkpoints.load_model(path, force_mode="smooth")
    for m in model.modules():
        if isinstance(m, gaq.ActivationQuantizer):
            m.saturation_width = width
    return gaq.smooth_float_model(model)


def measure(name: str, path: Path, width: float, ps: float, max_frames: int) -> dict:
    """NVE drift and test errors of one model at one width."""
    from force_modes import errors
    from nve_stability import BLOCK_PS, TEMPERATURE_K, TIMESTEP_FS, block_slope_stderr
    from spherequant.models.evaluation import checkpoint_test_data
    from spherequant.models.md import MDBlowUp, run_md

    _, ds, split = checkpoint_test_data(str(path))
    model = smooth_network(path, width)
    frame = ds[int(split.test[0])]
    z = torch.as_tensor(frame["numbers"])
    pos = torch.as_tensor(frame["positions"], dtype=torch.float64)
    t0 = time.process_time()
    try:
        result = run_md(model, z, pos, n_steps=round(ps * 1000.0 / TIMESTEP_FS), timestep_fs=TIMESTEP_FS,
                        ensemble="nve", temperature_K=TEMPERATURE_K, replicas=1, seed=0, save_every=20,
                        save_positions=False, progress=False, blowup="stop")  # fmt: skip
    except MDBlowUp as err:
        result = err.result
    md_cpu = time.process_time() - t0
    summary = result.summary()
    n_atoms = summary["n_atoms"]
    ok = result.valid[:, 0]
    t_ps = result.time_fs[ok] / 1000.0
    e = result.total[ok, 0] * 1000.0 / n_atoms
    row = {
        "name": name,
        "width_steps": width,
        "simulated_ps": summary["simulated_ps"],
        "verdict": summary["verdict"],
        "drift": summary["drift"]["drift_meV_per_atom_per_ps"][0],
        "drift_stderr": block_slope_stderr(t_ps, e, BLOCK_PS),
        "md_cpu_s": round(md_cpu, 1),
    }
    test = split.test[:max_frames]
    row.update({f"test_{k}": v for k, v in errors(model, ds, test).items()})
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ps", type=float, default=10.0, help="NVE length per run (default 10 ps)")
    parser.add_argument("--widths", default="0,0.5,4", help="corner widths in grid steps (default 0,0.5,4)")
    parser.add_argument("--only", action="append", metavar="ROW", help="study rows (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=2000, help="test frames scored (default 2000)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if not (args.ps > 0 and math.isfinite(args.ps)):
        parser.error(f"--ps must be a positive number, got {args.ps}")
    try:
        widths = [float(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--widths must be comma-separated numbers, got {args.widths!r}")
    if not widths or any(not (w >= 0 and math.isfinite(w)) for w in widths):
        parser.error(f"--widths must be non-negative numbers, got {args.widths!r}")
    if args.max_frames < 1:
        parser.error(f"--max-frames must be >= 1, got {args.max_frames}")
    from nve_stability import resolve, study_models

    from spherequant._report import atomic_write_text

    torch.set_num_threads(1)
    sources = dict(study_models())
    rows_wanted = args.only or list(DEFAULT_ROWS)
    unknown = [r for r in rows_wanted if r not in sources]
    if unknown:
        parser.error(f"--only: no table row named {unknown}; rows: {list(sources)}")
    rows = []
    for name in rows_wanted:
        path = resolve(sources[name], name=name)
        for width in widths:
            row = measure(name, path, width, args.ps, args.max_frames)
            rows.append(row)
            err = "" if row["drift_stderr"] is None else f" +- {row['drift_stderr']:.2g}"
            print(f"{name:32s} width {width:4g}: {row['verdict']:8s} drift {row['drift']:+.4f}{err} "
                  f"meV/atom/ps, test F {row['test_forces_mae']:.2f} meV/A", flush=True)  # fmt: skip
            data = {
                "command": shlex.join(["python", "benchmarks/saturation_width.py", *(argv or sys.argv[1:])]),
                "protocol": f"smooth force mode; NVE {args.ps:g} ps, 0.5 fs, 300 K start (seed 0) from the "
                "first test frame, one replica; drift +- fit uncertainty over 1 ps block means; test errors "
                f"on the first {args.max_frames} test frames",
                "units": {"drift": "meV/atom/ps", "energy": "meV", "forces": "meV/A", "width": "grid steps"},
                "rows": rows,
            }
            atomic_write_text(Path(args.out), json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
