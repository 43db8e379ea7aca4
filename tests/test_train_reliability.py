"""Training never reports success for a broken model, and a run folder belongs to one run.

Non-finite values (loss, gradient, weights, EMA weights, validation loss) stop the run with
``TrainingDivergedError`` (CLI: exit 1, one ``error:`` line) or roll it back (``on_nonfinite: rollback``); no
non-finite state is ever written. A fresh run in a folder holding another run, a resume with a changed config,
a folder in use (lock) and ``output_dir: ''`` are refused with messages naming what differs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers import morse_dataset, tiny_config
from spherequant.models import checkpoints
from spherequant.models import data as data_mod
from spherequant.models.checkpoints import read_checkpoint
from spherequant.models.train import RunDirectoryError, TrainingDivergedError, train
from spherequant.models.train_cli import main as cli_main

train_mod = sys.modules["spherequant.models.train"]  # the module (the package exports the function)

N_BATCHES = 6  # tiny_config: 24 training frames in batches of 4


def _cfg(tmp_path, **kw):
    kw.setdefault("evaluate_test", False)
    kw.setdefault("refit_energy_shift", False)
    return tiny_config(tmp_path, **kw)


def _inject_nan(monkeypatch, calls):
    """Make the training loss NaN at the given 1-based calls of the loss (call k = epoch (k-1)//6+1)."""
    original = train_mod._loss_terms
    count = {"n": 0}

    def loss_terms(out, batch):
        count["n"] += 1
        le, lf = original(out, batch)
        if calls == "all" or count["n"] in calls:
            return le * float("nan"), lf
        return le, lf

    monkeypatch.setattr(train_mod, "_loss_terms", loss_terms)
    return count


def _states_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name, t in a.items():
        if torch.is_tensor(t):
            assert torch.equal(t, b[name]), f"{what}.{name} differs"


def _all_finite(state: dict) -> bool:
    return all(
        bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point()
    )


def _one_error_line(err: str, start: str = "spherequant train: error: ") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), f"expected one error line, got {err!r}"
    return lines[0]


# ------------------------------------------------------------------------------------------ non-finite
def test_divergence_raises_and_writes_nothing(tmp_path, dataset):
    """The issue's reproduction (lr 1e6, no schedule): a specific exception, no checkpoint, lock released."""
    cfg = _cfg(tmp_path, lr=1e6, scheduler="none", min_lr=0.0)
    with pytest.raises(
        TrainingDivergedError, match=r"non-finite .* epoch 1.*lower 'lr'.*on_nonfinite: rollback"
    ) as info:
        train(cfg, dataset=dataset)
    assert info.value.epoch == 1 and info.value.batch is not None
    out = Path(cfg.output_dir)
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    assert not (out / ".train.lock").exists(), "the lock must be released after an error"
    # nothing was saved, so the folder is free for the corrected run
    result = train(_cfg(tmp_path, lr=3e-3), dataset=dataset)
    assert [h["epoch"] for h in result["history"]] == [1, 2]


def test_nan_in_epoch_two_keeps_epoch_one(tmp_path, dataset, monkeypatch):
    """last.pt / best.pt keep the last finite epoch bit for bit; metrics hold no NaN row."""
    ref = _cfg(tmp_path / "ref", epochs=1)
    train(ref, dataset=dataset)
    _inject_nan(monkeypatch, {N_BATCHES + 3})
    cfg = _cfg(tmp_path / "nan", epochs=3)
    with pytest.raises(TrainingDivergedError, match=r"last\.pt keeps epoch 1") as info:
        train(cfg, dataset=dataset)
    assert (info.value.epoch, info.value.batch, info.value.quantity) == (2, 3, "training loss")
    out = Path(cfg.output_dir)
    last = checkpoints.read_checkpoint(out / "last.pt")  # refuses non-finite weights
    best = checkpoints.read_checkpoint(out / "best.pt")
    assert last["epoch"] == best["epoch"] == 1
    for ckpt in (last, best):
        assert _all_finite(ckpt["model_state"]) and _all_finite(ckpt["ema_state"])
    want = read_checkpoint(Path(ref.output_dir) / "last.pt")
    _states_equal(last["model_state"], want["model_state"], "model_state")
    _states_equal(last["ema_state"], want["ema_state"], "ema_state")
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())] == [1]
    # the message's way on: resume with the rollback policy (a resume may change on_nonfinite)
    _inject_nan(monkeypatch, {1})
    with pytest.warns(RuntimeWarning, match="rolled back"):
        result = train(
            _cfg(tmp_path / "nan", epochs=3, on_nonfinite="rollback"), dataset=dataset, resume=True
        )
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    rollbacks = checkpoints.read_checkpoint(out / "last.pt")["nonfinite_rollbacks"]
    assert [(r["epoch"], r["batch"]) for r in rollbacks] == [(2, 1)]


def test_nonfinite_ema_weights_detected_at_epoch_end(tmp_path, dataset, monkeypatch):
    original = train_mod._EMA.update

    def update(self, model):
        original(self, model)
        name = next(k for k, v in self.shadow.items() if torch.is_tensor(v) and v.is_floating_point())
        self.shadow[name].view(-1)[0] = float("inf")

    monkeypatch.setattr(train_mod._EMA, "update", update)
    cfg = _cfg(tmp_path)
    with pytest.raises(TrainingDivergedError, match="EMA weight") as info:
        train(cfg, dataset=dataset)
    assert info.value.batch is None and info.value.epoch == 1
    assert not (Path(cfg.output_dir) / "last.pt").exists()


def test_best_not_stuck_on_nan(tmp_path, dataset):
    """A recorded best with a NaN validation loss (older runs) is replaced by the next finite epoch."""
    cfg = _cfg(tmp_path, epochs=1)
    train(cfg, dataset=dataset)
    path = Path(cfg.output_dir) / "last.pt"
    ckpt = read_checkpoint(path)
    ckpt["best"]["val_loss"] = float("nan")
    torch.save(ckpt, path)
    result = train(_cfg(tmp_path, epochs=2), dataset=dataset, resume=True)
    assert result["best"]["epoch"] == 2 and math.isfinite(result["best"]["val_loss"])
    assert checkpoints.read_checkpoint(Path(cfg.output_dir) / "best.pt")["epoch"] == 2


def test_rollback_equals_restart_of_the_epoch_at_lower_lr(tmp_path, dataset, monkeypatch):
    """Rollback = the state at the start of the failing epoch with lr x rollback_lr_factor: the result equals
    resuming an uninterrupted epoch-1 checkpoint whose learning rates were scaled by hand."""
    kw = dict(on_nonfinite="rollback", rollback_lr_factor=0.5)
    _inject_nan(monkeypatch, {N_BATCHES + 2})
    rolled = _cfg(tmp_path / "rb", epochs=2, **kw)
    with pytest.warns(RuntimeWarning, match="rolled back to the start of the epoch"):
        result = train(rolled, dataset=dataset)
    monkeypatch.undo()
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    b = checkpoints.read_checkpoint(Path(rolled.output_dir) / "last.pt")
    assert [(e["epoch"], e["batch"], e["quantity"]) for e in b["nonfinite_rollbacks"]] == [
        (2, 2, "training loss")
    ]

    # independent construction: epoch 1 as usual, then the lr halved by hand, then epoch 2
    train(_cfg(tmp_path / "ref", epochs=1, **kw), dataset=dataset)
    path = Path(tmp_path / "ref" / "run" / "last.pt")
    ckpt = read_checkpoint(path)
    for group in ckpt["optimizer"]["param_groups"]:
        group["lr"] *= 0.5
        group["initial_lr"] *= 0.5
    ckpt["scheduler"]["base_lrs"] = [v * 0.5 for v in ckpt["scheduler"]["base_lrs"]]
    torch.save(ckpt, path)
    train(_cfg(tmp_path / "ref", epochs=2, **kw), dataset=dataset, resume=True)
    a = checkpoints.read_checkpoint(path)
    _states_equal(b["model_state"], a["model_state"], "model_state")
    _states_equal(b["ema_state"], a["ema_state"], "ema_state")
    assert b["history"][1]["lr"] == a["history"][1]["lr"]
    assert b["history"][0]["val_loss"] == a["history"][0]["val_loss"]


def test_rollback_gives_up_after_max_rollbacks(tmp_path, dataset, monkeypatch):
    _inject_nan(monkeypatch, "all")
    cfg = _cfg(tmp_path, on_nonfinite="rollback", max_rollbacks=2)
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(TrainingDivergedError, match=r"after 2 rollback") as info,
    ):
        train(cfg, dataset=dataset)
    assert info.value.epoch == 1
    assert not (Path(cfg.output_dir) / "last.pt").exists()


@pytest.mark.parametrize(
    ("values", "exc", "word"),
    [
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite"),
        ({"on_nonfinite": 1}, TypeError, "on_nonfinite"),
        ({"max_rollbacks": 0}, ValueError, "max_rollbacks"),
        ({"rollback_lr_factor": 1.0}, ValueError, "rollback_lr_factor"),
        ({"rollback_lr_factor": float("nan")}, ValueError, "rollback_lr_factor"),
        ({"output_dir": ""}, ValueError, "output_dir"),
        ({"output_dir": "  "}, ValueError, "output_dir"),
    ],
)
def test_config_errors(values, exc, word):
    with pytest.raises(exc, match=word):
        train_mod.TrainConfig.from_dict(values)


def test_cli_divergence_exits_nonzero(tmp_path, dataset):
    """Through a real process: exit status 1 and one error line; no checkpoint."""
    npz = data_mod.save_npz(dataset, tmp_path / "morse.npz")
    cfg = _cfg(tmp_path, dataset=str(npz), lr=1e6, scheduler="none", min_lr=0.0, epochs=1).to_dict()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "spherequant.models.train_cli", str(path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "training diverged" in _one_error_line(proc.stderr)
    assert not (Path(cfg["output_dir"]) / "last.pt").exists()


# ------------------------------------------------------------------------------------------ run folder
def test_fresh_run_in_used_folder_refused_then_overwrite(tmp_path, dataset):
    cfg = _cfg(tmp_path, epochs=1)
    train(cfg, dataset=dataset)
    out = Path(cfg.output_dir)
    before = (out / "last.pt").read_bytes()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"n_train: 24 -> 16; .*split_seed: 0 -> 3.*--overwrite"):
        train(_cfg(tmp_path, epochs=1, n_train=16, split_seed=3), dataset=dataset)
    other = morse_dataset(seed=1)
    with pytest.raises(RunDirectoryError, match=r"dataset contents"):
        train(_cfg(tmp_path, epochs=1), dataset=other)
    with pytest.raises(RunDirectoryError, match=r"same configuration .*--resume"):
        train(_cfg(tmp_path, epochs=1), dataset=dataset)
    assert (out / "last.pt").read_bytes() == before, "a refused run must not touch the old run"
    assert len(np.load(out / "split" / "train.npy")) == 24

    result = train(_cfg(tmp_path, epochs=1, n_train=16, split_seed=3), dataset=dataset, overwrite=True)
    assert len(np.load(out / "split" / "train.npy")) == 16, "the old split must not be reused"
    want = data_mod.split(len(dataset), 16, 8, seed=3)
    np.testing.assert_array_equal(np.load(out / "split" / "train.npy"), want.train)
    assert result["history"][0]["epoch"] == 1 and len(json.loads((out / "metrics.json").read_text())) == 1
    assert checkpoints.read_checkpoint(out / "last.pt")["train_config"]["n_train"] == 16
    assert (out / "notes.txt").read_text() == "mine", "overwrite deletes only the run's own files"
    with pytest.raises(ValueError, match="exclude each other"):
        train(cfg, dataset=dataset, resume=True, overwrite=True)


def test_resume_with_changed_config_refused(tmp_path, dataset):
    train(_cfg(tmp_path, epochs=1), dataset=dataset)
    with pytest.raises(RunDirectoryError, match=r"lr: 0\.003 -> 0\.001"):
        train(_cfg(tmp_path, epochs=2, lr=1e-3), dataset=dataset, resume=True)
    with pytest.raises(
        RunDirectoryError, match=r"dtype: 'float64' -> 'float32'.*model\.num_features: 8 -> 12"
    ):
        model = {**tiny_config(tmp_path).model, "num_features": 12}
        train(_cfg(tmp_path, epochs=2, dtype="float32", model=model), dataset=dataset, resume=True)
    with pytest.raises(RunDirectoryError, match="dataset contents"):
        train(_cfg(tmp_path, epochs=2), dataset=morse_dataset(seed=1), resume=True)
    # the allowed changes: more epochs, reporting, NaN policy, and the same data under another name
    result = train(_cfg(tmp_path, epochs=2, evaluate_test=True, on_nonfinite="rollback", dataset="moved.npz"),
                   dataset=dataset, resume=True)  # fmt: skip
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    with pytest.raises(ValueError, match="already holds epoch 2"):
        train(_cfg(tmp_path, epochs=1), dataset=dataset, resume=True)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _write_lock(out: Path, pid: int, host: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".train.lock"
    info = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started_utc": "2026-01-01T00:00:00Z",
        "token": "x",
    }
    lock.write_text(json.dumps(info))
    return lock


def test_folder_in_use_refused_stale_lock_taken_over(tmp_path, dataset):
    cfg = _cfg(tmp_path, epochs=1)
    out = Path(cfg.output_dir)
    holder = _sleeper()
    try:
        lock = _write_lock(out, holder.pid)
        with pytest.raises(
            RunDirectoryError, match=rf"in use by another training run \(pid {holder.pid} on host"
        ):
            train(cfg, dataset=dataset)
        assert json.loads(lock.read_text())["pid"] == holder.pid, "a live lock must stay"
        assert not (out / "last.pt").exists()
        _write_lock(out, holder.pid, host="another-host.example")  # cannot be checked: refused
        with pytest.raises(RunDirectoryError, match=r"another-host\.example"):
            train(cfg, dataset=dataset)
    finally:
        holder.kill()
        holder.wait()
    _write_lock(out, holder.pid)  # its process is gone: stale, taken over
    train(cfg, dataset=dataset)
    assert (out / "last.pt").is_file() and not lock.exists(), "the lock is released at the end"


def test_lock_is_exclusive_while_a_run_trains(tmp_path, dataset, monkeypatch):
    """A second run started while the first is inside its training loop is refused; the first finishes."""
    cfg = _cfg(tmp_path, epochs=1)
    seen = {}
    original = train_mod.TrainingRun._train_epoch

    def train_epoch(self, epoch):
        try:
            train(cfg, dataset=dataset)
        except RunDirectoryError as err:
            seen["err"] = str(err)
        return original(self, epoch)

    monkeypatch.setattr(train_mod.TrainingRun, "_train_epoch", train_epoch)
    train(cfg, dataset=dataset)
    assert f"pid {os.getpid()}" in seen["err"] and "in use" in seen["err"]
    assert not (Path(cfg.output_dir) / ".train.lock").exists()


def test_user_split_folder_is_used_and_checked(tmp_path, dataset):
    """A split/ placed in a new output folder (e.g. published index files) is the split, if sizes agree."""
    out = tmp_path / "run"
    (out / "split").mkdir(parents=True)
    perm = np.random.default_rng(7).permutation(len(dataset))
    for name, idx in (("train", perm[:24]), ("val", perm[24:32]), ("test", perm[32:])):
        np.save(out / "split" / f"{name}.npy", idx)
    train(_cfg(tmp_path, epochs=1), dataset=dataset)
    np.testing.assert_array_equal(np.load(out / "split" / "train.npy"), perm[:24])
    train(_cfg(tmp_path, epochs=1), dataset=dataset, overwrite=True)  # the user's split is input: kept
    np.testing.assert_array_equal(np.load(out / "split" / "train.npy"), perm[:24])
    other = tmp_path / "other" / "run"
    (other / "split").mkdir(parents=True)
    for name, idx in (("train", perm[:20]), ("val", perm[20:32]), ("test", perm[32:])):
        np.save(other / "split" / f"{name}.npy", idx)
    with pytest.raises(RunDirectoryError, match="20 training and 12 validation frames"):
        train(_cfg(tmp_path / "other", epochs=1), dataset=dataset)


# ------------------------------------------------------------------------------------------ CLI
def _yaml(tmp_path, dataset, **kw) -> tuple[Path, dict]:
    npz = tmp_path / "morse.npz"
    if not npz.exists():
        data_mod.save_npz(dataset, npz)
    kw.setdefault("epochs", 1)
    cfg = _cfg(tmp_path, dataset=str(npz), **kw).to_dict()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def test_cli_user_errors_exit_2_before_training(tmp_path, dataset, capsys):
    path, cfg = _yaml(tmp_path, dataset)
    out = Path(cfg["output_dir"])
    assert cli_main([str(path), "--resume"]) == 2
    assert "cannot resume" in _one_error_line(capsys.readouterr().err)
    assert cli_main([str(path), "--output-dir", ""]) == 2
    assert "output_dir" in _one_error_line(capsys.readouterr().err)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for export, word in (
        (blocker / "m.pt", "not a folder"),
        (tmp_path, "is a folder"),
        (out / "best.pt", "own"),
    ):
        assert cli_main([str(path), "--export", str(export)]) == 2
        assert word in _one_error_line(capsys.readouterr().err)
        assert not (out / "last.pt").exists(), "a bad --export path must be caught before training"
    assert cli_main([str(path), "--resume", "--overwrite"]) == 2
    assert "exclude" in _one_error_line(capsys.readouterr().err)

    assert cli_main([str(path)]) == 0
    capsys.readouterr()
    assert cli_main([str(path), "--epochs", "2", "--dataset", str(tmp_path / "morse.npz")]) == 2
    assert "--overwrite" in _one_error_line(capsys.readouterr().err)
    cfg["lr"] = 1e-3
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main([str(path), "--resume", "--epochs", "2"]) == 2
    assert "lr: 0.003 -> 0.001" in _one_error_line(capsys.readouterr().err)
    assert (
        cli_main([str(path), "--overwrite", "--no-progress", "--export", str(tmp_path / "x" / "m.pt")]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["exported"] == str(tmp_path / "x" / "m.pt")
    assert checkpoints.read_checkpoint(out / "last.pt")["train_config"]["lr"] == 1e-3


@pytest.mark.slow
def test_kill9_then_resume_is_exact(tmp_path, dataset):
    """SIGKILL leaves a stale lock; ``--resume`` takes it over and ends bit for bit where an uninterrupted run
    ends."""
    import signal
    import time

    path, cfg = _yaml(tmp_path, dataset, epochs=30)
    out = Path(cfg["output_dir"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "spherequant.models.train_cli", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint(out / "last.pt")["epoch"]
    assert killed_at < 30, "the run finished before it could be killed"
    lock = json.loads((out / ".train.lock").read_text())
    assert lock["pid"] == proc.pid
    assert cli_main([str(path), "--resume"]) == 0
    assert not (out / ".train.lock").exists()
    ref = _cfg(tmp_path / "ref", epochs=30)
    train(ref, dataset=data_mod.load_npz(cfg["dataset"]))  # the same file (its units round energies)
    a = checkpoints.read_checkpoint(Path(ref.output_dir) / "last.pt")
    b = checkpoints.read_checkpoint(out / "last.pt")
    _states_equal(a["model_state"], b["model_state"], f"model_state (killed after epoch {killed_at})")
    _states_equal(a["ema_state"], b["ema_state"], "ema_state")


def test_checkpoints_record_trained_elements_and_finetune_refuses_new_ones(tmp_path, dataset):
    """last.pt and the exported file carry the training frames' elements; a loaded model refuses others,
    and finetuning it on data with an element it never saw is refused at setup, naming the element."""
    from spherequant.models.train import export_model

    train(_cfg(tmp_path, epochs=1), dataset=dataset)
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["trained_elements"] == [1, 6, 8], last["trained_elements"]
    small = torch.load(export_model(tmp_path / "run" / "last.pt", tmp_path / "x.pt"), weights_only=True)
    assert list(small["trained_elements"]) == [1, 6, 8]
    model = checkpoints.load_model(tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"N \(Z=7\)"):
        model(torch.tensor([7, 1]), torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64))
    other = data_mod.MolecularDataset(
        np.array([6, 7, 1, 1, 1, 1]), dataset.positions.reshape(len(dataset), 6, 3), dataset.energies,
        dataset.forces.reshape(len(dataset), 6, 3), metadata={"source": "morse, O -> N"},
    )  # fmt: skip
    cfg = _cfg(tmp_path / "ft", epochs=1, init_checkpoint=str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match=r"init_checkpoint.*N \(Z=7\)"):
        train(cfg, dataset=other)


def test_stop_at_min_lr_ends_a_converged_plateau_run(tmp_path, dataset):
    """With the rate at its floor and no improvement for `patience` epochs the run stops (before `epochs`);
    without the switch it runs every epoch."""
    kw = dict(scheduler="plateau", lr=1e-12, min_lr=1e-12, patience=1, epochs=5)
    stopped = train(_cfg(tmp_path / "a", stop_at_min_lr=True, **kw), dataset=dataset)
    epochs = [row["epoch"] for row in stopped["history"]]
    assert epochs == [1, 2], epochs  # epoch 1 sets the best; epoch 2 (= patience) does not improve at 1e-12
    again = train(_cfg(tmp_path / "a", stop_at_min_lr=True, **kw), dataset=dataset, resume=True)
    assert [row["epoch"] for row in again["history"]] == [1, 2], "a resumed converged run does no epoch"
    full = train(_cfg(tmp_path / "b", **kw), dataset=dataset)
    assert [row["epoch"] for row in full["history"]] == [1, 2, 3, 4, 5]
