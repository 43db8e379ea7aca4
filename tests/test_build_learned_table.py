"""The maintainer script that builds the shipped learned table (benchmarks/build_learned_table.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script

from spherequant.codebook import Codebook
from spherequant.learn import minimax_codebook, shipped_table

builder = load_script("benchmarks/build_learned_table.py")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _delta(points) -> float:
    return Codebook(points).covering_radius()


def test_family_starts_list_every_family_of_the_size():
    names = {name for name, _ in builder.family_starts(20)}
    assert names >= {"fibonacci", "pole_fibonacci", "dodecahedron", "cube+icosahedron"}, names
    for name, pts in builder.family_starts(42):
        assert pts.shape == (42, 3), name
    assert "icosahedral(1)" in {name for name, _ in builder.family_starts(42)}
    assert "healpix(2)" in {name for name, _ in builder.family_starts(48)}
    assert {name for name, _ in builder.family_starts(72)} >= {"geodesic(2,1)"}
    assert builder.geodesic_parameters(72) == [(2, 1)] and builder.geodesic_parameters(73) == []
    assert builder.geodesic_parameters(162) == [(4, 0)]


def test_build_chain_resumes_and_respects_the_deadline(tmp_path, monkeypatch):
    opts = {"restarts": 1, "iterations": 3, "slp_iterations": 3}
    log: list[str] = []
    done = builder.build_chain(7, tmp_path, opts, log=log.append)
    assert sorted(done) == [4, 5, 6, 7] and len(log) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n4.npz", "n5.npz", "n6.npz", "n7.npz"]
    # each size is at least as good as the previous one plus its deepest hole (it is one of the starts)
    for n in (5, 6, 7):
        grown = np.vstack([done[n - 1][0], Codebook(done[n - 1][0]).deepest_hole()])
        assert _delta(done[n][0]) <= _delta(grown) + 1e-12
        assert "insert_deepest_hole" in done[n][1]["starts"]
    # a rerun loads the finished sizes and optimises only the new one; a passed deadline stops before it
    monkeypatch.setattr(builder, "optimise", lambda *a, **k: pytest.fail("recomputed a finished size"))
    again = builder.build_chain(8, tmp_path, opts, deadline=0.0, log=log.append)
    assert sorted(again) == [4, 5, 6, 7] and log[-1] == "deadline reached before n=8"
    for n in again:
        np.testing.assert_array_equal(again[n][0], done[n][0])
    # other options are another build: nothing is reused
    monkeypatch.undo()
    other = builder.build_chain(4, tmp_path / "other", {**opts, "restarts": 2}, log=log.append)
    assert sorted(other) == [4]


def test_repair_pass_takes_warm_starts_and_keeps_the_guarantees(tmp_path):
    opts = {"restarts": 1, "iterations": 0, "slp_iterations": 1}
    done = builder.build_chain(9, tmp_path, opts, log=lambda m: None)
    before = {n: _delta(p) for n, (p, _) in done.items()}
    good7 = minimax_codebook(7, restarts=1, iterations=30, slp_iterations=60, cache=False)
    warm = {
        7: [_unit(np.random.default_rng(1).normal(size=(7, 3))), good7],
        8: _unit(np.random.default_rng(0).normal(size=(8, 3))),
    }
    log: list[str] = []
    fixed = builder.repair_chain(done, warm, tmp_path, log=log.append)
    assert sorted(fixed) == sorted(done)
    after = {n: _delta(p) for n, (p, _) in fixed.items()}
    assert all(after[n] <= before[n] + 1e-15 for n in after), (before, after)
    # n = 7 improves from the warm start, and is written back to the work folder
    assert after[7] <= _delta(good7) + 1e-15 < before[7] - 1e-6, (before[7], after[7])
    assert fixed[7][1]["best_start"] == "repair:warm_table1" and any("n=7" in m for m in log)
    np.testing.assert_array_equal(builder.load_partial(tmp_path, 7)[0], fixed[7][0])
    for n in (5, 6, 7, 8, 9):
        grown = np.vstack([fixed[n - 1][0], Codebook(fixed[n - 1][0]).deepest_hole()])
        assert after[n] <= _delta(grown) + 1e-12, n
    # a passed deadline returns the (empty) finished prefix
    assert builder.repair_chain(done, warm, tmp_path, deadline=0.0, log=log.append) == {}


def test_seed_from_shipped_writes_a_resumable_prefix(tmp_path, monkeypatch):
    index, table = shipped_table()
    opts = index["entries"]["4"]["options"]["options"]
    written = builder.seed_from_shipped(tmp_path, {"restarts": opts["restarts"]})
    assert written == len(table), (written, len(table))
    got = builder.load_partial(tmp_path, 17)
    np.testing.assert_array_equal(got[0], table[17])
    assert got[1] == index["entries"]["17"]["options"]
    # the chain resumes from these without optimising anything
    monkeypatch.setattr(builder, "optimise", lambda *a, **k: pytest.fail("recomputed a shipped size"))
    done = builder.build_chain(20, tmp_path, {"restarts": opts["restarts"]}, log=lambda m: None)
    assert sorted(done) == list(range(4, 21))
    # a second call writes nothing; other options seed nothing
    assert builder.seed_from_shipped(tmp_path, {"restarts": opts["restarts"]}) == 0
    assert builder.seed_from_shipped(tmp_path / "other", {"restarts": opts["restarts"] + 1}) == 0


def test_write_table_records_exact_radii(tmp_path):
    pts = {n: minimax_codebook(n) for n in (4, 5, 6)}
    index = builder.write_table(pts, {n: {"test": n} for n in pts}, tmp_path)
    on_disk = json.loads((tmp_path / "learned_codebooks.json").read_text())
    assert on_disk == json.loads(json.dumps(index))
    with np.load(tmp_path / "learned_codebooks.npz") as z:
        assert sorted(z.files) == ["n4", "n5", "n6"]
        np.testing.assert_array_equal(z["n5"], pts[5])
    for n in pts:
        assert on_disk["entries"][str(n)]["covering_radius"] == pytest.approx(_delta(pts[n]), abs=1e-15)


def test_cli_user_errors_exit_2(capsys):
    assert builder.main(["--max-n", "3"]) == 2
    assert "error: --max-n" in capsys.readouterr().err
    assert builder.main(["--max-n", "5", "--restarts", "0"]) == 2


def test_perturbed_starts_are_seeded_unit_and_close():
    p = np.asarray(minimax_codebook(12))
    a, b = builder.perturbed(p, 0), builder.perturbed(p, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, builder.perturbed(p, 1))
    assert np.abs(np.linalg.norm(a, axis=1) - 1.0).max() < 1e-15
    moved = np.linalg.norm(a - p, axis=1)
    assert 0 < moved.max() < 1e-2, moved.max()


def test_warm_perturbed_refuses_bad_sizes(capsys, tmp_path):
    assert builder.main(["--max-n", "5", "--work", str(tmp_path), "--warm-perturbed", "7,x"]) == 2
    assert "error: --warm-perturbed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before any work
