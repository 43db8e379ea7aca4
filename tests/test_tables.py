"""Quantization-study tables: rows from tiny trained checkpoints, weight bytes, stability verdicts, CLI, docs.

A tiny float64 FP32 model and a GAQ QAT finetune of it (2 epochs each, the first GAQ one warm-up) are
trained on the synthetic Morse data (``_helpers.morse_dataset``), written to disk so that each checkpoint's
data set and test split can be rebuilt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers import tiny_gaq_run
from spherequant.models.evaluation import evaluate_checkpoint
from spherequant.models.md import MorseLJPotential, run_md
from spherequant.models.tables import (
    CONFIG_DIR,
    PAPER,
    TABLE_ROWS,
    TableRow,
    ablation_table,
    build_table,
    quantization_table,
    stability_check,
)
from spherequant.models.train import load_config

ROOT = Path(__file__).resolve().parents[1]
WATER_Z = [8, 1, 1]
WATER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
FAST = dict(lee_frames=3, n_rotations=2, md_steps=20, md_replicas=2, calibration_frames=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(FP32 exported checkpoint, GAQ best.pt, data file) of tiny runs on a Morse data set on disk."""
    tmp = tmp_path_factory.mktemp("tables")
    fp32, gaq, _ = tiny_gaq_run(tmp, fp32_epochs=2)
    return fp32, gaq, tmp / "morse.npz"


@pytest.fixture(scope="module")
def table(trained):
    fp32, gaq, _ = trained
    rows = [("FP32", fp32), TableRow("INT8", checkpoint=fp32, ptq=True), ("GAQ", gaq)]
    return quantization_table(rows, **FAST)


# ------------------------------------------------------------------------------------------ rows
def test_rows_hold_every_field_and_match_a_direct_evaluation(table, trained):
    fp32 = trained[0]
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows) == ["FP32", "INT8", "GAQ"] and table["missing"] == []
    assert [rows[n]["method"] for n in rows] == ["fp32", "naive_int8", "gaq"]
    assert [rows[n].get("paper_key") for n in rows] == ["fp32", "naive_int8", "gaq"]
    for r in rows.values():
        for key in ("energy_mae", "forces_mae", "lee_mean", "lee_max"):
            assert np.isfinite(r[key]) and r[key] >= 0, (r["name"], key, r[key])
        assert r["lee_max"] >= r["lee_mean"], r
        st = r["stability"]
        assert st["verdict"] in ("stable", "drifting", "exploded"), st
        assert 0 < st["simulated_ps"] <= 20 * 0.5 / 1000 + 1e-12, st
        assert st["replicas"] == 2 and isinstance(st["reason"], str) and st["reason"]
        # quantized rows also run the smooth (conservative) force mode; FP32 runs once
        sm = r["stability_smooth"]
        assert sm["verdict"] in ("stable", "drifting", "exploded"), sm
        assert st["force_mode"] == ("fp32" if r["method"] == "fp32" else "ste")
        assert sm["force_mode"] == ("fp32" if r["method"] == "fp32" else "smooth")
    direct = evaluate_checkpoint(fp32, lee_frames=3, n_rotations=2)
    for key in ("energy_mae", "forces_mae", "lee_mean"):
        assert rows["FP32"][key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), key
    # float64 FP32 is equivariant to round-off; naive INT8 of the same weights is not
    assert rows["FP32"]["lee_mean"] < 1e-8, rows["FP32"]["lee_mean"]
    assert rows["INT8"]["lee_mean"] > 1e3 * max(rows["FP32"]["lee_mean"], 1e-12), rows["INT8"]["lee_mean"]
    assert table["paper"] is PAPER


def test_smooth_row_runs_and_shows_its_own_force_mode(table, trained):
    """A row set to the smooth mode reports the smooth NVE run as its ``stability`` (what the row infers
    with), runs no STE dynamics, and that run is the one the STE row of the same checkpoint reports as
    ``stability_smooth`` (same seed and starting frames)."""
    gaq = trained[1]
    smooth = build_table([TableRow("GAQ smooth", checkpoint=gaq, force_mode="smooth")], **FAST)["rows"][0]
    assert smooth["force_mode"] == "smooth", smooth["force_mode"]
    assert smooth["stability"]["force_mode"] == "smooth", smooth["stability"]
    assert smooth["stability"] == smooth["stability_smooth"]
    ste_row = {r["name"]: r for r in table["rows"]}["GAQ"]
    assert smooth["stability"]["verdict"] == ste_row["stability_smooth"]["verdict"]
    for key in ("drift", "simulated_ps"):
        assert smooth["stability"][key] == pytest.approx(ste_row["stability_smooth"][key], rel=1e-9), key


def test_model_bytes_quantized_below_fp32(table, trained):
    from spherequant.models.checkpoints import load_model

    rows = {r["name"]: r for r in table["rows"]}
    model = load_model(trained[0])
    n_params = sum(p.numel() for p in model.parameters())
    # FP32 row: 4 bytes per stored float (every parameter, plus float buffers such as the radial basis)
    assert rows["FP32"]["model_bytes"] >= 4 * n_params, (rows["FP32"]["model_bytes"], n_params)
    assert rows["FP32"]["model_bytes"] == rows["FP32"]["model_bytes_fp32"]
    assert rows["GAQ"]["model_bytes"] < rows["FP32"]["model_bytes"], rows
    assert rows["INT8"]["model_bytes"] < rows["FP32"]["model_bytes"], rows
    # W4 equivariant weights make GAQ smaller than the all-INT8 model
    assert rows["GAQ"]["model_bytes"] < rows["INT8"]["model_bytes"], rows


def test_default_rows_point_at_the_study_configs():
    names = [r.name for r in TABLE_ROWS["quantization"]]
    assert names[:3] == ["FP32 parent (So3krates attention)", "FP32 finetuned (control)", "naive INT8 (PTQ)"]
    assert names[7:10] == [
        "FP32 parent (cosine attention)",
        "GAQ W4A8 (cosine attention)",
        "GAQ W4A8 (FP32 attention kept)",
    ]
    assert len(names) == 13
    assert TABLE_ROWS["quantization"][10].force_mode == "smooth"
    rows = [r for table in TABLE_ROWS.values() for r in table if r.config is not None]
    # every study run at the paper's schedule, in a folder that can be committed between sessions
    for r in rows:
        cfg = load_config(r.config_path())
        quant = cfg.quantization or {}
        assert cfg.output_dir.startswith("benchmarks/runs/study/"), r
        if quant.get("method") == "naive_int8":
            continue
        assert (cfg.epochs, cfg.compile) == (80, True), r
        if quant.get("method") == "gaq":
            assert quant["options"]["warmup_epochs"] == 10, r
    abl = TABLE_ROWS["ablations"]
    assert abl[0].name == "gaq_reference" and abl[0].config_path().name == "azobenzene_gaq_w4a8_keep.yaml"
    assert {r.name for r in abl[1:]} == {p.stem for p in (CONFIG_DIR / "ablations").glob("*.yaml")}


def test_missing_checkpoint_names_the_train_command(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match=r"spherequant train .*azobenzene_fp32_finetune\.yaml"):
        quantization_table(root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"spherequant train .*azobenzene_gaq_w4a8_keep\.yaml"):
        ablation_table(root=tmp_path)
    cfg = yaml.safe_load((CONFIG_DIR / "tiny_test.yaml").read_text())
    cfg["output_dir"] = "runs/never_trained"
    (tmp_path / "never.yaml").write_text(yaml.safe_dump(cfg))
    rows = [("FP32", trained[0]), TableRow("later", config=tmp_path / "never.yaml")]
    data = build_table(rows, root=tmp_path, allow_missing=True, **{**FAST, "md_steps": 0})
    assert [r["name"] for r in data["rows"]] == ["FP32"]
    assert data["rows"][0]["stability"]["verdict"] == "not run"
    assert len(data["missing"]) == 1 and "spherequant train" in data["missing"][0]["reason"], data["missing"]
    with pytest.raises(FileNotFoundError, match="spherequant train"):
        build_table(rows, root=tmp_path, **FAST)


def test_bad_rows_and_options_raise(trained):
    fp32, gaq, _ = trained
    with pytest.raises(ValueError, match="rows"):
        build_table([])
    with pytest.raises(TypeError, match="rows"):
        build_table([42])
    with pytest.raises(ValueError, match="unique"):
        build_table([("a", fp32), ("a", fp32)])
    with pytest.raises(ValueError, match="exactly one"):
        TableRow("x")
    with pytest.raises(ValueError, match="exactly one"):
        TableRow("x", checkpoint=fp32, config="tiny_test.yaml")
    with pytest.raises(ValueError, match="md_steps"):
        build_table([("a", fp32)], md_steps=-1)
    with pytest.raises(ValueError, match="timestep_fs"):
        build_table([("a", fp32)], timestep_fs=0.0)
    with pytest.raises(ValueError, match="drift_threshold"):
        build_table([("a", fp32)], drift_threshold=float("nan"))
    with pytest.raises(ValueError, match="FP32 checkpoint"):
        build_table([TableRow("q", checkpoint=gaq, ptq=True)], **FAST)


# ------------------------------------------------------------------------------------------ stability
class ScaledForces(torch.nn.Module):
    """A deliberately broken potential: the forces of ``base`` times ``factor`` (energy unchanged)."""

    def __init__(self, base, factor):
        super().__init__()
        self.base, self.factor = base, factor

    def forward(self, z, pos, batch=None, *, num_graphs=None):
        out = self.base(z, pos, batch)
        return {"energy": out["energy"], "forces": self.factor * out["forces"]}


class Torque(torch.nn.Module):
    """Non-conservative: ``base`` plus a constant torque about z through each molecule's centroid."""

    def __init__(self, base, n_atoms, strength):
        super().__init__()
        self.base, self.n, self.strength = base, n_atoms, strength

    def forward(self, z, pos, batch=None, *, num_graphs=None):
        out = self.base(z, pos, batch)
        p = pos.reshape(-1, self.n, 3)
        r = p - p.mean(1, keepdim=True)
        axis = torch.tensor([0.0, 0.0, 1.0], dtype=pos.dtype).expand_as(r)
        extra = self.strength * torch.linalg.cross(axis, r, dim=-1).reshape(-1, 3)
        return {"energy": out["energy"], "forces": out["forces"] + extra}


def test_stable_for_a_sane_potential_and_drift_matches_a_fit(float_dtype):
    kw = dict(n_steps=400, timestep_fs=0.1, temperature_K=300.0, seed=3)
    res = stability_check(
        MorseLJPotential.from_molecule(WATER_Z, WATER), WATER_Z, WATER, dtype=float_dtype, **kw
    )
    assert res["verdict"] == "stable", res
    assert res["exploded_at_ps"] is None and res["simulated_ps"] == pytest.approx(0.04)
    # independent drift: np.polyfit of the same run's total energy (eV) vs time (fs) -> meV/atom/ps
    md = run_md(MorseLJPotential.from_molecule(WATER_Z, WATER), WATER_Z, WATER, save_every=10,
                dtype=float_dtype, **kw)  # fmt: skip
    slope = np.polyfit(md.time_fs, md.total[:, 0], 1)[0] * 1e6 / 3
    assert res["drift"] == pytest.approx(slope, rel=1e-6, abs=1e-9), (res["drift"], slope)
    assert abs(res["drift"]) <= 1.0


def test_exploded_for_broken_potentials():
    pot = MorseLJPotential.from_molecule(WATER_Z, WATER)
    big_step = stability_check(pot, WATER_Z, WATER, n_steps=200, timestep_fs=5.0, dtype="float64")
    assert big_step["verdict"] == "exploded", big_step
    assert 0 < big_step["exploded_at_ps"] <= 200 * 5.0 / 1000, big_step
    assert "blew up" in big_step["reason"]
    broken = ScaledForces(MorseLJPotential.from_molecule(WATER_Z, WATER), 1e3)
    res = stability_check(broken, WATER_Z, np.stack([WATER, WATER]), n_steps=400, timestep_fs=0.1,
                          dtype="float64")  # fmt: skip
    assert res["verdict"] == "exploded" and res["replicas"] == 2, res
    # the same broken forces at scale 1 are the sane potential again
    ok = stability_check(ScaledForces(MorseLJPotential.from_molecule(WATER_Z, WATER), 1.0), WATER_Z, WATER,
                         n_steps=400, timestep_fs=0.1, dtype="float64")  # fmt: skip
    assert ok["verdict"] == "stable", ok


def test_drifting_for_a_non_conservative_force():
    pot = Torque(MorseLJPotential.from_molecule(WATER_Z, WATER), 3, 0.05)
    res = stability_check(pot, WATER_Z, WATER, n_steps=400, timestep_fs=0.1, dtype="float64")
    assert res["verdict"] == "drifting", res
    assert abs(res["drift"]) > 1.0 and "without a blow-up" in res["reason"], res
    # the torque-free potential from the same start is stable
    sane = stability_check(
        Torque(pot.base, 3, 0.0), WATER_Z, WATER, n_steps=400, timestep_fs=0.1, dtype="float64"
    )
    assert sane["verdict"] == "stable", sane


def test_stability_check_rejects_bad_options():
    pot = MorseLJPotential.from_molecule(WATER_Z, WATER)
    with pytest.raises(ValueError, match="drift_threshold"):
        stability_check(pot, WATER_Z, WATER, n_steps=10, drift_threshold=-1.0)
    with pytest.raises(TypeError, match="drift_threshold"):
        stability_check(pot, WATER_Z, WATER, n_steps=10, drift_threshold="1")
    with pytest.raises(ValueError, match="n_steps"):
        stability_check(pot, WATER_Z, WATER, n_steps=0)


# ------------------------------------------------------------------------------------------ CLI and docs
def test_cli_writes_json_markdown_and_plot(tmp_path, trained, capsys):
    from spherequant.models.cli import main

    fp32, gaq, _ = trained
    small = ["--lee-frames", "2", "--rotations", "2", "--md-steps", "10", "--md-replicas", "2"]
    out = tmp_path / "results"
    argv = ["evaluate", "--table", "quantization", "--out-dir", str(out), "--row", f"FP32={fp32}",
            "--row", f"INT8=naive-int8:{fp32}", *small]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| row" in text and "INT8" in text and "wrote" in text
    data = json.loads((out / "quantization.json").read_text())
    assert data["table"] == "quantization" and "--table quantization" in data["command"]
    assert [r["name"] for r in data["rows"]] == ["FP32", "INT8"]
    assert data["rows"][1]["method"] == "naive_int8" and data["rows"][1]["ptq"] is True
    ii = {r["key"]: r for r in data["paper"]["table_ii"]}
    assert (ii["fp32"]["energy_mae"], ii["fp32"]["forces_mae"]) == (23.20, 21.20)
    assert (ii["gaq"]["energy_mae"], ii["gaq"]["forces_mae"]) == (9.31, 22.60)
    assert {r["key"]: r["lee"] for r in data["paper"]["table_iii"]}["naive_int8"] == 5.23
    md = (out / "quantization.md").read_text()
    assert "| row" in md and "paper E-MAE" in md and "INT8" in md
    assert (out / "quantization.png").stat().st_size > 1000

    # ablations: the first given row is the reference
    assert main(["evaluate", "--table", "ablations", "--out-dir", str(out), "--row", f"ref={gaq}",
                 "--row", f"fp={fp32}", *small]) == 0  # fmt: skip
    abl = json.loads((out / "ablations.json").read_text())
    assert abl["reference"] == "ref" and abl["rows"][0]["change"] == "reference"
    assert abl["rows"][0]["forces_mae_vs_reference"] == pytest.approx(1.0)
    assert "method=fp32" in abl["rows"][1]["change"], abl["rows"][1]["change"]
    assert (out / "ablations.md").is_file() and (out / "ablations.png").stat().st_size > 1000
    # both force modes' NVE verdicts are displayed, from the row's own runs
    lines = [ln for ln in (out / "ablations.md").read_text().splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    ref = dict(zip(header, (c.strip() for c in lines[1].strip("|").split("|"))))
    assert ref["NVE verdict (smooth forces)"] == abl["rows"][0]["stability_smooth"]["verdict"], ref
    assert ref["drift (smooth)"] == format(abl["rows"][0]["stability_smooth"]["drift"], ".3g"), ref
    assert ref["NVE verdict"] == abl["rows"][0]["stability"]["verdict"], ref

    # the docs page renders both, with the paper's tables; bad command lines fail with exit code 2
    sys.path.insert(0, str(ROOT / "docs"))
    import generate_results

    (tmp_path / "benchmarks").mkdir()
    out.rename(tmp_path / "benchmarks" / "results")
    page = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    assert "## Quantization" in page and "Paper, Table II" in page and "paper E-MAE" in page
    assert "_generated/results/quantization.png" in page and "_generated/results/ablations.png" in page
    (tmp_path / "benchmarks" / "results" / "ablations.json").unlink()
    page = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    assert "no `ablations.json` yet" in page

    capsys.readouterr()
    assert main(["evaluate"]) == 2
    assert main(["evaluate", str(fp32), "--table", "quantization"]) == 2
    assert main(["evaluate", "--table", "quantization", "--row", "nameonly", *small]) == 2
    assert main(["evaluate", "--table", "quantization", "--row", f"x={tmp_path / 'no.pt'}", *small]) == 2
    err = capsys.readouterr().err  # CLI user errors: exit 2, one "error:" line each on stderr
    assert "exactly one" in err and all(line.startswith("error: ") for line in err.splitlines()), err


def test_each_ablation_is_the_reference_run_with_one_change():
    """The ablation table compares each row with ``gaq_reference`` (the main keep run): a config that differed
    in more than its one named change would confound the comparison."""
    ref = yaml.safe_load((CONFIG_DIR / "azobenzene_gaq_w4a8_keep.yaml").read_text())
    ref_opts = ref["quantization"].pop("options")
    for path in sorted((CONFIG_DIR / "ablations").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        opts = cfg["quantization"].pop("options")
        assert cfg.pop("output_dir") == f"benchmarks/runs/study/ablations/{path.stem}"
        assert cfg == {k: v for k, v in ref.items() if k != "output_dir"}, path.name
        changed = {k for k in set(opts) | set(ref_opts) if opts.get(k) != ref_opts.get(k)}
        if path.stem == "per_axis":
            assert changed == {"vector_quantizer"}, changed
        elif path.stem.endswith("_42"):  # another codebook at 42 points
            assert changed <= {"codebook", "codebook_size"} and opts["codebook_size"] == 42, changed
        else:
            assert len(changed) == 1, (path.name, changed)
