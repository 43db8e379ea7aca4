"""Tests of benchmarks/parents.py (the FP32 parents' figures and curves) and its Results-page section."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import generate_results  # noqa: E402


@pytest.fixture(scope="module")
def parents():
    return load_script("benchmarks/parents.py")


def _fake_run(root: Path, name: str, rows: list[tuple], test: dict | None) -> None:
    cfg = yaml.safe_load((ROOT / "models" / "configs" / "azobenzene_fp32_parent.yaml").read_text())
    cfg["output_dir"] = f"runs/{name}"
    (root / "models" / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models" / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    run = root / "runs" / name
    run.mkdir(parents=True)
    lines = ["epoch,train_loss,val_loss,val_energy_mae,val_forces_mae,lr,epoch_time_s"]
    lines += [f"{e},1.0,{vl},{ve},{vf},{lr},{t}" for e, vl, ve, vf, lr, t in rows]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    if test is not None:
        (run / "test_metrics.json").write_text(json.dumps(test))


def test_record_takes_the_trainers_best_row_and_sums_epoch_times(parents, tmp_path):
    # epoch 2 has the lowest validation *loss* although epoch 3 has the lower force MAE: best.pt is epoch 2
    rows = [(1, 0.5, 9.0, 30.0, 1e-3, 10.0), (2, 0.1, 2.0, 12.0, 1e-3, 20.0), (3, 0.2, 8.0, 11.0, 5e-4, 30.0)]
    _fake_run(tmp_path, "p", rows, None)
    rec = parents.parent_record("p.yaml", "no-such-pretrained-name", root=tmp_path)
    assert (rec["status"], rec["epochs"], rec["best_val_epoch"]) == ("training", 3, 2)
    assert (rec["val_forces_mae"], rec["val_energy_mae"], rec["final_lr"]) == (12.0, 2.0, 5e-4)
    assert rec["epoch_time_h"] == pytest.approx(60.0 / 3600.0)
    assert rec["test_forces_mae"] is None and "parameters" not in rec
    assert [r["epoch"] for r in rec["curve"]] == [1, 2, 3]
    _fake_run(tmp_path, "q", rows[:1], {"forces_mae": 10.0, "energy_mae": 3.0, "n_frames": 4000})
    rec = parents.parent_record("q.yaml", "no-such-pretrained-name", root=tmp_path)
    assert (rec["status"], rec["test_forces_mae"], rec["test_energy_mae"], rec["test_frames"]) == (
        "finished",
        10.0,
        3.0,
        4000,
    )


def test_record_refuses_an_empty_or_foreign_metrics_file(parents, tmp_path):
    _fake_run(tmp_path, "p", [], None)
    with pytest.raises(ValueError, match="no epoch"):
        parents.parent_record("p.yaml", "x", root=tmp_path)
    (tmp_path / "runs" / "p" / "metrics.csv").write_text("epoch,loss\n1,2\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        parents.parent_record("p.yaml", "x", root=tmp_path)


def test_results_page_plots_the_curves_and_tabulates_the_rest(tmp_path):
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    curve = [
        {"epoch": e, "val_forces_mae": 30.0 / e, "val_energy_mae": 9.0 / e, "lr": 1e-3} for e in (1, 2, 3)
    ]
    parent = {"name": "azobenzene-gfn2-fp32", "attention": "so3krates", "epochs": 3, "curve": curve}
    (res / "parents.json").write_text(
        json.dumps({"command": "python benchmarks/parents.py", "parents": [parent]})
    )
    out = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md")
    text = out.read_text()
    section = text[text.index("## FP32 parents of the quantization study") :]
    assert (
        "![FP32 parents" in section
        and (tmp_path / "docs" / "_generated" / "results" / "parents.png").is_file()
    )
    table = section[section.index("### parents") :]
    assert "| name | attention | epochs |" in table and "curve" not in table and "val_forces_mae" not in table
