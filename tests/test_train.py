"""Training: config validation, a tiny run on synthetic data, exact resume, CLI, DDP on CPU (gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers import CONFIG_DIR, TINY_MODEL, ddp_worker, free_port, tiny_config
from spherequant.models import data as data_mod
from spherequant.models.calculator import SphereQuantCalculator
from spherequant.models.checkpoints import read_checkpoint
from spherequant.models.train import TrainConfig, export_model, load_config, train
from spherequant.models.train_cli import main as cli_main


# ------------------------------------------------------------------------------------------ config
def test_shipped_configs_validate():
    cfg = load_config(CONFIG_DIR / "azobenzene_fp32.yaml")
    assert cfg.dataset == "azobenzene-gfn2-500K" and cfg.n_train == 950 and cfg.n_val == 50
    # the paper's GAQ model: degree-1 equivariant features only (MDDQ quantizes 3-vectors)
    assert cfg.model["degrees"] == [1] and cfg.model["num_features"] >= 64
    assert load_config(CONFIG_DIR / "tiny_test.yaml").epochs >= 1


@pytest.mark.parametrize(
    ("values", "exc", "word"),
    [
        ({"epoks": 3}, ValueError, "unknown config key"),
        ({"epochs": "3"}, TypeError, "epochs"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"ema_decay": 1.0}, ValueError, "ema_decay"),
        ({"scheduler": "cosine"}, ValueError, "scheduler"),
        ({"dtype": "float16"}, ValueError, "dtype"),
        ({"progress": "yes"}, TypeError, "progress"),
        ({"model": {"num_feature": 8}}, ValueError, "num_feature"),
        ({"model": {"num_features": 10, "num_heads": 3}}, ValueError, "divisible"),
        ({"grad_clip": 0.0}, ValueError, "grad_clip"),
        ({"lr": 1e-6, "min_lr": 1e-5}, ValueError, "min_lr"),
        ({"init_checkpoint": 3}, TypeError, "init_checkpoint"),
    ],
)
def test_config_errors(values, exc, word):
    with pytest.raises(exc, match=word):
        TrainConfig.from_dict(values)


def test_config_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ValueError, match="YAML"):
        load_config(bad)
    ints = tmp_path / "ints.yaml"
    ints.write_text("lr: 1\ngrad_clip: 5\n")  # ints are accepted where floats are expected
    cfg = load_config(ints)
    assert isinstance(cfg.lr, float) and cfg.grad_clip == 5.0


# ------------------------------------------------------------------------------------------ training
def test_tiny_run_writes_outputs_and_learns(tmp_path, dataset):
    cfg = tiny_config(tmp_path, epochs=4, plot=True)
    result = train(cfg, dataset=dataset)
    out = Path(cfg.output_dir)
    for name in (
        "last.pt",
        "best.pt",
        "metrics.csv",
        "metrics.json",
        "learning_curve.png",
        "test_metrics.json",
    ):
        assert (out / name).is_file(), f"{name} missing"
    assert {p.stem for p in (out / "split").iterdir()} == {"train", "val", "test"}
    hist = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 5
    assert all(np.isfinite(h["val_forces_mae"]) and h["val_forces_mae"] > 0 for h in hist)
    assert hist[-1]["val_loss"] < hist[0]["val_loss"], f"validation loss did not drop: {hist}"
    best = min(hist, key=lambda h: h["val_loss"])
    assert read_checkpoint(out / "best.pt")["epoch"] == best["epoch"]
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["n_frames"] == len(dataset) - 32 and result["test"]["forces_mae"] == test["forces_mae"]
    # the normalisation comes from the training frames only
    ckpt = read_checkpoint(out / "last.pt")
    split = data_mod.split(len(dataset), 24, 8, seed=0)
    stats = data_mod.energy_statistics(dataset, split.train)
    assert ckpt["normalisation"]["scale"] == pytest.approx(stats.force_rms)
    for key in ("optimizer", "scheduler", "ema_state", "rng", "train_config", "model_config", "epoch"):
        assert key in ckpt


def test_validation_metrics_independent_computation(tmp_path, dataset):
    """The validation MAEs written per epoch equal a direct computation with the EMA weights (meV, meV/A)."""
    cfg = tiny_config(tmp_path, epochs=1)
    train(cfg, dataset=dataset)
    out = Path(cfg.output_dir)
    calc = SphereQuantCalculator.from_checkpoint(out / "last.pt")  # EMA weights
    val_idx = np.load(out / "split" / "val.npy")
    e_err, f_err = [], []
    for i in val_idx:
        frame = dataset[int(i)]
        pred = calc.model(torch.as_tensor(frame["numbers"]), torch.as_tensor(frame["positions"]))
        e_err.append(abs(pred["energy"].item() - frame["energy"]))
        f_err.append(np.abs(pred["forces"].detach().numpy() - frame["forces"]).ravel())
    row = json.loads((out / "metrics.json").read_text())[-1]
    assert row["val_energy_mae"] == pytest.approx(1000 * np.mean(e_err), rel=1e-9)
    assert row["val_forces_mae"] == pytest.approx(1000 * np.mean(np.concatenate(f_err)), rel=1e-9)
    # the exported inference checkpoint holds the same (EMA) model
    small = export_model(out / "last.pt", tmp_path / "pretrained" / "tiny.pt")
    calc2 = SphereQuantCalculator.from_checkpoint(small)
    for name, t in calc.model.state_dict().items():
        assert torch.equal(t, calc2.model.state_dict()[name]), name


@pytest.mark.parametrize("scheduler", ["exponential", "plateau"])
def test_resume_continues_exactly(tmp_path, dataset, scheduler):
    full = tiny_config(tmp_path / "a", epochs=2, scheduler=scheduler, patience=1, evaluate_test=False)
    train(full, dataset=dataset)
    half = tiny_config(tmp_path / "b", epochs=1, scheduler=scheduler, patience=1, evaluate_test=False)
    train(half, dataset=dataset)
    resumed = tiny_config(tmp_path / "b", epochs=2, scheduler=scheduler, patience=1, evaluate_test=False)
    train(resumed, dataset=dataset, resume=True)
    a = read_checkpoint(Path(full.output_dir) / "last.pt")
    b = read_checkpoint(Path(resumed.output_dir) / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model_state", "ema_state"):
        for name, tensor in a[key].items():
            diff = (tensor.double() - b[key][name].double()).abs().max().item() if tensor.numel() else 0.0
            assert diff == 0.0, f"{key}.{name} differs by {diff:.3e} after resume"
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_metrics_record_cpu_time_and_survive_a_resume_from_rows_without_it(tmp_path, dataset):
    """Each row has the epoch's wall and process CPU seconds; a run resumed from a checkpoint whose rows
    predate ``epoch_cpu_s`` still writes metrics.csv, the old rows' cell left blank."""
    import csv

    cfg = tiny_config(tmp_path, epochs=1, evaluate_test=False)
    train(cfg, dataset=dataset)
    last = Path(cfg.output_dir) / "last.pt"
    ckpt = read_checkpoint(last)
    row = ckpt["history"][0]
    assert 0 < row["epoch_cpu_s"] and 0 < row["epoch_time_s"], row
    for r in ckpt["history"]:  # as written before the column existed
        del r["epoch_cpu_s"]
    torch.save(ckpt, last)
    train(tiny_config(tmp_path, epochs=2, evaluate_test=False), dataset=dataset, resume=True)
    rows = list(csv.DictReader((Path(cfg.output_dir) / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["epoch_cpu_s"] == "" and float(rows[1]["epoch_cpu_s"]) > 0, rows


def test_resume_without_checkpoint_fails(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(tiny_config(tmp_path), dataset=dataset, resume=True)


def test_cli_trains_from_yaml(tmp_path, dataset, capsys):
    npz = data_mod.save_npz(dataset, tmp_path / "morse.npz")
    cfg = tiny_config(tmp_path, dataset=str(npz), epochs=1).to_dict()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main([str(path), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best"]["epoch"] == 1
    assert (Path(cfg["output_dir"]) / "best.pt").is_file()
    cfg["epochs"] = -1
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main([str(path)]) == 2
    assert "epochs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path, dataset):
    """torchrun-style DDP on CPU: 2 processes, gloo; replicas stay identical and rank 0 writes the files."""
    npz = data_mod.save_npz(dataset, tmp_path / "morse.npz")
    cfg = tiny_config(tmp_path, dataset=str(npz), epochs=1, evaluate_test=False).to_dict()
    out_file = str(tmp_path / "state")
    torch.multiprocessing.spawn(
        ddp_worker, args=(2, free_port(), cfg, str(npz), out_file), nprocs=2, join=True
    )
    s0, s1 = torch.load(f"{out_file}.0"), torch.load(f"{out_file}.1")
    for name in s0:
        assert torch.equal(s0[name], s1[name]), f"replicas differ in {name}"
    ckpt = read_checkpoint(Path(cfg["output_dir"]) / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    assert any(not torch.equal(ckpt["model_state"][k], v) for k, v in _init_state(cfg).items()), "no training"


def _init_state(cfg):
    from spherequant.models.so3krates import So3krates

    torch.manual_seed(cfg["seed"])
    kw = dict(cfg["model"])
    kw["degrees"] = tuple(kw["degrees"])
    return So3krates(**kw).double().state_dict()


# ------------------------------------------------------------------------------- energy refit, init
def _train_residuals(checkpoint, dataset, idx) -> np.ndarray:
    """E_ref - E_model (eV) per frame, one frame at a time through the calculator's model (EMA weights)."""
    calc = SphereQuantCalculator.from_checkpoint(checkpoint)
    out = []
    for i in idx:
        frame = dataset[int(i)]
        pred = calc.model(torch.as_tensor(frame["numbers"]), torch.as_tensor(frame["positions"]))
        out.append(frame["energy"] - pred["energy"].item())
    return np.array(out)


def test_refit_energy_shift_removes_offset_only(tmp_path, dataset):
    from spherequant.models.train import refit_energy_shift

    cfg = tiny_config(tmp_path, epochs=1, refit_energy_shift=False, evaluate_test=False)
    train(cfg, dataset=dataset)
    best = Path(cfg.output_dir) / "best.pt"
    assert "energy_shift_refit" not in read_checkpoint(best)
    idx = np.load(Path(cfg.output_dir) / "split" / "train.npy")
    # a data set whose energies carry an extra constant offset of 0.5 eV: the refit must absorb it
    frames = [dataset[i] for i in range(len(dataset))]
    shifted = data_mod.MolecularDataset(
        [f["numbers"] for f in frames], [f["positions"] for f in frames],
        [f["energy"] + 0.5 for f in frames], [f["forces"] for f in frames],
    )  # fmt: skip
    before = _train_residuals(best, shifted, idx)
    calc0 = SphereQuantCalculator.from_checkpoint(best)
    frame = dataset[int(idx[0])]
    f0 = calc0.model(torch.as_tensor(frame["numbers"]), torch.as_tensor(frame["positions"]))["forces"]
    rec = refit_energy_shift(best, dataset=shifted, indices=idx)
    after = _train_residuals(best, shifted, idx)
    assert abs(before.mean()) > 0.4, f"setup: the offset should be visible, mean residual {before.mean():.3f}"
    assert abs(after.mean()) < 1e-9, f"mean training residual after the refit {after.mean():.3e} eV"
    np.testing.assert_allclose(after, before - before.mean(), atol=1e-9)  # only a constant moved
    assert rec["residual_mean_mev_before"] == pytest.approx(1000 * before.mean(), rel=1e-9)
    # one composition: the per-element corrections sum (with the atom counts) to the mean residual
    counts = np.bincount(frame["numbers"])
    total = sum(counts[z] * d for z, d in rec["delta_ev"].items())
    assert total == pytest.approx(before.mean(), rel=1e-9)
    f1 = SphereQuantCalculator.from_checkpoint(best).model(
        torch.as_tensor(frame["numbers"]), torch.as_tensor(frame["positions"])
    )["forces"]
    assert torch.equal(f0, f1), "the refit must not change forces"
    assert "energy_shift_refit" in read_checkpoint(best)


def test_training_refits_energy_shift_by_default(tmp_path, dataset):
    cfg = tiny_config(tmp_path, epochs=1)
    train(cfg, dataset=dataset)
    best = Path(cfg.output_dir) / "best.pt"
    assert read_checkpoint(best)["energy_shift_refit"]["n_frames"] == 24
    idx = np.load(Path(cfg.output_dir) / "split" / "train.npy")
    assert abs(_train_residuals(best, dataset, idx).mean()) < 1e-9


def test_fp32_init_checkpoint(tmp_path, dataset):
    first = tiny_config(tmp_path / "a", epochs=1, evaluate_test=False)
    train(first, dataset=dataset)
    init = str(Path(first.output_dir) / "best.pt")
    # a vanishing learning rate: the finetuned model must still be the initial one
    second = tiny_config(tmp_path / "b", epochs=1, lr=1e-30, min_lr=0.0, init_checkpoint=init,
                         evaluate_test=False, refit_energy_shift=False)  # fmt: skip
    train(second, dataset=dataset)
    a = SphereQuantCalculator.from_checkpoint(init).model.state_dict()
    b = read_checkpoint(Path(second.output_dir) / "last.pt")["model_state"]
    for name, t in a.items():
        diff = (t.double() - b[name].double()).abs().max().item()
        assert diff < 1e-12, f"{name} differs from the init checkpoint by {diff:.3e}"
    with pytest.raises(ValueError, match=r"model\.num_features"):
        train(tiny_config(tmp_path / "c", init_checkpoint=init, model={**TINY_MODEL, "num_features": 12}),
              dataset=dataset)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="init_checkpoint"):
        train(tiny_config(tmp_path / "d", init_checkpoint=str(tmp_path / "nope.pt")), dataset=dataset)
    with pytest.raises(ValueError, match=r"quantization\.init_checkpoint"):
        tiny_config(tmp_path / "e", init_checkpoint=init, quantization={"method": "gaq"})
