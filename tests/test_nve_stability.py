"""Tests of benchmarks/nve_stability.py (NVE at length of the study's models): the drift statistics, and
runs of a tiny GAQ checkpoint that are resumed, extended and skipped as the script promises."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _helpers import tiny_gaq_run
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nve():
    return load_script("benchmarks/nve_stability.py")


@pytest.fixture(scope="module")
def generate_results():
    """The docs' Results page generator (``docs/generate_results.py``)."""
    return load_script("docs/generate_results.py")


@pytest.fixture(scope="module")
def tiny_gaq(tmp_path_factory):
    fp32, gaq, _ = tiny_gaq_run(tmp_path_factory.mktemp("nve"))
    return fp32, gaq


def test_drift_stats_standard_error_over_replicas(nve):
    d = [0.1, -0.3, 0.2, 0.4]
    got = nve.drift_stats(d)
    assert got["drift_mean"] == pytest.approx(np.mean(d))
    assert got["drift_stderr"] == pytest.approx(np.std(d, ddof=1) / 2.0)
    assert got["max_abs_drift"] == pytest.approx(0.4)
    assert got["stderr_method"] == "replicas"
    assert nve.drift_stats([0.5, None, float("nan")]) == {
        "drift_mean": 0.5,
        "drift_stderr": None,
        "max_abs_drift": 0.5,
        "stderr_method": None,
    }
    one = nve.drift_stats([0.5], block_stderr=0.02)
    assert one["drift_stderr"] == 0.02 and one["stderr_method"] == "blocks"
    assert nve.drift_stats([])["drift_mean"] is None


def test_block_slope_stderr_matches_the_spread_of_fitted_slopes(nve):
    """On synthetic traces (a drift, a fast oscillation and white noise sampled every 10 fs) the block
    standard error agrees with the actual spread of the fitted slopes over many independent traces."""
    rng = np.random.default_rng(0)
    t = np.arange(0, 20.0, 0.01)  # ps
    slopes, ses = [], []
    for _ in range(300):
        e = 0.05 * t + 0.3 * np.sin(2 * np.pi * t / 0.011 + rng.uniform(0, 6.3)) + rng.normal(0, 0.2, t.size)
        slopes.append(np.polyfit(t, e, 1)[0])
        ses.append(nve.block_slope_stderr(t, e))
    spread, typical = np.std(slopes, ddof=1), np.median(ses)
    assert 0.7 < typical / spread < 1.4, f"block stderr {typical:.2e} vs spread of slopes {spread:.2e}"
    assert abs(np.mean(slopes) - 0.05) < 4 * spread / np.sqrt(len(slopes))
    assert nve.block_slope_stderr(t[:250], e[:250]) is None  # 2.5 ps: fewer than 3 blocks
    bad = e.copy()
    bad[3] = np.nan
    assert nve.block_slope_stderr(t, bad) is None
    with pytest.raises(ValueError, match="time_ps and energy"):
        nve.block_slope_stderr(t, e[:-1])


@pytest.fixture
def tiny_study(nve, tiny_gaq, tmp_path, monkeypatch):
    """The script pointed at the tiny FP32 and GAQ checkpoints, its run folders under ``tmp_path``."""
    fp32, gaq = tiny_gaq
    monkeypatch.setattr(nve, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(nve, "ROOT", tmp_path)
    monkeypatch.setattr(nve, "study_models", lambda root=None: [("FP32", str(fp32)), ("GAQ", str(gaq))])


def test_runs_resume_extend_and_skip(nve, tiny_study, tmp_path, monkeypatch):
    out = tmp_path / "nve.json"
    args = ["--ps", "0.01", "--replicas", "2", "--no-progress", "--no-compile", "--out", str(out)]
    assert nve.main(args) == 0
    rows = {(r["name"], r["force_mode"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("FP32", None), ("GAQ", "ste"), ("GAQ", "smooth")}
    for r in rows.values():
        assert r["simulated_ps"] == pytest.approx(0.01) and r["replicas"] == 2 and r["verdict"] == "stable"
        assert len(r["drift_per_replica"]) == 2 and math.isfinite(r["drift_stderr"])
        trace = r["trace"]
        assert len(trace["energy_meV_per_atom"]) == 2 and trace["time_ps"][-1] == pytest.approx(0.01)
        assert all(col[0] == 0.0 for col in trace["energy_meV_per_atom"])  # relative to the first frame
    # one replica: its drift's uncertainty is the fit uncertainty over blocks (here of 10 fs)
    monkeypatch.setattr(nve, "RUNS", tmp_path / "runs1")
    monkeypatch.setattr(nve, "BLOCK_PS", 0.01)
    assert nve.main(["--ps", "0.06", "--no-progress", "--no-compile", "--out", str(tmp_path / "one.json"),
                     "--only", "FP32"]) == 0  # fmt: skip
    (single,) = json.loads((tmp_path / "one.json").read_text())["rows"]
    assert single["replicas"] == 1 and single["stderr_method"] == "blocks"
    assert math.isfinite(single["drift_stderr"]) and single["drift_stderr"] > 0
    first = rows[("GAQ", "smooth")]
    # a finished run is skipped; a longer target continues the same trajectory from its checkpoint
    before = out.read_text()
    assert nve.main(args) == 0
    assert out.read_text() == before
    assert nve.main([*args[:1], "0.02", *args[2:], "--only", "GAQ", "--modes", "smooth"]) == 0
    rows2 = {(r["name"], r["force_mode"]): r for r in json.loads(out.read_text())["rows"]}
    longer = rows2[("GAQ", "smooth")]
    assert longer["simulated_ps"] == pytest.approx(0.02) and rows2[("GAQ", "ste")] == rows[("GAQ", "ste")]
    n = len(first["trace"]["time_ps"])
    assert longer["trace"]["time_ps"][-1] == pytest.approx(0.02) and len(longer["trace"]["time_ps"]) > n


def test_a_blown_up_run_says_why(nve, tiny_study, tmp_path, monkeypatch, capsys):
    """A run that breaks a blow-up criterion keeps run_md's reason in its row and its 'done' line; a stable
    row says None. (A 10^6 K start tears the tiny molecule apart within a few femtoseconds.)"""
    out = tmp_path / "nve.json"
    common = ["--ps", "0.01", "--no-progress", "--no-compile", "--out", str(out)]
    assert nve.main([*common, "--only", "FP32"]) == 0
    monkeypatch.setattr(nve, "TEMPERATURE_K", 1.0e6)
    assert nve.main([*common, "--only", "GAQ", "--modes", "smooth"]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["FP32"]["verdict"] == "stable" and rows["FP32"]["blowup"] is None
    hot = rows["GAQ"]
    assert hot["verdict"].startswith("unstable"), hot["verdict"]
    assert hot["blowup"].startswith("replica 0 at ") and any(
        word in hot["blowup"] for word in ("energy", "bond", "atoms", "non-finite")
    ), hot["blowup"]
    assert f"({hot['blowup']})" in capsys.readouterr().out


def test_bad_arguments_name_the_option(nve, capsys):
    for argv, word in (
        (["--ps", "0"], "--ps"),
        (["--ps", "nan"], "--ps"),
        (["--replicas", "0"], "--replicas"),
        (["--modes", "fast"], "--modes"),
        (["--only", "no such row"], "--only"),
    ):
        with pytest.raises(SystemExit):
            nve.main(argv)
        assert word in capsys.readouterr().err


def test_results_page_plots_the_traces_and_tabulates_the_rest(nve, generate_results, tmp_path):
    trace = {"time_ps": [0.0, 0.5, 1.0], "energy_meV_per_atom": [[0.0, 0.1, None], [0.0, -0.1, 0.05]]}
    row = {
        "name": "GAQ",
        "force_mode": "smooth",
        "verdict": "stable",
        **nve.drift_stats([0.1, 0.05]),
        "trace": trace,
    }
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    (res / "nve_stability.json").write_text(json.dumps({"rows": [row]}))
    text = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    section = text[text.index("## NVE stability at length") :]
    assert (tmp_path / "docs" / "_generated" / "results" / "nve_stability.png").is_file()
    table = section[section.index("### rows") :]
    assert "| name | force_mode | verdict | drift_mean |" in table and "trace" not in table


def test_trace_panels_span_their_own_run(generate_results, tmp_path, monkeypatch):
    """A 1 ns run beside 100 ps runs: each panel's time axis is its own run's length (a shared axis would
    squeeze the 100 ps traces into a tenth of their panels); a run that blew up keeps its target span."""

    def row(name, target, last):
        t = list(np.linspace(0.0, last, 11))
        return {"name": name, "force_mode": "smooth", "target_ps": target, "trace": {"time_ps": t,
                "energy_meV_per_atom": [[0.01 * i for i in range(11)]]}}  # fmt: skip

    figures = []
    monkeypatch.setattr(generate_results, "_save", lambda plt, fig, out: figures.append(fig) or True)
    rows = [row("long", 1000.0, 1000.0), row("short", 100.0, 100.0), row("blew up", 100.0, 2.7)]
    assert generate_results._plot_nve({"rows": rows}, tmp_path / "nve.png") is True
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_xlim() for ax in axes] == [(0.0, 1000.0), (0.0, 100.0), (0.0, 100.0)]
    assert "1000 ps" in axes[0].get_title() and "100 ps" in axes[1].get_title()
    assert all(ax.get_xlabel() == "time (ps)" for ax in axes)


def test_results_page_draws_the_drift_of_every_run(generate_results, tmp_path):
    """The NVE section's first plot: each run's drift with its uncertainty (blown-up runs as crosses)."""
    rows = [
        {"name": "GAQ", "force_mode": "smooth", "verdict": "stable", "drift_mean": 0.01, "drift_stderr": 0.1},
        {"name": "GAQ", "force_mode": "ste", "verdict": "stable", "drift_mean": 0.3, "drift_stderr": 0.02},
        {"name": "naive", "force_mode": "ste", "verdict": "unstable: blew up", "drift_mean": 4.6},
        {"name": "FP32", "force_mode": None, "verdict": "stable", "drift_mean": -1e-4, "drift_stderr": 3e-5},
        {"name": "not run", "force_mode": "ste", "verdict": "stable", "drift_mean": None},
    ]
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    (res / "nve_stability.json").write_text(json.dumps({"rows": rows}))
    text = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    drift_png = tmp_path / "docs" / "_generated" / "results" / "nve_stability_drift.png"
    assert drift_png.stat().st_size > 1000
    assert "_generated/results/nve_stability_drift.png" in text and "No plot" not in text
    assert generate_results._plot_nve_drift({"rows": rows[-1:]}, tmp_path / "none.png") is False


def test_rows_are_written_in_table_order(nve, tmp_path):
    """Whatever order the runs finish in, the JSON lists them as the main table does, FP32 / smooth / ste."""
    names = [name for name, _ in nve.study_models()]
    gaq_row = next(n for n in names if n.startswith("GAQ"))
    rows = [
        {"name": gaq_row, "force_mode": "ste"},
        {"name": "not a table row", "force_mode": "ste"},
        {"name": gaq_row, "force_mode": "smooth"},
        {"name": names[0], "force_mode": None},
    ]
    nve._write(rows, tmp_path / "nve.json")
    written = json.loads((tmp_path / "nve.json").read_text())["rows"]
    assert [(r["name"], r["force_mode"]) for r in written] == [
        (names[0], None), (gaq_row, "smooth"), (gaq_row, "ste"), ("not a table row", "ste")
    ]  # fmt: skip
