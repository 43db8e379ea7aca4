"""Tests of benchmarks/anchor_peer.py (the so3krates-torch anchor row) and the shared benchmarks/_anchor.py.

The parts that need no peer (argument parsing, the size mapping, the split, the metrics, the energy-shift
correction, the budget and resume bookkeeping, the parent's curve at equal time) run in the project's
environment; the end-to-end training test needs ``so3krates-torch`` (installed only in its own venv, see
``benchmarks/peer_so3krates_torch.py``) and skips without it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PARENT = ROOT / "benchmarks" / "runs" / "azobenzene_fp32_parent"
PARENT_CONFIG = ROOT / "models" / "configs" / "azobenzene_fp32_parent.yaml"
PARENTS_JSON = ROOT / "benchmarks" / "results" / "parents.json"


@pytest.fixture(scope="module")
def ap():
    return load_script("benchmarks/anchor_peer.py")


@pytest.fixture(scope="module")
def parent_yaml():
    return yaml.safe_load(PARENT_CONFIG.read_text())


# ----------------------------------------------------------------------------------------------------------
# arguments and size
# ----------------------------------------------------------------------------------------------------------
def test_defaults_are_the_parents_recipe(ap, parent_yaml):
    a = ap.parse_args(["--epochs", "3"])
    ours = {
        "batch_size": a.batch_size,
        "val_batch_size": a.val_batch_size,
        "lr": a.lr,
        "weight_decay": a.weight_decay,
        "lr_factor": a.lr_factor,
        "patience": a.patience,
        "min_lr": a.min_lr,
        "stop_at_min_lr": a.stop_at_min_lr,
        "ema_decay": a.ema_decay,
        "grad_clip": a.clip_grad,
        "energy_weight": a.energy_weight,
        "forces_weight": a.forces_weight,
        "dtype": a.dtype,
        "seed": a.seed,
        "n_train": a.n_train,
        "n_val": a.n_val,
        "split_seed": a.split_seed,
        "refit_energy_shift": a.refit_energy_shift,
    }
    want = {k: parent_yaml.get(k, True if k == "refit_energy_shift" else None) for k in ours}
    assert ours == want
    assert parent_yaml["scheduler"] == "plateau"
    assert a.threads == 1 and a.equal_time == "cpu" and a.epochs == 3 and a.cpu_hours is None
    b = ap.parse_args(["--cpu-hours", "5.6", "--resume", "--run-dir", "x", "--out", "y.json"])
    assert b.epochs is None and b.cpu_hours == 5.6 and b.resume and b.run_dir == "x" and b.json == "y.json"


def test_size_is_the_parents(ap, parent_yaml):
    a = ap.parse_args(["--epochs", "1"])
    m = parent_yaml["model"]
    assert a.size["equal_size"] is True
    assert a.peer_model == {
        "features": m["num_features"],
        "layers": m["num_layers"],
        "heads": m["num_heads"],
        "degrees": list(m["degrees"]),
        "cutoff": float(m["cutoff"]),
        "num_rbf": m["num_rbf"],
    }
    assert a.peer_model == {"features": 128, "layers": 3, "heads": 4, "degrees": [1], "cutoff": 5.0,
                            "num_rbf": 32}  # fmt: skip
    n = ap.our_parameter_count(a.size["ours"])
    if PARENTS_JSON.is_file():  # the count recorded when the parent was trained
        rec = {p["name"]: p for p in json.loads(PARENTS_JSON.read_text())["parents"]}
        assert n == rec["azobenzene-gfn2-fp32"]["parameters"]
    small = ap.parse_args(["--epochs", "1", "--features", "16", "--layers", "1"])
    assert small.size["equal_size"] is False
    assert (small.peer_model["features"], small.peer_model["layers"], small.peer_model["heads"]) == (16, 1, 4)
    assert small.size["ours"]["num_features"] == 16 and ap._recipe(small)["peer_model"]["features"] == 16


@pytest.mark.parametrize(
    "model, fragment",
    [
        ({"attention": "cosine"}, "attention"),
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"degrees": [1, 2, 3]}, "number of degrees"),
        ({"degrees": [0]}, "degrees"),
        ({"degrees": [1, 1]}, "degrees"),
        ({"num_rbf": 0}, ">= 1"),
    ],
)
def test_size_mapping_rejects_what_the_peer_cannot_build(ap, parent_yaml, model, fragment):
    m = {**parent_yaml["model"], **model}
    with pytest.raises(ValueError, match=fragment):
        ap.size_mapping(m)
    with pytest.raises(ValueError, match="num_layers"):
        ap.size_mapping({k: v for k, v in parent_yaml["model"].items() if k != "num_layers"})


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "--epochs"),
        (["--epochs", "0"], "must be > 0"),
        (["--cpu-hours", "-1"], "must be > 0"),
        (["--epochs", "1", "--ema-decay", "1"], "--ema-decay"),
        (["--epochs", "1", "--forces-weight", "-1"], "must be >= 0"),
        (["--epochs", "1", "--lr-factor", "2"], "--lr-factor"),
        (["--epochs", "1", "--min-lr", "0.01"], "--min-lr"),
        (["--epochs", "1", "--dtype", "float16"], "--dtype"),
        (["--epochs", "1", "--equal-time", "gpu"], "--equal-time"),
        (["--epochs", "1", "--features", "30"], "divisible"),
        (["--epochs", "1", "--parent-config", "no/such.yaml"], "--parent-config"),
        (["--epochs", "1", "--split-seed", "-1"], "--split-seed"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(ap, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        ap.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1], err
    assert fragment in err[-1], err


# ----------------------------------------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------------------------------------
def test_split_is_ours_and_the_parents(ap):
    from spherequant.models import data as data_mod

    ds = data_mod.load_dataset("azobenzene-gfn2-500K")
    sp, same = ap.load_split(len(ds), 950, 50, 0)
    ref = data_mod.split(ds, 950, 50, seed=0)
    for a, b in zip(sp, ref):
        np.testing.assert_array_equal(a, b)
    assert same is None and len(sp.test) == len(ds) - 1000
    if (PARENT / "split" / "train.npy").is_file():  # the parent's saved split (read only)
        assert ap.load_split(len(ds), 950, 50, 0, PARENT / "split")[1] is True
        assert ap.load_split(len(ds), 950, 50, 1, PARENT / "split")[1] is False


# ----------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------
def _slow_metrics(e_pred, e_ref, n_atoms, f_pred, f_ref, we, wf):
    """Plain Python loops in float64 (the independent reference)."""
    dev = [float(p) - float(r) for p, r in zip(e_pred, e_ref)]
    dfs = [float(a) - float(b) for rp, rr in zip(f_pred, f_ref) for a, b in zip(rp, rr)]
    nf, nc = len(dev), len(dfs)
    return {
        "energy_mae": 1000 * sum(abs(d) for d in dev) / nf,
        "energy_mae_per_atom": 1000 * sum(abs(d) / int(n) for d, n in zip(dev, n_atoms)) / nf,
        "energy_rmse": 1000 * math.sqrt(sum(d * d for d in dev) / nf),
        "forces_mae": 1000 * sum(abs(d) for d in dfs) / nc,
        "forces_rmse": 1000 * math.sqrt(sum(d * d for d in dfs) / nc),
        "loss": we * sum((d / int(n)) ** 2 for d, n in zip(dev, n_atoms)) / nf
        + wf * sum(d * d for d in dfs) / nc,
        "n_frames": nf,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_error_metrics_match_a_direct_loop(ap, dtype, seed):
    rng = np.random.default_rng(seed)
    n_atoms = np.full(6, 24) if seed == 0 else rng.integers(1, 30, size=6)
    n = int(n_atoms.sum())
    e_ref = rng.normal(-1000, 30, size=6).astype(dtype)
    e_pred = (e_ref + rng.normal(0, 0.01, size=6)).astype(dtype)
    f_ref = rng.normal(0, 1, size=(n, 3)).astype(dtype)
    f_pred = (f_ref + rng.normal(0, 0.01, size=(n, 3))).astype(dtype)
    got = ap.error_metrics(e_pred, e_ref, n_atoms, f_pred, f_ref, 0.01, 0.99)
    want = _slow_metrics(e_pred, e_ref, n_atoms, f_pred, f_ref, 0.01, 0.99)
    assert got.keys() == want.keys()
    worst = max((abs(got[k] - want[k]) / max(abs(want[k]), 1e-300), k) for k in want)
    assert worst[0] < 1e-12, f"worst relative deviation {worst[0]:.3g} in {worst[1]}: {got} vs {want}"


# ----------------------------------------------------------------------------------------------------------
# energy-shift correction and the stop rule
# ----------------------------------------------------------------------------------------------------------
def test_energy_shift_correction_recovers_known_shifts(ap):
    rng = np.random.default_rng(3)
    elements = np.array([1, 6, 7, 8])
    numbers = [rng.choice(elements, size=rng.integers(5, 20)) for _ in range(40)]
    d_true = {1: 0.3, 6: -1.2, 7: 0.05, 8: 2.5}
    r = np.array([sum(d_true[int(z)] for z in zs) for zs in numbers])
    got = ap.energy_shift_correction(numbers, r)
    assert got.keys() == d_true.keys()
    worst = max(abs(got[z] - d_true[z]) for z in d_true)
    assert worst < 1e-10, f"worst shift error {worst:.3g} eV: {got}"


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_energy_shift_correction_single_composition_is_minimum_norm(ap, scale):
    # one composition (azobenzene C12 H10 N2): only sum n_Z d_Z is determined; the minimum-norm solution is
    # c * mean(r) / (c . c) with c the element counts
    zs = np.array([6] * 12 + [1] * 10 + [7] * 2)
    r = scale * np.random.default_rng(0).normal(1.0, 0.5, size=9)
    got = ap.energy_shift_correction([zs] * 9, r)
    c = {1: 10.0, 6: 12.0, 7: 2.0}
    cc = sum(v * v for v in c.values())
    for z, n in c.items():
        want = n * r.mean() / cc
        assert abs(got[z] - want) <= 1e-12 * abs(want), (z, got[z], want)
    assert abs(sum(c[z] * got[z] for z in c) - r.mean()) <= 1e-12 * abs(r.mean())


@pytest.mark.parametrize(
    "numbers, residuals, fragment",
    [([np.array([1, 6])], [], "residuals"), ([np.array([1])], [np.nan], "non-finite"),
     ([np.array([1])] * 2, [1.0], "residuals")],
)  # fmt: skip
def test_energy_shift_correction_rejects_bad_input(ap, numbers, residuals, fragment):
    with pytest.raises(ValueError, match=fragment):
        ap.energy_shift_correction(numbers, residuals)


def test_converged_is_the_parents_stop_rule(ap):
    assert ap.converged([1e-5], 25, 1e-5, 25)
    assert not ap.converged([1e-5], 24, 1e-5, 25)
    assert not ap.converged([2e-5], 99, 1e-5, 25)
    assert not ap.converged([1e-5, 1e-4], 30, 1e-5, 25)


# ----------------------------------------------------------------------------------------------------------
# budget, run folder, resume (shared with anchor_mace.py)
# ----------------------------------------------------------------------------------------------------------
def test_budget_state(ap):
    assert ap.budget_state(0, 0.0, 1, None) is None
    assert ap.budget_state(1, 0.0, 1, None) == "epochs"
    assert ap.budget_state(0, 5.6 * 3600 - 1e-6, None, 5.6) is None
    assert ap.budget_state(0, 5.6 * 3600, None, 5.6) == "cpu_budget"
    assert ap.budget_state(3, 9e9, 3, 1.0) == "epochs"


def test_resume_bookkeeping(ap, tmp_path, capsys):
    import _anchor  # put on sys.path by the script
    import torch

    a = ap.parse_args(["--epochs", "2"])
    ap.check_resume_config(ap._recipe(a), ap._recipe(ap.parse_args(["--cpu-hours", "3", "--resume"])))
    with pytest.raises(ValueError) as exc:
        ap.check_resume_config(
            ap._recipe(a), ap._recipe(ap.parse_args(["--epochs", "2", "--features", "64"]))
        )
    assert "peer_model: checkpoint" in str(exc.value) and "'features': 64" in str(exc.value)
    assert set(ap.RECIPE_KEYS) <= set(vars(a))

    run = tmp_path / "run"
    last, best = _anchor.claim_run_dir(run, resume=False)
    assert (last, best) == (run / "last.pt", run / "best.pt") and run.is_dir()
    assert _anchor.resume_checkpoint(last, ap._recipe(a), resume=True) is None  # nothing to resume yet
    state = _anchor.new_state()
    state.update(epoch=3, cpu_s=7.5)
    _anchor.save_torch(last, {"recipe": ap._recipe(a), "state": state, "x": torch.arange(3)})
    with pytest.raises(SystemExit) as exc:  # not overwritten silently
        _anchor.claim_run_dir(run, resume=False)
    assert exc.value.code == 2 and "--resume" in capsys.readouterr().err
    assert _anchor.claim_run_dir(run, resume=True) == (last, best)
    ck = _anchor.resume_checkpoint(last, ap._recipe(a), resume=True)
    assert ck["state"]["epoch"] == 3 and ck["x"].tolist() == [0, 1, 2]
    assert _anchor.resume_checkpoint(last, ap._recipe(a), resume=False) is None
    other = ap._recipe(ap.parse_args(["--epochs", "2", "--lr", "0.002"]))
    with pytest.raises(SystemExit) as exc:
        _anchor.resume_checkpoint(last, other, resume=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        exc.value.code == 2 and err[-1].startswith("error:") and "lr: checkpoint 0.001, now 0.002" in err[-1]
    )


# ----------------------------------------------------------------------------------------------------------
# the parent's curve at equal time
# ----------------------------------------------------------------------------------------------------------
ROWS = [  # epoch, val_loss, val_energy_mae, val_forces_mae, epoch_time_s
    (1, 0.50, 300.0, 90.0, 10.0),
    (2, 0.20, 100.0, 40.0, 12.0),
    (3, 0.30, 120.0, 45.0, 11.0),
    (4, 0.10, 80.0, 30.0, 20.0),
]


def _write_parent(folder: Path, rows=ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "epoch,train_loss,val_loss,val_energy_mae,val_forces_mae,lr,epoch_time_s\n" + "".join(
        f"{e},1.0,{vl},{em},{fm},0.001,{t}\n" for e, vl, em, fm, t in rows
    )
    (folder / "metrics.csv").write_text(text)
    return folder


def _slow_at_time(rows, t):
    """Brute force: walk the epochs, adding times, keep what was finished by t."""
    cum, done = 0.0, []
    for r in rows:
        cum += r[4]
        if cum <= t:
            done.append(r)
    if not done:
        return 0, None, None
    best = done[0]
    for r in done:
        if r[1] < best[1]:
            best = r
    return len(done), done[-1][3], best[3]


@pytest.mark.parametrize("t", [0.0, 9.99, 10.0, 21.0, 22.0, 33.0, 40.0, 53.0, 1e6])
def test_parent_at_time_matches_brute_force(ap, tmp_path, t):
    import _anchor

    curve = _anchor.parent_curve(_write_parent(tmp_path / "p"))
    assert [c["time_s"] for c in curve] == pytest.approx([10.0, 22.0, 33.0, 53.0])
    got = _anchor.parent_at_time(curve, t)
    n, last, best = _slow_at_time(ROWS, t)
    assert got["epochs_done"] == n
    assert (got["last"] and got["last"]["val_forces_mae"]) == last
    assert (got["best"] and got["best"]["val_forces_mae"]) == best
    assert got["beyond_curve"] is (t > 53.0) and got["parent_total_time_s"] == pytest.approx(53.0)


def test_parent_at_time_rejects_bad_input(ap, tmp_path):
    import _anchor

    curve = _anchor.parent_curve(_write_parent(tmp_path / "p"))
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="time_s"):
            _anchor.parent_at_time(curve, bad)
    with pytest.raises(ValueError, match="empty"):
        _anchor.parent_at_time([], 1.0)
    assert _anchor.parent_curve(tmp_path / "none") == []
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "metrics.csv").write_text("epoch,val_loss,val_energy_mae,val_forces_mae\n1,0.1,1,2\n")
    with pytest.raises(ValueError, match="epoch_time_s"):
        _anchor.parent_curve(tmp_path / "q")


def test_equal_time_block_uses_the_chosen_clock(ap, tmp_path):
    import _anchor

    parent = _write_parent(tmp_path / "p")
    history = [
        {"epoch": 1, "cpu_s_total": 11.0, "wall_s_total": 30.0, "val_forces_mae": 70.0},
        {"epoch": 2, "cpu_s_total": 25.0, "wall_s_total": 60.0, "val_forces_mae": 50.0},
    ]
    cpu = _anchor.equal_time_block(parent, "cpu", history)
    assert cpu["clock"] == "cpu" and cpu["at_end"]["time_s"] == 25.0 and cpu["at_end"]["epochs_done"] == 2
    assert [r["parent_val_forces_mae_best"] for r in cpu["per_epoch"]] == [90.0, 40.0]
    wall = _anchor.equal_time_block(parent, "wall", history)
    assert wall["at_end"]["epochs_done"] == 4 and wall["at_end"]["beyond_curve"] is True
    assert [r["parent_epochs_done"] for r in wall["per_epoch"]] == [2, 4]
    assert _anchor.equal_time_block(parent, "off", history) is None
    assert _anchor.equal_time_block(tmp_path / "none", "cpu", history) is None
    rows = _anchor.comparison_rows(
        "peer",
        {"energy_mae": 1.0, "energy_mae_per_atom": 0.1, "forces_mae": 2.0, "n_frames": 3},
        {"energy_mae": 1.5, "energy_mae_per_atom": 0.15, "forces_mae": 2.5, "n_frames": 4},
        _anchor.parent_figures(parent),
        24,
        cpu,
    )
    assert rows[-1][0] == "ours (parent)" and "equal cpu time" in rows[-1][1] and rows[-1][4] == 40.0


def test_the_parents_cpu_clock_is_used_when_every_row_has_it(ap, tmp_path):
    """With ``epoch_cpu_s`` in every row the CPU comparison sums it (not the wall times); the wall comparison,
    and a run where one row lacks it (resumed from an older trainer), sum ``epoch_time_s``."""
    import _anchor

    cpu_times = [4.0, 5.0, 6.0, 7.0]  # wall times of ROWS: 10, 12, 11, 20

    def write(folder, cells):
        folder.mkdir(parents=True)
        text = "epoch,val_loss,val_energy_mae,val_forces_mae,lr,epoch_time_s,epoch_cpu_s\n" + "".join(
            f"{e},{vl},{em},{fm},0.001,{t},{c}\n" for (e, vl, em, fm, t), c in zip(ROWS, cells)
        )
        (folder / "metrics.csv").write_text(text)
        return folder

    both = write(tmp_path / "both", cpu_times)
    assert _anchor.parent_clock_column(both, "cpu") == "epoch_cpu_s"
    assert _anchor.parent_clock_column(both, "wall") == "epoch_time_s"
    history = [{"epoch": 1, "cpu_s_total": 15.0, "wall_s_total": 15.0, "val_forces_mae": 70.0}]
    cpu = _anchor.equal_time_block(both, "cpu", history)
    assert cpu["parent_column"] == "epoch_cpu_s" and cpu["at_end"]["epochs_done"] == 3  # 4 + 5 + 6 <= 15
    wall = _anchor.equal_time_block(both, "wall", history)
    assert wall["parent_column"] == "epoch_time_s" and wall["at_end"]["epochs_done"] == 1  # 10 <= 15 < 22
    assert _anchor.parent_figures(both)["train_cpu_s"] == pytest.approx(22.0)
    mixed = write(tmp_path / "mixed", ["", 5.0, 6.0, 7.0])
    assert _anchor.parent_clock_column(mixed, "cpu") == "epoch_time_s"
    assert _anchor.parent_figures(mixed)["train_cpu_s"] is None
    with pytest.raises(ValueError, match="clock"):
        _anchor.parent_clock_column(both, "off")
    with pytest.raises(ValueError, match="column"):
        _anchor.parent_curve(both, "val_loss")


def test_the_real_parents_curve(ap):
    import _anchor

    if not (PARENT / "metrics.csv").is_file() or not PARENTS_JSON.is_file():
        pytest.skip("the parent's run folder or parents.json is not here")
    curve = _anchor.parent_curve(PARENT)
    rec = {p["name"]: p for p in json.loads(PARENTS_JSON.read_text())["parents"]}["azobenzene-gfn2-fp32"]
    assert curve[-1]["time_s"] == pytest.approx(3600 * rec["epoch_time_h"], rel=1e-9)
    end = _anchor.parent_at_time(curve, curve[-1]["time_s"])
    assert end["best"]["epoch"] == rec["best_val_epoch"]
    assert end["best"]["val_forces_mae"] == pytest.approx(rec["val_forces_mae"], rel=1e-12)


# ----------------------------------------------------------------------------------------------------------
# end to end (only where so3krates-torch is importable, i.e. in its own venv)
# ----------------------------------------------------------------------------------------------------------
def _tiny(parent_run):
    return ["--n-train", "10", "--n-val", "3", "--n-test", "4", "--features", "16", "--layers", "1",
            "--log-every", "100", "--parent-run", str(parent_run)]  # fmt: skip


@pytest.mark.slow
def test_train_resume_equals_uninterrupted(ap, tmp_path, capsys):
    pytest.importorskip("so3krates_torch")
    import torch

    # a synthetic parent whose epochs are short enough for the equal-time lookup to credit it with some
    parent = _write_parent(tmp_path / "parent", [(e, 1.0 / e, 10.0, 50.0 / e, 1e-4) for e in range(1, 6)])
    tiny = _tiny(parent)
    old = torch.get_default_dtype()
    try:
        full = ap.main(
            ["--epochs", "2", "--run-dir", str(tmp_path / "a"), "--json", str(tmp_path / "a.json"), *tiny]
        )
        ap.main(["--epochs", "1", "--run-dir", str(tmp_path / "b"), "--json", "", *tiny])
        with pytest.raises(SystemExit) as exc:  # an existing run is not overwritten silently
            ap.main(["--epochs", "2", "--run-dir", str(tmp_path / "b"), "--json", "", *tiny])
        assert exc.value.code == 2
        with pytest.raises(SystemExit) as exc:  # nor resumed with another recipe
            ap.main(["--epochs", "2", "--resume", "--lr", "0.002", "--run-dir", str(tmp_path / "b"),
                     "--json", "", *tiny])  # fmt: skip
        assert exc.value.code == 2
        resumed = ap.main(
            ["--epochs", "2", "--resume", "--run-dir", str(tmp_path / "b"), "--json", "", *tiny]
        )
    finally:
        torch.set_default_dtype(old)
    keys = ("train_loss", "val_loss", "val_forces_mae", "val_energy_mae")
    assert [[r[k] for k in keys] for r in resumed["history"]] == [
        [r[k] for k in keys] for r in full["history"]
    ]
    assert resumed["test"] == full["test"] and resumed["validation"] == full["validation"]
    assert resumed["training"]["cpu_s"] > full["history"][0]["cpu_s_total"]  # summed over both sessions
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["training"]["epochs"] == 2 and saved["training"]["stop_reason"] == "epochs"
    assert saved["test"]["n_frames"] == 4 and saved["validation"]["n_frames"] == 3
    assert 0 < saved["test"]["forces_mae"] < 1e4 and np.isfinite(saved["test"]["energy_mae"])
    assert saved["size"]["equal_size"] is False
    assert saved["size"]["parameters"]["ours"] == ap.our_parameter_count(saved["size"]["ours"])
    assert saved["size"]["parameters"]["peer"] > 0 and saved["model"]["avg_num_neighbors"] > 1
    assert [r["epoch"] for r in saved["history"]] == [1, 2]
    cpu = [r["cpu_s_total"] for r in saved["history"]]
    assert 0 < cpu[0] < cpu[1] == pytest.approx(saved["training"]["cpu_s"])
    eq = saved["parent_at_equal_time"]
    assert eq["clock"] == "cpu" and eq["at_end"]["time_s"] == pytest.approx(cpu[-1])
    assert cpu[-1] > 1e-3 and eq["at_end"]["epochs_done"] == 5 and eq["at_end"]["beyond_curve"] is True
    assert saved["parent"]["best_epoch"] == 5 and saved["data"]["split_equals_parent"] is None
    # the refit moves the training frames' mean energy residual to zero (one composition: the total shift is
    # fully determined); float32 energies of ~1 keV resolve ~0.1 meV
    refit = saved["energy_shift_refit"]
    assert refit["n_frames"] == 10 and abs(refit["residual_mean_mev_before"]) > 1.0
    assert abs(refit["residual_mean_mev_after"]) < 0.5, refit
