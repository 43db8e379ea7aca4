"""benchmarks/quantization_study.py: the run list, each run's state, epochs and training wall time."""

from __future__ import annotations

import json

import pytest
from _scripts import load_script


@pytest.fixture(scope="module")
def qs():
    return load_script("benchmarks/quantization_study.py")


def test_run_progress_sums_the_epoch_times(qs, tmp_path):
    assert qs.run_progress(tmp_path) == (0, 0.0)
    records = [{"epoch": i + 1, "epoch_time_s": t} for i, t in enumerate([1800.0, 900.0, 3600.0])]
    (tmp_path / "metrics.json").write_text(json.dumps(records))
    epochs, hours = qs.run_progress(tmp_path)
    assert epochs == 3 and hours == pytest.approx(6300.0 / 3600.0, rel=1e-12), (epochs, hours)


def test_list_reports_every_committed_study_run(qs, capsys):
    """``--list`` on the committed study: one line per config (main table, then ablations), each finished,
    with the epochs and wall time of its metrics.json; then their sum."""
    assert qs.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    configs = qs.study_configs("all")
    assert len(lines) == len(configs) + 1, lines
    total = 0.0
    for cfg, line in zip(configs, lines):
        out, state = qs._state(cfg)
        epochs, hours = qs.run_progress(out)
        total += hours
        assert line.split()[:3] == [state, str(epochs), "epochs"], line
        assert line.split()[3] == f"{hours:.2f}" and cfg.name in line, line
        assert state == "done", f"study run not finished: {line}"
        # QAT runs at the paper's schedule; the naive INT8 PTQ run is one calibration pass
        assert epochs == (1 if cfg.stem == "azobenzene_naive_int8" else 80), line
        assert hours > 0, line
    assert lines[-1].endswith(f"{len(configs)} runs: {total:.2f} h"), lines[-1]
