"""The quantization study's FP32 parents: training curves and figures from their run folders, as JSON.

For each parent config (``models/configs/azobenzene_fp32_parent.yaml``, So3krates attention, shipped as
``azobenzene-gfn2-fp32``; ``azobenzene_fp32_cosine_parent.yaml``, cosine attention, shipped as
``azobenzene-gfn2-fp32-cosine``) it reads the run folder the config names (``metrics.csv``, and
``test_metrics.json`` once the run has finished) and writes ``benchmarks/results/parents.json``: the
architecture and parameter count, epochs trained, the summed epoch time, the best validation row, the test
figures (all test frames of the split, written by ``spherequant train`` at the end of the run) and the
validation curve (every epoch: force and energy MAE, learning rate), which the docs' Results page plots.
Nothing is retrained or re-evaluated; a parent still training is reported with its latest epoch.

Usage::

    python benchmarks/parents.py [--out benchmarks/results/parents.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Parent config -> the pretrained name it ships as.
PARENTS = {
    "azobenzene_fp32_parent.yaml": "azobenzene-gfn2-fp32",
    "azobenzene_fp32_cosine_parent.yaml": "azobenzene-gfn2-fp32-cosine",
}


def _read_curve(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path} holds no epoch")
    keys = ("epoch", "val_loss", "val_forces_mae", "val_energy_mae", "lr", "epoch_time_s")
    missing = [k for k in keys if k not in rows[0]]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}")
    return [{k: (int(r[k]) if k == "epoch" else float(r[k])) for k in keys} for r in rows]


def parent_record(config_name: str, shipped_as: str, root: Path = ROOT) -> dict:
    """One parent's record (see the module docstring); ``status`` says whether it has finished."""
    import yaml
    from spherequant.models.checkpoints import available_pretrained, load_model

    cfg = yaml.safe_load((root / "models" / "configs" / config_name).read_text())
    run = root / cfg["output_dir"]
    curve = _read_curve(run / "metrics.csv")
    best = min(curve, key=lambda r: r["val_loss"])  # the row best.pt was saved at (the trainer's criterion)
    test_path = run / "test_metrics.json"
    test = json.loads(test_path.read_text()) if test_path.is_file() else None
    rec = {
        "name": shipped_as,
        "config": f"models/configs/{config_name}",
        "attention": cfg["model"]["attention"],
        "features": cfg["model"]["num_features"],
        "layers": cfg["model"]["num_layers"],
        "status": "finished" if test is not None else "training",
        "epochs": curve[-1]["epoch"],
        "epoch_time_h": sum(r["epoch_time_s"] for r in curve) / 3600.0,
        "best_val_epoch": best["epoch"],  # validation figures of the EMA weights at that epoch
        "val_forces_mae": best["val_forces_mae"],
        "val_energy_mae": best["val_energy_mae"],
        "test_forces_mae": None if test is None else test["forces_mae"],
        "test_energy_mae": None if test is None else test["energy_mae"],
        "test_frames": None if test is None else test["n_frames"],
        "final_lr": curve[-1]["lr"],
    }
    if shipped_as in available_pretrained():
        rec["parameters"] = sum(p.numel() for p in load_model(shipped_as).parameters())
    rec["curve"] = [{k: r[k] for k in ("epoch", "val_forces_mae", "val_energy_mae", "lr")} for r in curve]
    return rec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "parents.json"))
    args = parser.parse_args(argv)
    from spherequant._report import atomic_write_text

    records = [parent_record(cfg, name) for cfg, name in PARENTS.items()]
    for r in records:
        test = (
            "not yet"
            if r["test_forces_mae"] is None
            else f"{r['test_forces_mae']:.2f} / {r['test_energy_mae']:.2f}"
        )
        print(
            f"{r['name']:30s} {r['status']:9s} epochs {r['epochs']:5d} ({r['epoch_time_h']:.1f} h)  "
            f"best val F/E {r['val_forces_mae']:.2f} meV/A / {r['val_energy_mae']:.2f} meV (epoch "
            f"{r['best_val_epoch']})  test F/E {test}"
        )
    data = {
        "command": "python benchmarks/parents.py",
        "units": "meV/A (forces), meV (energy)",
        "parents": records,
    }
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
