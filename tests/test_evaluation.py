"""Evaluation on a checkpoint's own test split: accuracy, force LEE, and the naive INT8 PTQ baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import morse_dataset, tiny_config
from spherequant.models import checkpoints
from spherequant.models import data as data_mod
from spherequant.models.checkpoints import read_checkpoint
from spherequant.models.evaluation import evaluate_checkpoint, force_lee, naive_int8_ptq
from spherequant.models.train import export_model, train


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny float64 FP32 model trained 2 epochs on a Morse data set written to disk (so the checkpoint's
    ``dataset`` entry is a real path the evaluation can reload)."""
    tmp = tmp_path_factory.mktemp("eval")
    ds = morse_dataset(n_frames=48)
    path = tmp / "morse.npz"
    data_mod.save_npz(ds, path)
    cfg = tiny_config(tmp, dataset=str(path), epochs=2, evaluate_test=False)
    train(cfg)
    return export_model(Path(cfg.output_dir) / "best.pt", tmp / "fp32.pt"), path


def test_evaluate_checkpoint_uses_the_test_split_and_matches_a_direct_computation(exported):
    ckpt, path = exported
    res = evaluate_checkpoint(ckpt, lee_frames=5, n_rotations=3)
    ds = data_mod.load_npz(path)
    sp = data_mod.split(len(ds), n_train=24, n_val=8, seed=0)
    assert res["n_frames"] == len(sp.test) == 48 - 32
    model = checkpoints.load_model(ckpt)
    e_err, f_err = [], []
    for i in sp.test:
        f = ds[int(i)]
        out = model(torch.as_tensor(f["numbers"]), torch.as_tensor(f["positions"]))
        e_err.append(abs(float(out["energy"][0]) - float(f["energy"])))
        f_err.append(np.abs(out["forces"].detach().numpy() - f["forces"]).ravel())
    assert res["energy_mae"] == pytest.approx(1000 * np.mean(e_err), rel=1e-9)
    assert res["forces_mae"] == pytest.approx(1000 * np.mean(np.concatenate(f_err)), rel=1e-9)
    # float64 FP32 So3krates is exactly equivariant: LEE at rounding level
    assert res["lee_mean"] < 1e-8 and res["lee_max"] < 1e-7, res
    assert res["lee_frames"] == 5 and res["lee_rotations"] == 3


def test_naive_int8_breaks_equivariance_of_the_same_model(exported):
    ckpt, _ = exported
    fp32 = evaluate_checkpoint(ckpt, lee_frames=5, n_rotations=3)
    naive = naive_int8_ptq(ckpt, calibration_frames=16, lee_frames=5, n_rotations=3)
    assert naive["method"] == "naive_int8"
    assert naive["n_frames"] == fp32["n_frames"]
    assert naive["lee_mean"] > 1e3 * max(fp32["lee_mean"], 1e-12), (naive["lee_mean"], fp32["lee_mean"])
    assert np.isfinite(naive["forces_mae"]) and np.isfinite(naive["energy_mae"])


def test_force_lee_rejects_bad_input(exported):
    ckpt, path = exported
    model = checkpoints.load_model(ckpt)
    ds = data_mod.load_npz(path)
    with pytest.raises(ValueError, match="indices"):
        force_lee(model, ds, [])
    mixed_z = data_mod.MolecularDataset(
        [np.array([6, 8, 1, 1, 1, 1]), np.array([6, 8, 1, 1])],
        [ds.positions[:6], ds.positions[:4]],
        np.zeros(2),
        [np.zeros((6, 3)), np.zeros((4, 3))],
    )
    assert not mixed_z.fixed_composition
    with pytest.raises(ValueError, match="one molecule"):
        force_lee(model, mixed_z, [0, 1])


def test_evaluate_checkpoint_needs_a_training_config(tmp_path, exported):
    ckpt, _ = exported
    raw = read_checkpoint(ckpt)
    raw.pop("train_config")
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    with pytest.raises(ValueError, match="training configuration"):
        evaluate_checkpoint(bad)


def test_evaluate_command(exported, tmp_path, capsys):
    from spherequant.models.cli import main

    ckpt, _ = exported
    out = tmp_path / "eval.json"
    code = main(
        ["evaluate", str(ckpt), "--lee-frames", "3", "--rotations", "2", "--naive-int8", "--json", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "naive INT8 (PTQ)" in text and "forces_mae" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["model", "naive INT8 (PTQ)"]
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert main(["evaluate", str(ckpt), "--rotations", "0"]) == 2
