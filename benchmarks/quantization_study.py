"""Train every run of the quantization study (Tables II-III and the ablations), a few at a time, resumably.

Runs ``spherequant train <config>`` for the main-table configs (GAQ, the QAT baselines, the naive INT8 PTQ and
the FP32 finetune control) and the ablation configs, ``--jobs`` at a time, each with one torch thread and its
log in ``benchmarks/runs/study/logs/``. A run whose ``test_metrics.json`` exists is skipped; a run with a
``last.pt`` is continued with ``--resume``, so the script can be killed and started again with nothing lost
(the run folders are under ``benchmarks/runs/study/``, committed while a run spans sessions). The tables are
then made by ``spherequant evaluate --table quantization`` and ``--table ablations``.

Usage::

    python benchmarks/quantization_study.py --jobs 2            # everything
    python benchmarks/quantization_study.py --only main         # the main table only
    python benchmarks/quantization_study.py --jobs 1 --run azobenzene_lsq --run azobenzene_qdrop
    python benchmarks/quantization_study.py --list              # state, epochs and training wall time per run
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
MAIN = [
    "azobenzene_gaq_w4a8.yaml",
    "azobenzene_gaq_w4a8_keep.yaml",
    "azobenzene_fp32_finetune.yaml",
    "azobenzene_naive_int8.yaml",
    "azobenzene_degree_quant.yaml",
    "azobenzene_lsq.yaml",
    "azobenzene_qdrop.yaml",
    "azobenzene_svq_kmeans.yaml",
    "azobenzene_gaq_24bit.yaml",
    "azobenzene_per_axis_int8.yaml",
]


def study_configs(only: str) -> list[Path]:
    """Config files of the study: the main table's, then the ablations'."""
    main = [CONFIGS / name for name in MAIN]
    ablations = sorted((CONFIGS / "ablations").glob("*.yaml"))
    return {"main": main, "ablations": ablations, "all": main + ablations}[only]


def _state(cfg: Path) -> tuple[Path, str]:
    out = ROOT / yaml.safe_load(cfg.read_text())["output_dir"]
    if (out / "test_metrics.json").is_file():
        return out, "done"
    return out, "resume" if (out / "last.pt").is_file() else "new"


def run_progress(out: Path) -> tuple[int, float]:
    """(epochs finished, their summed wall time in hours) of the run in ``out``, from its ``metrics.json``
    (one record per finished epoch, resumed parts included); ``(0, 0.0)`` before the first epoch."""
    path = out / "metrics.json"
    if not path.is_file():
        return 0, 0.0
    records = json.loads(path.read_text())
    return len(records), sum(float(r["epoch_time_s"]) for r in records) / 3600.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--only", choices=("all", "main", "ablations"), default="all")
    parser.add_argument(
        "--run",
        action="append",
        metavar="NAME",
        help="only these configs (file stem, e.g. azobenzene_lsq), in this order",
    )
    parser.add_argument("--list", action="store_true", help="print the runs and their state, then stop")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    configs = study_configs(args.only)
    if args.run:
        by_name = {cfg.stem: cfg for cfg in configs}
        unknown = [name for name in args.run if name not in by_name]
        if unknown:
            parser.error(f"--run: no study config named {unknown}; choose from {sorted(by_name)}")
        configs = [by_name[name] for name in args.run]
    todo = []
    total_h = 0.0
    for cfg in configs:
        out, state = _state(cfg)
        epochs, hours = run_progress(out)
        total_h += hours
        rel_cfg, rel_out = cfg.relative_to(ROOT), out.relative_to(ROOT)
        print(f"{state:7s} {epochs:4d} epochs {hours:6.2f} h  {rel_cfg} -> {rel_out}")
        if state != "done":
            todo.append((cfg, state))
    # wall time of the epochs as they ran (the study ran --jobs 2: two runs side by side, one thread each)
    print(f"training wall time, summed over the {len(configs)} runs: {total_h:.2f} h")
    if args.list or not todo:
        return 0
    logs = ROOT / "benchmarks" / "runs" / "study" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[subprocess.Popen, Path, float]] = []
    failed = 0
    while todo or running:
        while todo and len(running) < args.jobs:
            cfg, state = todo.pop(0)
            cmd = [sys.executable, "-m", "spherequant.models.cli", "train", str(cfg.relative_to(ROOT)),
                   "--no-progress"] + (["--resume"] if state == "resume" else [])  # fmt: skip
            log_path = logs / f"{cfg.stem}.log"
            print(f"start   {' '.join(cmd[3:])}  (log: {log_path.relative_to(ROOT)})")
            with open(log_path, "a") as log:  # the child keeps its own copy of the descriptor
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
            running.append((proc, cfg, time.time()))
        time.sleep(5)
        for item in list(running):
            proc, cfg, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            failed += proc.returncode != 0
            print(f"{status:7s} {cfg.relative_to(ROOT)} in {(time.time() - t0) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
