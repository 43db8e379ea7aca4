"""Tests of benchmarks/anchor_mace.py (the MACE anchor row).

The parts that need no MACE (argument parsing, the split, the metrics, the budget and resume bookkeeping,
the parent's figures) run in the project's environment; the end-to-end training tests need ``mace-torch``
(installed only in its own venv, see the script's docstring) and skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PARENT = ROOT / "benchmarks" / "runs" / "azobenzene_fp32_parent"


@pytest.fixture(scope="module")
def am():
    return load_script("benchmarks/anchor_mace.py")


# ----------------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------------
def test_defaults_are_the_issue_recipe(am):
    a = am.parse_args(["--epochs", "3"])
    got = {
        k: getattr(a, k)
        for k in (
            "channels",
            "max_L",
            "correlation",
            "interactions",
            "cutoff",
            "batch_size",
            "lr",
            "amsgrad",
            "ema_decay",
            "energy_weight",
            "forces_weight",
            "n_train",
            "n_val",
            "split_seed",
        )
    }
    want = {
        "channels": 64,
        "max_L": 1,
        "correlation": 3,
        "interactions": 2,
        "cutoff": 5.0,
        "batch_size": 5,
        "lr": 0.01,
        "amsgrad": True,
        "ema_decay": 0.99,
        "energy_weight": 1.0,
        "forces_weight": 100.0,
        "n_train": 950,
        "n_val": 50,
        "split_seed": 0,
    }
    assert got == want
    assert a.epochs == 3 and a.cpu_hours is None and not a.resume
    b = am.parse_args(["--cpu-hours", "1.5", "--resume", "--run-dir", "x"])
    assert b.epochs is None and b.cpu_hours == 1.5 and b.resume and b.run_dir == "x"
    assert a.equal_time == "cpu"
    assert am.parse_args(["--epochs", "1", "--equal-time", "wall"]).equal_time == "wall"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "--epochs"),
        (["--epochs", "0"], "must be > 0"),
        (["--cpu-hours", "-1"], "must be > 0"),
        (["--epochs", "1", "--ema-decay", "1"], "--ema-decay"),
        (["--epochs", "1", "--forces-weight", "-1"], "must be >= 0"),
        (["--epochs", "1", "--lr-factor", "2"], "--lr-factor"),
        (["--epochs", "1", "--dtype", "float16"], "--dtype"),
        (["--epochs", "1", "--equal-time", "gpu"], "--equal-time"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(am, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        am.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1], err
    assert fragment in err[-1], err


# ----------------------------------------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------------------------------------
def test_split_is_ours_and_the_parents(am, tmp_path):
    from spherequant.models import data as data_mod

    ds = data_mod.load_dataset("azobenzene-gfn2-500K")
    sp, same = am.load_split(len(ds), 950, 50, 0)
    ref = data_mod.split(ds, 950, 50, seed=0)
    for a, b in zip(sp, ref):
        np.testing.assert_array_equal(a, b)
    assert same is None
    assert (len(sp.train), len(sp.val), len(sp.test)) == (950, 50, len(ds) - 1000)
    if (PARENT / "split" / "train.npy").is_file():  # the shipped parent's saved split (read only)
        assert am.load_split(len(ds), 950, 50, 0, PARENT / "split")[1] is True
    # a folder written by spherequant's own split() matches; a perturbed one does not; none gives None
    data_mod.split(len(ds), 950, 50, seed=0, index_dir=tmp_path / "s")
    assert am.load_split(len(ds), 950, 50, 0, tmp_path / "s")[1] is True
    assert am.load_split(len(ds), 950, 50, 1, tmp_path / "s")[1] is False
    assert am.load_split(len(ds), 949, 50, 0, tmp_path / "s")[1] is False
    assert am.load_split(len(ds), 950, 50, 0, tmp_path / "empty")[1] is None
    assert not (tmp_path / "empty").exists()  # nothing written


# ----------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------
def _slow_metrics(e_pred, e_ref, n_atoms, f_pred, f_ref, we, wf):
    """Plain loops, float64: the independent reference of error_metrics."""
    n_frames = len(e_pred)
    e_abs = e_abs_atom = e_sq = e_sq_atom = 0.0
    for i in range(n_frames):
        d = float(e_pred[i]) - float(e_ref[i])
        e_abs += abs(d)
        e_abs_atom += abs(d) / int(n_atoms[i])
        e_sq += d * d
        e_sq_atom += (d / int(n_atoms[i])) ** 2
    f_abs = f_sq = 0.0
    count = 0
    for row_p, row_r in zip(f_pred, f_ref):
        for a, b in zip(row_p, row_r):
            d = float(a) - float(b)
            f_abs += abs(d)
            f_sq += d * d
            count += 1
    return {
        "energy_mae": 1000 * e_abs / n_frames,
        "energy_mae_per_atom": 1000 * e_abs_atom / n_frames,
        "energy_rmse": 1000 * (e_sq / n_frames) ** 0.5,
        "forces_mae": 1000 * f_abs / count,
        "forces_rmse": 1000 * (f_sq / count) ** 0.5,
        "loss": we * e_sq_atom / n_frames + wf * f_sq / count,
        "n_frames": n_frames,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_metrics_match_a_direct_loop(am, dtype, seed):
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(1, 30, size=7)
    n = int(n_atoms.sum())
    e_ref = rng.normal(-900, 50, size=7).astype(dtype)
    e_pred = (e_ref + rng.normal(0, 0.05, size=7)).astype(dtype)
    f_ref = rng.normal(0, 1, size=(n, 3)).astype(dtype)
    f_pred = (f_ref + rng.normal(0, 0.02, size=(n, 3))).astype(dtype)
    got = am.error_metrics(e_pred, e_ref, n_atoms, f_pred, f_ref, 1.0, 100.0)
    want = _slow_metrics(e_pred, e_ref, n_atoms, f_pred, f_ref, 1.0, 100.0)
    assert got.keys() == want.keys()
    worst = max((abs(got[k] - want[k]) / max(abs(want[k]), 1e-300), k) for k in want)
    assert worst[0] < 1e-12, f"worst relative deviation {worst[0]:.3g} in {worst[1]}: {got} vs {want}"


def test_error_metrics_exact_small_case(am):
    # two frames of 1 and 2 atoms; errors chosen by hand
    got = am.error_metrics(
        [1.0, 2.0],
        [1.002, 1.996],
        [1, 2],
        np.zeros((3, 3)),
        np.array([[0.001, 0, 0], [0, -0.002, 0], [0, 0, 0.003]]),
        1.0,
        100.0,
    )
    assert got["energy_mae"] == pytest.approx(3.0, rel=1e-12)  # (2 + 4) / 2 meV
    assert got["energy_mae_per_atom"] == pytest.approx(2.0, rel=1e-12)  # (2 / 1 + 4 / 2) / 2
    assert got["forces_mae"] == pytest.approx(6.0 / 9, rel=1e-12)  # per component
    assert got["loss"] == pytest.approx((0.002**2 + 0.002**2) / 2 + 100 * 14e-6 / 9, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"e_pred": []}, "e_pred"),
        ({"e_ref": [0.0]}, "e_ref"),
        ({"n_atoms": [1.5, 2.0]}, "n_atoms"),
        ({"n_atoms": [0, 3]}, "n_atoms"),
        ({"f_pred": np.zeros((2, 3))}, "f_pred"),
        ({"f_ref": np.zeros((3, 2))}, "f_ref"),
        ({"e_pred": [np.nan, 0.0]}, "e_pred"),
        ({"f_ref": np.full((3, 3), np.inf)}, "f_ref"),
    ],
)
def test_error_metrics_reject_bad_input(am, kwargs, fragment):
    args = {
        "e_pred": [0.0, 0.0],
        "e_ref": [0.0, 0.0],
        "n_atoms": [1, 2],
        "f_pred": np.zeros((3, 3)),
        "f_ref": np.zeros((3, 3)),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        am.error_metrics(**args)


# ----------------------------------------------------------------------------------------------------------
# budget, resume, parent
# ----------------------------------------------------------------------------------------------------------
def test_budget_state(am):
    assert am.budget_state(0, 0.0, 3, None) is None
    assert am.budget_state(3, 0.0, 3, None) == "epochs"
    assert am.budget_state(2, 3599.9, None, 1.0) is None
    assert am.budget_state(2, 3600.0, None, 1.0) == "cpu_budget"
    assert am.budget_state(1, 7200.0, 5, 1.0) == "cpu_budget"  # whichever is spent first
    assert am.budget_state(5, 10.0, 5, 1.0) == "epochs"


def test_resume_config_check(am):
    a = am.parse_args(["--epochs", "2"])
    saved = am._recipe(a)
    am.check_resume_config(saved, am._recipe(am.parse_args(["--epochs", "9", "--run-dir", "y"])))
    am.check_resume_config(saved, am._recipe(am.parse_args(["--cpu-hours", "2", "--resume"])))
    with pytest.raises(ValueError) as exc:
        am.check_resume_config(
            saved, am._recipe(am.parse_args(["--epochs", "2", "--lr", "0.02", "--n-train", "900"]))
        )
    assert "lr: checkpoint 0.01, now 0.02" in str(exc.value)
    assert "n_train: checkpoint 950, now 900" in str(exc.value)
    assert "seed" not in str(exc.value)
    assert set(am.RECIPE_KEYS) <= set(vars(a))


def test_parent_figures(am, tmp_path):
    assert am.parent_figures(tmp_path) is None
    rows = [(1, 0.5, 300.0, 40.0, 10.0), (2, 0.2, 100.0, 25.0, 12.0), (3, 0.3, 90.0, 30.0, 11.0)]
    text = "epoch,train_loss,val_loss,val_energy_mae,val_forces_mae,lr,epoch_time_s\n" + "".join(
        f"{e},1.0,{vl},{em},{fm},0.001,{t}\n" for e, vl, em, fm, t in rows
    )
    (tmp_path / "metrics.csv").write_text(text)
    p = am.parent_figures(tmp_path)
    assert (p["best_epoch"], p["val_energy_mae"], p["val_forces_mae"]) == (2, 100.0, 25.0)
    assert p["epochs_written"] == 3 and p["train_wall_s"] == pytest.approx(33.0)
    assert p["test"] is None and p["n_val"] is None
    (tmp_path / "run.json").write_text(
        json.dumps({"train_config": {"n_train": 950, "n_val": 50, "split_seed": 0}})
    )
    (tmp_path / "test_metrics.json").write_text(json.dumps({"energy_mae": 5.0, "forces_mae": 11.0}))
    p = am.parent_figures(tmp_path)
    assert (p["n_train"], p["n_val"], p["split_seed"]) == (950, 50, 0)
    assert p["test"] == {"energy_mae": 5.0, "forces_mae": 11.0}


# ----------------------------------------------------------------------------------------------------------
# end to end (only where mace-torch is importable, i.e. in its own venv)
# ----------------------------------------------------------------------------------------------------------
TINY = [
    "--n-train",
    "10",
    "--n-val",
    "3",
    "--n-test",
    "4",
    "--channels",
    "8",
    "--log-every",
    "100",
    "--parent-run",
    "none",
]


def test_stored_state_drops_rebuilt_buffers_and_checks_them(am, capsys):
    """Checkpoints keep every tensor but the coupling matrices the constructor rebuilds, whose digests a load
    checks; a full state dict (older checkpoints) still loads."""
    import torch

    def build(seed=0):
        torch.manual_seed(seed)
        m = torch.nn.Module()
        m.lin = torch.nn.Linear(3, 2)
        m.sc = torch.nn.Module()
        m.sc.register_buffer("U_matrix_3", torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4))
        return m

    src = build(seed=1)
    weight = src.lin.weight.detach().clone()
    stored = am.stored_state(src)
    assert set(stored["tensors"]) == {"lin.weight", "lin.bias"} and set(stored["rebuilt"]) == {
        "sc.U_matrix_3"
    }
    with torch.no_grad():
        src.lin.weight.add_(1.0)  # the stored tensors are copies
    dst = build(seed=2)
    am.load_stored_state(dst, stored)
    assert torch.equal(dst.lin.weight, weight) and torch.equal(dst.lin.bias, src.lin.bias)
    full = build(seed=3)
    am.load_stored_state(full, src.state_dict())  # an older checkpoint's full state
    assert torch.equal(full.lin.weight, src.lin.weight)
    other = build()
    other.sc.U_matrix_3[0, 0, 0] = -1.0  # a rebuilt buffer that is not what was stored
    with pytest.raises(SystemExit) as exc:
        am.load_stored_state(other, stored)
    assert exc.value.code == 2 and "sc.U_matrix_3 differs" in capsys.readouterr().err
    lacking = build()
    del lacking.sc.U_matrix_3
    with pytest.raises(SystemExit):
        am.load_stored_state(lacking, stored)
    assert "sc.U_matrix_3" in capsys.readouterr().err


@pytest.mark.slow
def test_train_resume_equals_uninterrupted(am, tmp_path, capsys):
    pytest.importorskip("mace")
    pytest.importorskip("torch_ema")
    import torch

    old = torch.get_default_dtype()
    try:
        full = am.main(
            ["--epochs", "2", "--run-dir", str(tmp_path / "a"), "--json", str(tmp_path / "a.json"), *TINY]
        )
        am.main(["--epochs", "1", "--run-dir", str(tmp_path / "b"), "--json", "", *TINY])
        with pytest.raises(SystemExit) as exc:  # an existing run is not overwritten silently
            am.main(["--epochs", "2", "--run-dir", str(tmp_path / "b"), "--json", "", *TINY])
        assert exc.value.code == 2
        with pytest.raises(SystemExit):  # nor resumed with another recipe
            am.main(
                [
                    "--epochs",
                    "2",
                    "--resume",
                    "--lr",
                    "0.02",
                    "--run-dir",
                    str(tmp_path / "b"),
                    "--json",
                    "",
                    *TINY,
                ]
            )
        resumed = am.main(
            ["--epochs", "2", "--resume", "--run-dir", str(tmp_path / "b"), "--json", "", *TINY]
        )
    finally:
        torch.set_default_dtype(old)
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in full["history"]]
    assert resumed["test"] == full["test"]
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["training"]["epochs"] == 2 and saved["training"]["stop_reason"] == "epochs"
    assert saved["test"]["n_frames"] == 4 and saved["validation"]["n_frames"] == 3
    assert np.isfinite(saved["test"]["forces_mae"]) and saved["test"]["forces_mae"] > 0
