"""Shared parts of the anchor-row scripts (``anchor_mace.py``, ``anchor_peer.py``).

An anchor row trains another force field on *our* split of the shipped azobenzene set and scores it on our
test frames, beside our FP32 parent. What does not depend on the other package lives here: the common
command-line options, the split (drawn as ``spherequant train`` draws it and compared with the parent's saved
one), the error metrics, the budget (epochs and/or process CPU time summed over resumed sessions), the run
folder and its checkpoints (refusal to overwrite, refusal to resume with another recipe, atomic writes), the
parent's figures and its validation curve at the anchor's cumulative time (:func:`parent_at_time`), the
comparison table and the JSON file. Nothing here imports the other packages; it is imported by the scripts
(which put this folder on ``sys.path``) and tested through them in the project's environment.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from spherequant._report import atomic_write, format_table, write_json

__all__ = [
    "DATASET",
    "EQUAL_TIME_CLOCKS",
    "add_common_args",
    "budget_state",
    "check_common_args",
    "check_resume_config",
    "claim_run_dir",
    "command_line",
    "comparison_rows",
    "env_info",
    "error_metrics",
    "fail",
    "load_split",
    "new_state",
    "parent_at_time",
    "parent_clock_column",
    "parent_curve",
    "parent_figures",
    "positive",
    "print_comparison",
    "resume_checkpoint",
    "save_torch",
    "write_results",
]

DATASET = "azobenzene-gfn2-500K"
HERE = Path(__file__).resolve().parent
DEFAULT_PARENT = HERE / "runs" / "azobenzene_fp32_parent"
#: which clock of the anchor run is matched to the parent's cumulative epoch times (``off``: no lookup)
EQUAL_TIME_CLOCKS = ("cpu", "wall", "off")
TABLE_HEADERS = [
    "model",
    "frames",
    "energy MAE (meV)",
    "energy MAE (meV/atom)",
    "force MAE (meV/A)",
    "n frames",
]


def fail(message: str) -> None:
    """A user error of a script: one ``error: ...`` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------------
def positive(kind):
    """argparse type: ``kind(s)`` that must be > 0."""

    def conv(s):
        v = kind(s)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    return conv


def add_common_args(ap: argparse.ArgumentParser, *, run_dir: str, json_path: str) -> None:
    """Budget, run folder, results file, parent, split and process options shared by the anchor scripts."""
    ap.add_argument("--epochs", type=positive(int), default=None, help="stop after this many epochs")
    ap.add_argument("--cpu-hours", type=positive(float), default=None, help="process CPU-time budget")
    ap.add_argument("--run-dir", default=run_dir, help="checkpoints (last.pt, best.pt)")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue from --run-dir/last.pt (a fresh start when there is none)",
    )
    ap.add_argument("--json", "--out", dest="json", default=json_path, help="results file ('' to skip)")
    ap.add_argument("--parent-run", default=str(DEFAULT_PARENT), help="our parent's run folder (read only)")
    ap.add_argument(
        "--equal-time",
        choices=EQUAL_TIME_CLOCKS,
        default="cpu",
        help="report the parent's validation curve at this run's cumulative process CPU (or wall) time "
        "(the parent's clock: its summed epoch_cpu_s, or epoch_time_s where the run predates it); "
        "'off' skips it",
    )
    ap.add_argument("--n-train", type=positive(int), default=950)
    ap.add_argument("--n-val", type=positive(int), default=50)
    ap.add_argument("--n-test", type=positive(int), default=None, help="first N test frames (default all)")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=positive(int), default=1, help="torch CPU threads")
    ap.add_argument("--log-every", type=positive(int), default=50, help="progress line every N batches")


def check_common_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks of :func:`add_common_args`'s options that argparse cannot make (``ap.error`` exits 2)."""
    if args.epochs is None and args.cpu_hours is None:
        ap.error("give a budget: --epochs N and/or --cpu-hours H")
    if args.split_seed < 0 or args.seed < 0:
        ap.error("--split-seed and --seed must be >= 0")


def command_line(script: str, argv) -> str:
    """The shell command that reproduces this run (``argv`` None: the process's own arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(shlex.quote(a) for a in ["python", script, *args])


def env_info(**extra) -> dict:
    """Interpreter, torch and thread settings, CPU and date, plus ``extra`` (package versions)."""
    import torch

    return {
        **extra,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ----------------------------------------------------------------------------------------------------------
# split and metrics
# ----------------------------------------------------------------------------------------------------------
def load_split(n_frames: int, n_train: int, n_val: int, seed: int, parent_split_dir=None):
    """Our split (as ``spherequant train`` draws it) and whether it equals the parent's saved split.

    Returns
    -------
    (Split, bool or None)
        The split from :func:`spherequant.models.data.split` (nothing is written), and True / False when
        ``parent_split_dir`` holds ``train/val/test.npy`` (read-only) that do / do not equal it, None when
        it does not.
    """
    from spherequant.models import data as data_mod

    sp = data_mod.split(n_frames, n_train, n_val, seed=seed)
    if parent_split_dir is None:
        return sp, None
    d = Path(parent_split_dir)
    files = [d / f"{p}.npy" for p in ("train", "val", "test")]
    if not all(f.is_file() for f in files):
        return sp, None
    saved = [np.load(f, allow_pickle=False) for f in files]
    same = all(a.shape == b.shape and bool((a == b).all()) for a, b in zip(saved, sp))
    return sp, same


def error_metrics(e_pred, e_ref, n_atoms, f_pred, f_ref, energy_weight=1.0, forces_weight=100.0) -> dict:
    """Energy and force errors of predictions against references.

    Parameters
    ----------
    e_pred, e_ref : array_like, shape (n_frames,)
        Predicted and reference total energies in eV.
    n_atoms : array_like of int, shape (n_frames,)
        Atoms per frame.
    f_pred, f_ref : array_like, shape (sum(n_atoms), 3)
        Predicted and reference forces in eV/Angstrom, frames concatenated.
    energy_weight, forces_weight : float
        Weights of the loss ``w_E mean(((E - E_ref) / n)^2) + w_F mean((F - F_ref)^2)`` (eV^2, eV^2/A^2).

    Returns
    -------
    dict
        ``energy_mae`` (meV), ``energy_mae_per_atom`` (meV/atom, mean of ``|dE| / n``), ``energy_rmse``
        (meV), ``forces_mae`` (meV/Angstrom, per Cartesian component), ``forces_rmse`` (meV/Angstrom),
        ``loss`` (the weighted loss above), ``n_frames``.
    """
    e_pred, e_ref = (np.asarray(a, dtype=np.float64) for a in (e_pred, e_ref))
    n = np.asarray(n_atoms)
    f_pred, f_ref = (np.asarray(a, dtype=np.float64) for a in (f_pred, f_ref))
    if e_pred.ndim != 1 or e_pred.size == 0:
        raise ValueError(f"e_pred must be a non-empty 1-D array, got shape {e_pred.shape}")
    for name, a in (("e_ref", e_ref), ("n_atoms", n)):
        if a.shape != e_pred.shape:
            raise ValueError(f"{name} must have the shape of e_pred {e_pred.shape}, got {a.shape}")
    if not np.issubdtype(n.dtype, np.integer) or (n < 1).any():
        raise ValueError(f"n_atoms must hold positive integers, got {n[:5]!r} (dtype {n.dtype})")
    shape = (int(n.sum()), 3)
    for name, a in (("f_pred", f_pred), ("f_ref", f_ref)):
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (sum(n_atoms), 3), got {a.shape}")
    for name, a in (("e_pred", e_pred), ("e_ref", e_ref), ("f_pred", f_pred), ("f_ref", f_ref)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds non-finite values")
    de, df = e_pred - e_ref, f_pred - f_ref
    de_atom = de / n
    return {
        "energy_mae": 1000 * float(np.abs(de).mean()),
        "energy_mae_per_atom": 1000 * float(np.abs(de_atom).mean()),
        "energy_rmse": 1000 * float(np.sqrt((de * de).mean())),
        "forces_mae": 1000 * float(np.abs(df).mean()),
        "forces_rmse": 1000 * float(np.sqrt((df * df).mean())),
        "loss": float(energy_weight * (de_atom * de_atom).mean() + forces_weight * (df * df).mean()),
        "n_frames": int(e_pred.size),
    }


# ----------------------------------------------------------------------------------------------------------
# budget, run folder, resume
# ----------------------------------------------------------------------------------------------------------
def budget_state(epochs_done: int, cpu_s: float, epochs, cpu_hours) -> str | None:
    """Why training stops before the next epoch (``"epochs"``, ``"cpu_budget"``), or None to go on."""
    if epochs is not None and epochs_done >= epochs:
        return "epochs"
    if cpu_hours is not None and cpu_s >= 3600.0 * cpu_hours:
        return "cpu_budget"
    return None


def new_state() -> dict:
    """The progress of a fresh run: epochs done, process CPU and wall seconds summed, history, best row."""
    return {"epoch": 0, "cpu_s": 0.0, "wall_s": 0.0, "history": [], "best": None}


def check_resume_config(saved: dict, current: dict) -> None:
    """Raise ValueError naming every recipe setting in which a resumed run differs from its checkpoint."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current), key=lambda k: (k not in saved, k))
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ValueError("--resume with a different recipe than the checkpoint's (" + "; ".join(diffs) + ")")


def claim_run_dir(run_dir, resume: bool) -> tuple[Path, Path]:
    """Create ``run_dir``, return ``(last.pt, best.pt)``; a ``last.pt`` there without ``resume`` exits 2."""
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if last_path.exists() and not resume:
        fail(f"{last_path} exists; pass --resume to continue it or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return last_path, best_path


def resume_checkpoint(last_path: Path, recipe: dict, resume: bool, map_location="cpu") -> dict | None:
    """``last.pt`` when resuming and it exists (None otherwise); another recipe exits 2 naming the keys."""
    import torch

    if not (resume and Path(last_path).exists()):
        return None
    ck = torch.load(last_path, map_location=map_location, weights_only=False)
    try:
        check_resume_config(ck["recipe"], recipe)
    except ValueError as err:
        fail(str(err))
    state = ck["state"]
    print(f"resumed {last_path} after epoch {state['epoch']} ({state['cpu_s'] / 3600:.3f} CPU h used)")
    return ck


def save_torch(path, obj: dict) -> None:
    """``torch.save`` through an atomic write (a kill leaves the previous file whole)."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


# ----------------------------------------------------------------------------------------------------------
# our parent
# ----------------------------------------------------------------------------------------------------------
def _read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _has_cpu_clock(rows: list[dict]) -> bool:
    """Whether every ``metrics.csv`` row has the trainer's ``epoch_cpu_s`` (runs before it have none)."""
    return bool(rows) and all(r.get("epoch_cpu_s") not in (None, "") for r in rows)


def parent_figures(run_dir) -> dict | None:
    """Our parent's best validation row (and test metrics when written) from its run folder, read-only.

    Returns None when ``run_dir/metrics.csv`` does not exist. Energies in meV, forces in meV/Angstrom;
    ``train_wall_s`` sums the per-epoch wall times of the rows written so far, ``train_cpu_s`` their process
    CPU times (None when a row predates the trainer's ``epoch_cpu_s``).
    """
    run_dir = Path(run_dir)
    rows = _read_rows(run_dir)
    if not rows:
        return None
    best = min(rows, key=lambda r: float(r["val_loss"]))
    out = {
        "run_dir": run_dir.name,
        "epochs_written": len(rows),
        "best_epoch": int(best["epoch"]),
        "val_energy_mae": float(best["val_energy_mae"]),
        "val_forces_mae": float(best["val_forces_mae"]),
        "train_wall_s": float(sum(float(r.get("epoch_time_s") or 0.0) for r in rows)),
        "train_cpu_s": float(sum(float(r["epoch_cpu_s"]) for r in rows)) if _has_cpu_clock(rows) else None,
        "n_train": None,
        "n_val": None,
        "split_seed": None,
        "test": None,
    }
    record = run_dir / "run.json"
    if record.is_file():
        cfg = json.loads(record.read_text()).get("train_config", {})
        out.update({k: cfg.get(k) for k in ("n_train", "n_val", "split_seed")})
    test = run_dir / "test_metrics.json"
    if test.is_file():
        out["test"] = json.loads(test.read_text())
    return out


def parent_clock_column(run_dir, clock: str = "wall") -> str:
    """The ``metrics.csv`` column that times the parent's epochs for the anchor's ``clock``.

    ``"wall"``: ``epoch_time_s``. ``"cpu"``: ``epoch_cpu_s`` (process CPU seconds) when every row has it,
    else ``epoch_time_s`` (runs written before the trainer recorded CPU time; one thread, so wall time
    bounds CPU time from above, by more on a loaded machine).
    """
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    return "epoch_cpu_s" if clock == "cpu" and _has_cpu_clock(_read_rows(Path(run_dir))) else "epoch_time_s"


def parent_curve(run_dir, column: str = "epoch_time_s") -> list[dict]:
    """The parent's validation curve with its cumulative time: one dict per ``metrics.csv`` row.

    Keys ``epoch``, ``time_s`` (the sum of ``column``, ``epoch_time_s`` or ``epoch_cpu_s``, up to and
    including this epoch, seconds), ``val_loss``, ``val_energy_mae`` (meV), ``val_forces_mae``
    (meV/Angstrom), ``lr``. Empty when there is no ``metrics.csv``; a row without ``column`` raises
    ValueError (no clock to compare with).
    """
    if column not in ("epoch_time_s", "epoch_cpu_s"):
        raise ValueError(f"column must be 'epoch_time_s' or 'epoch_cpu_s', got {column!r}")
    rows = _read_rows(Path(run_dir))
    out, t = [], 0.0
    for r in rows:
        dt = r.get(column)
        if dt in (None, ""):
            raise ValueError(f"{Path(run_dir) / 'metrics.csv'}: epoch {r.get('epoch')} has no {column}")
        dt = float(dt)
        if not (dt >= 0 and np.isfinite(dt)):
            raise ValueError(f"{Path(run_dir) / 'metrics.csv'}: epoch {r.get('epoch')} {column} is {dt}")
        t += dt
        out.append(
            {
                "epoch": int(r["epoch"]),
                "time_s": t,
                "val_loss": float(r["val_loss"]),
                "val_energy_mae": float(r["val_energy_mae"]),
                "val_forces_mae": float(r["val_forces_mae"]),
                "lr": float(r["lr"]) if r.get("lr") not in (None, "") else None,
            }
        )
    return out


def parent_at_time(curve: list[dict], time_s: float) -> dict:
    """The parent's validation figures after the same cumulative time ``time_s`` (seconds) as the anchor.

    The parent is credited with every epoch it had *finished* by ``time_s`` (cumulative ``time_s`` of the
    curve <= ``time_s``): ``last`` is the last such epoch's row and ``best`` the one with the lowest
    validation loss among them (the model a run stopped at ``time_s`` would ship). Both are None when the
    parent had not finished one epoch; ``beyond_curve`` is True when ``time_s`` exceeds the curve's end
    (then the parent's figures are its final ones and the parent spent less time than the anchor).

    Parameters
    ----------
    curve : list of dict
        :func:`parent_curve`'s rows (cumulative ``time_s`` non-decreasing).
    time_s : float
        The anchor's cumulative time, seconds, >= 0.
    """
    time_s = float(time_s)
    if not (np.isfinite(time_s) and time_s >= 0):
        raise ValueError(f"time_s must be a finite number >= 0, got {time_s}")
    if not curve:
        raise ValueError("curve is empty (the parent has no metrics.csv rows)")
    done = [r for r in curve if r["time_s"] <= time_s]
    best = min(done, key=lambda r: r["val_loss"]) if done else None
    return {
        "time_s": time_s,
        "epochs_done": len(done),
        "parent_time_s": done[-1]["time_s"] if done else 0.0,
        "last": dict(done[-1]) if done else None,
        "best": dict(best) if best else None,
        "beyond_curve": time_s > curve[-1]["time_s"],
        "parent_total_time_s": curve[-1]["time_s"],
    }


def equal_time_block(parent_run, clock: str, history: list[dict]) -> dict | None:
    """The parent's curve at the anchor's cumulative times: at the run's end and after each anchor epoch.

    ``clock`` ``"cpu"`` uses the anchor's process CPU time (``cpu_s_total`` of its history rows), ``"wall"``
    its wall time (``wall_s_total``); ``"off"``, no parent curve or no history give None.
    """
    if clock == "off" or not history:
        return None
    column = parent_clock_column(parent_run, clock)
    curve = parent_curve(parent_run, column)
    if not curve:
        return None
    key = {"cpu": "cpu_s_total", "wall": "wall_s_total"}[clock]
    per_epoch = []
    for row in history:
        at = parent_at_time(curve, row[key])
        per_epoch.append(
            {
                "epoch": row["epoch"],
                "time_s": row[key],
                "anchor_val_forces_mae": row["val_forces_mae"],
                "parent_epochs_done": at["epochs_done"],
                "parent_val_forces_mae_last": at["last"]["val_forces_mae"] if at["last"] else None,
                "parent_val_forces_mae_best": at["best"]["val_forces_mae"] if at["best"] else None,
            }
        )
    what = "process CPU" if clock == "cpu" else "wall"
    parent_what = "process CPU" if column == "epoch_cpu_s" else "wall"
    return {
        "clock": clock,
        "parent_column": column,
        "note": f"the parent's clock is the sum of its metrics.csv {column} ({parent_what} seconds per "
        f"epoch, validation included, one process); the anchor's is its {what} time summed over sessions, "
        "validation included",
        "at_end": parent_at_time(curve, history[-1][key]),
        "per_epoch": per_epoch,
    }


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------
def comparison_rows(label: str, val: dict, test: dict, parent: dict | None, n_atoms, at_time=None) -> list:
    """Rows of the printed table: the anchor's validation and test rows, the parent's best validation row
    (and test row when written), and the parent's best validation row within the anchor's time."""
    rows = [
        [label, part, m["energy_mae"], m["energy_mae_per_atom"], m["forces_mae"], m["n_frames"]]
        for part, m in (("validation", val), ("test", test))
    ]
    if parent is None:
        return rows
    per_atom = (lambda e: e / n_atoms) if n_atoms else (lambda e: None)
    rows.append(
        [
            "ours (parent)",
            f"validation (epoch {parent['best_epoch']})",
            parent["val_energy_mae"],
            per_atom(parent["val_energy_mae"]),
            parent["val_forces_mae"],
            parent["n_val"],
        ]
    )
    if parent["test"]:
        t = parent["test"]
        e = t["energy_mae"]
        rows.append(["ours (parent)", "test", e, per_atom(e), t["forces_mae"], t.get("n_frames")])
    if at_time is not None and at_time["at_end"]["best"] is None:
        end = at_time["at_end"]
        text = f"validation at equal {at_time['clock']} time ({end['time_s']:.3g} s): no epoch finished yet"
        rows.append(["ours (parent)", text, None, None, None, None])
    elif at_time is not None:
        b, end = at_time["at_end"]["best"], at_time["at_end"]
        rows.append(
            [
                "ours (parent)",
                f"validation at equal {at_time['clock']} time ({end['time_s']:.0f} s: epoch {b['epoch']} "
                f"of {end['epochs_done']})",
                b["val_energy_mae"],
                per_atom(b["val_energy_mae"]),
                b["val_forces_mae"],
                parent["n_val"],
            ]
        )
    return rows


def print_comparison(title: str, rows: list) -> None:
    print()
    print(title)
    print(format_table(rows, TABLE_HEADERS, floatfmt=".4g"))


def write_results(path, results: dict) -> None:
    """Write the results JSON atomically ('' or None: skip)."""
    if path:
        write_json(path, results)
        print(f"\nwrote {path}")
