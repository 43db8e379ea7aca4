"""QM9 row of the quantization study: FP32 vs GAQ W4A8 vs naive INT8 on U0, resumably, into one JSON table.

Trains ``models/configs/qm9_fp32.yaml`` (So3krates on a seeded 5,000-molecule QM9 subset, U0 atomization
energy, no forces), then from its best checkpoint the FP32 finetune control with the QAT schedule
(``qm9_fp32_finetune.yaml``), the GAQ W4A8 finetune (``qm9_gaq_w4a8.yaml``) and the naive INT8 post-training
quantization (``qm9_naive_int8.yaml``), one after the other with
``spherequant train`` (one torch thread; logs in ``benchmarks/runs/qm9_logs/``). A run whose
``test_metrics.json`` exists is skipped, a run with a ``last.pt`` continues with ``--resume``: kill the script
and start it again, nothing is lost. Progress: one line per finished epoch of the running training.

Then every run's ``best.pt`` (EMA weights, after the energy-shift refit) is evaluated on the validation and
test frames of its split, and ``benchmarks/results/qm9_study.json`` is written (atomically) and printed as
a table of U0 mean absolute errors in meV. Needs the optional package qm9pack (``pip install
'spherequant[qm9]'``).

Usage::

    nice -n 10 python benchmarks/qm9_study.py            # train what is missing, then the table
    python benchmarks/qm9_study.py --list                # the runs and their state
    python benchmarks/qm9_study.py --table               # only (re)evaluate and print the table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "models" / "configs"
RESULT = ROOT / "benchmarks" / "results" / "qm9_study.json"
LOGS = ROOT / "benchmarks" / "runs" / "qm9_logs"
#: (row label, config file), in training order (the quantized runs start from the FP32 run's best.pt)
RUNS = [
    ("FP32", "qm9_fp32.yaml"),
    ("FP32 finetune (control)", "qm9_fp32_finetune.yaml"),
    ("GAQ W4A8", "qm9_gaq_w4a8.yaml"),
    ("naive INT8 (PTQ)", "qm9_naive_int8.yaml"),
]


def _state(cfg: Path) -> tuple[Path, str]:
    out = ROOT / yaml.safe_load(cfg.read_text())["output_dir"]
    if (out / "test_metrics.json").is_file():
        return out, "done"
    return out, "resume" if (out / "last.pt").is_file() else "new"


def _epochs_done(out: Path) -> int:
    try:
        return len(json.loads((out / "metrics.json").read_text()))
    except (OSError, ValueError):
        return 0


def _train(cfg: Path, state: str) -> int:
    """Run one training to its end, printing a line per finished epoch; returns the exit status."""
    out, _ = _state(cfg)
    epochs = yaml.safe_load(cfg.read_text())["epochs"]
    cmd = [sys.executable, "-m", "spherequant.models.cli", "train", str(cfg.relative_to(ROOT))]
    cmd += ["--no-progress"] + (["--resume"] if state == "resume" else [])
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{cfg.stem}.log"
    print(f"start   {' '.join(cmd[3:])}  (log: {log_path.relative_to(ROOT)})", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0, seen = time.time(), _epochs_done(out)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    while proc.poll() is None:
        time.sleep(5)
        done = _epochs_done(out)
        if done != seen:
            seen = done
            last = json.loads((out / "metrics.json").read_text())[-1]
            print(
                f"  {cfg.stem}: epoch {last['epoch']}/{epochs}  val U0 MAE {last['val_energy_mae']:.1f} meV  "
                f"({(time.time() - t0) / 60:.1f} min)",
                flush=True,
            )
    status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see the log)"
    print(f"{status} {cfg.stem} in {(time.time() - t0) / 60:.1f} min", flush=True)
    return proc.returncode


def _frame_errors(model, ds, indices, batch_size: int):
    """Signed energy errors (meV) of ``model`` on frames ``indices``, one per frame: shape (len(indices),)."""
    import numpy as np
    from spherequant.models import data

    p = next(model.parameters())
    out = []
    for b in data.iterate_batches(ds, indices, batch_size, dtype=p.dtype):
        e = model(b.z, b.pos, b.batch, num_graphs=b.num_graphs, compute_forces=False)["energy"]
        out.append(1000 * (e.detach() - b.energy).double().numpy())
    return np.concatenate(out)


def _paired(abs_err, abs_ref) -> dict:
    """Mean of the per-molecule difference of absolute errors (meV) and its standard error."""
    d = abs_err - abs_ref
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / len(d) ** 0.5)}


def evaluate_runs() -> dict:
    """Validation and test U0 errors of every finished run's ``best.pt`` (EMA weights), and each run's paired
    difference of absolute errors from the FP32 run on the same molecules (mean and standard error, meV)."""
    import numpy as np
    from spherequant.models import checkpoints, data
    from spherequant.models.train import load_config, load_training_data

    try:
        from spherequant.models.train import error_metrics
    except ImportError:  # its name before the train.py refactor
        from spherequant.models.train import evaluate as error_metrics

    rows, datasets, ref = [], {}, None
    for label, name in RUNS:
        cfg = load_config(CONFIGS / name)
        out = ROOT / cfg.output_dir
        if not (out / "test_metrics.json").is_file():
            rows.append({"method": label, "config": f"models/configs/{name}", "status": "not finished"})
            continue
        if cfg.dataset not in datasets:
            datasets[cfg.dataset] = load_training_data(cfg.dataset)
        ds = datasets[cfg.dataset]
        sp = data.split(ds, cfg.n_train, cfg.n_val, seed=cfg.split_seed, index_dir=out / "split")
        model = checkpoints.load_model(out / "best.pt", use_ema=True, device="cpu")
        val = error_metrics(model, ds, sp.val, cfg.val_batch_size)
        test = error_metrics(model, ds, sp.test, cfg.val_batch_size)
        errs = {part: np.abs(_frame_errors(model, ds, getattr(sp, part), cfg.val_batch_size))
                for part in ("val", "test")}  # fmt: skip
        for part, agg in (("val", val), ("test", test)):  # the frame-by-frame errors give the same MAE
            mae = float(errs[part].mean())
            if abs(mae - agg["energy_mae"]) > 1e-6 * max(agg["energy_mae"], 1.0):
                raise RuntimeError(f"{name}: {part} MAE {agg['energy_mae']} meV but {mae} frame by frame")
        if ref is None:
            ref = {"split": [sp.val.tolist(), sp.test.tolist()], **errs}
        elif [sp.val.tolist(), sp.test.tolist()] != ref["split"]:
            raise RuntimeError(f"{name}: its split differs from the FP32 run's; the rows would not compare")
        history = json.loads((out / "metrics.json").read_text())
        best_epoch = int(checkpoints.read_checkpoint(out / "best.pt")["epoch"])
        rows.append(
            {
                "method": label,
                "config": f"models/configs/{name}",
                "status": "done",
                "val_mae_meV": val["energy_mae"],
                "val_rmse_meV": val["energy_rmse"],
                "test_mae_meV": test["energy_mae"],
                "test_rmse_meV": test["energy_rmse"],
                "val_vs_fp32_meV": _paired(errs["val"], ref["val"]),
                "test_vs_fp32_meV": _paired(errs["test"], ref["test"]),
                "n_val": val["n_frames"],
                "n_test": test["n_frames"],
                "epochs": len(history) if cfg.epochs else 0,
                "best_epoch": best_epoch,
                "train_time_min": sum(h["epoch_time_s"] for h in history) / 60,
            }
        )
    first = load_config(CONFIGS / RUNS[0][1])
    return {
        "what": "QM9 U0 (atomization energy) error of So3krates: FP32 vs GAQ W4A8 vs naive INT8",
        "dataset": first.dataset,
        "target": "U0 atomization energy (QM9 atomref subtracted), eV; errors in meV",
        "split": {"n_train": first.n_train, "n_val": first.n_val, "seed": first.split_seed},
        "model": first.model,
        "command": "nice -n 10 python benchmarks/qm9_study.py",
        "device": "cpu, one torch thread per run",
        "rows": rows,
        "vs_fp32": "mean over the same molecules of |error| - |FP32 error| (meV), with its standard error",
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_table(result: dict) -> str:
    """Markdown table of a :func:`evaluate_runs` result."""
    lines = [
        "| method | val U0 MAE (meV) | test U0 MAE (meV) | test U0 RMSE (meV) | test vs FP32 (meV) "
        "| epochs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r["status"] != "done":
            lines.append(f"| {r['method']} | not finished | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['val_mae_meV']:.1f} | {r['test_mae_meV']:.1f} | {r['test_rmse_meV']:.1f} "
            f"| {r['test_vs_fp32_meV']['mean']:+.1f} ± {r['test_vs_fp32_meV']['se']:.1f} | {r['epochs']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the runs and their state, then stop")
    parser.add_argument("--table", action="store_true", help="only evaluate the finished runs and write JSON")
    args = parser.parse_args(argv)
    states = []
    for _, name in RUNS:
        cfg = CONFIGS / name
        out, state = _state(cfg)
        print(f"{state:7s} {cfg.relative_to(ROOT)} -> {out.relative_to(ROOT)}")
        states.append((cfg, state))
    if args.list:
        return 0
    if not args.table:
        for cfg, state in states:
            if state != "done" and _train(cfg, state) != 0:
                return 1
    from spherequant._report import atomic_write

    result = evaluate_runs()
    text = json.dumps(result, indent=1) + "\n"
    atomic_write(RESULT, lambda fh: fh.write(text.encode()))
    print(f"\nQM9 {result['dataset']}: {result['target']}\n")
    print(format_table(result))
    print(f"\nwritten {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
