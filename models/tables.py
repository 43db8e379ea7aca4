"""The quantization study's tables: accuracy, force equivariance, weight bytes and NVE stability per model.

``spherequant evaluate --table quantization`` (Tables II-III of the paper) and ``--table ablations`` build one
row per model with :func:`build_table`:

* ``energy_mae`` (meV) and ``forces_mae`` (meV/Angstrom, per component) on the checkpoint's own test split,
  and ``lee_mean`` / ``lee_max`` (meV/Angstrom) of the forces under Haar-random rotations, from
  :func:`~spherequant.models.evaluation.evaluate_checkpoint` (or
  :func:`~spherequant.models.evaluation.naive_int8_ptq` for the post-training INT8 row);
* ``model_bytes``: the weights as stored, from :func:`~spherequant.models.deploy.memory_report` (packed int4
  / int8 codes plus per-channel FP32 scales and biases for a quantized model, 4 bytes per parameter for an
  FP32 one; parameters that stay FP32 in both, such as the radial basis, are counted in both);
* ``stability``: the verdict of :func:`stability_check` for the model as the row infers it (a quantized
  model in its stored force mode, by default ``force_mode="ste"``: every quantizer active, forces through
  the straight-through surrogate; or the row's ``force_mode``), and ``stability_smooth`` for the smooth,
  conservative force mode (``force_mode="smooth"``: weights quantized, each activation quantizer acting as
  its saturation), which ``spherequant md`` uses for quantized models; one run for FP32 rows and for rows
  set to the smooth mode.

Stability criterion
-------------------
See :mod:`spherequant.models.stability` (:func:`~spherequant.models.stability.stability_check`).

Rows
----
:data:`TABLE_ROWS` lists the default rows. A row names a checkpoint (path or pretrained name), or a training
config whose ``<output_dir>/best.pt`` is the checkpoint (``output_dir`` relative to ``root``, by default the
current folder); a missing checkpoint raises ``FileNotFoundError`` naming ``spherequant train <config>``, or
is skipped with a note when ``allow_missing=True``.
"""

from __future__ import annotations

import math
import numbers
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spherequant._report import atomic_write, format_table, write_json

from .stability import STABILITY_CRITERION, stability_check  # re-exported (public names of tables)

__all__ = [
    "CONFIG_DIR",
    "PAPER",
    "STABILITY_CRITERION",
    "TABLE_ROWS",
    "TableRow",
    "ablation_table",
    "build_table",
    "differences_paragraph",
    "format_markdown",
    "plot_table",
    "quantization_table",
    "stability_check",
    "write_table",
]

#: Folder of the shipped training configs (``models/configs``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


#: Numbers of the seed paper (Tables II and III, Sec. IV; rMD17 azobenzene, DFT labels). Table II gives no
#: units; its energy column is in meV (the abstract quotes "9.31 meV vs. 23.20 meV"), the force column is
#: taken as meV/Angstrom, the unit of the paper's Table III.
PAPER: dict[str, Any] = {
    "source": "Geometric-Aware Quantization (seed paper), Tables II and III, Sec. IV",
    "dataset": "rMD17 azobenzene (DFT labels)",
    "units": {"energy_mae": "meV", "forces_mae": "meV/Angstrom (assumed; not stated)", "lee": "meV/Angstrom"},
    "training": "QAT finetune from a converged FP32 checkpoint, Adam, 80 epochs, equivariant-branch "
    "quantization frozen for the first 10 epochs",
    "md": "NVE, 1 ns (2,000,000 steps of 0.5 fs); naive INT8 explodes within 100 ps",
    "table_ii": [
        {"method": "FP32 Baseline", "key": "fp32", "bits": "32/32", "energy_mae": 23.20, "forces_mae": 21.20,
         "stability": "Stable"},
        {"method": "Naive INT8", "key": "naive_int8", "bits": "8/8", "energy_mae": 118.20,
         "forces_mae": 102.39, "stability": "Degraded"},
        {"method": "SVQ-KMeans", "key": "svq_kmeans", "bits": "8/8", "energy_mae": 226.20, "forces_mae": None,
         "stability": "Diverged", "note": "validation loss stagnated (gradient fracture); force MAE N/A"},
        {"method": "Degree-Quant", "key": "degree_quant", "bits": "8/8", "energy_mae": 63.20,
         "forces_mae": 58.90, "stability": "Stable"},
        {"method": "Ours (GAQ)", "key": "gaq", "bits": "4/8", "energy_mae": 9.31, "forces_mae": 22.60,
         "stability": "Stable"},
    ],
    "table_iii": [
        {"method": "FP32 Baseline", "key": "fp32", "lee": None, "remark": "Exact equivariance"},
        {"method": "Naive INT8", "key": "naive_int8", "lee": 5.23, "remark": "Broken symmetry"},
        {"method": "Degree-Quant", "key": "degree_quant", "lee": 2.10, "remark": "Partially preserved"},
        {"method": "Ours (W4A8)", "key": "gaq", "lee": 0.15, "remark": "Preserved"},
    ],
}  # fmt: skip


@dataclass(frozen=True)
class TableRow:
    """One row of a table: a checkpoint, or the training config whose ``<output_dir>/best.pt`` it is.

    Parameters
    ----------
    name : str
        Row label.
    checkpoint : str or path-like, optional
        Checkpoint path or pretrained name.
    config : str or path-like, optional
        Training config (YAML); a bare file name is looked up in :data:`CONFIG_DIR`.
    force_mode : {"ste", "smooth"}, optional
        Quantized checkpoints: evaluate accuracy, LEE and the ``stability`` column with this force mode
        instead of the stored one.
    ptq : bool
        Apply the naive INT8 post-training quantization to the (FP32) checkpoint.
    paper : str, optional
        Key of the paper's row to show beside it (``"fp32"``, ``"naive_int8"``, ``"svq_kmeans"``,
        ``"degree_quant"``, ``"gaq"``); ``"auto"`` (default) takes the row's method, ``None`` none.

    Examples
    --------
    >>> TableRow("GAQ", config="azobenzene_gaq_w4a8.yaml").config_path().name
    'azobenzene_gaq_w4a8.yaml'
    """

    name: str
    checkpoint: str | os.PathLike | None = None
    config: str | os.PathLike | None = None
    ptq: bool = False
    force_mode: str | None = None
    paper: str | None = "auto"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")
        if (self.checkpoint is None) == (self.config is None):
            raise ValueError(f"row {self.name!r}: give exactly one of checkpoint and config")
        if self.force_mode not in (None, "ste", "smooth"):
            raise ValueError(
                f"row {self.name!r}: force_mode must be None, 'ste' or 'smooth', got {self.force_mode!r}"
            )

    def config_path(self) -> Path | None:
        """Path of the config (None for a checkpoint row)."""
        if self.config is None:
            return None
        p = Path(self.config)
        return p if p.is_absolute() or p.parent != Path(".") else CONFIG_DIR / p

    def resolve(self, root: str | os.PathLike = ".") -> Path:
        """Checkpoint file of the row.

        Raises
        ------
        FileNotFoundError
            When the checkpoint (or the config) does not exist; for a config row the message names
            ``spherequant train <config>``.
        """
        from .checkpoints import resolve_checkpoint
        from .train import load_config

        if self.checkpoint is not None:
            return resolve_checkpoint(self.checkpoint)
        cfg_path = self.config_path()
        cfg = load_config(cfg_path)
        path = Path(root) / cfg.output_dir / "best.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"row {self.name!r}: checkpoint {str(path)!r} does not exist; train it first with "
                f"`spherequant train {_display(cfg_path)}`"
            )
        return path


def _display(path: Path) -> str:
    """``path`` relative to the current folder when inside it, else absolute."""
    try:
        return Path(path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _ablation_rows() -> tuple[TableRow, ...]:
    """The reference row (the main table's GAQ run with the attention kept), then one row per ablation config:
    each config is that run with one change, so the reference is trained once for both tables."""
    reference = TableRow("gaq_reference", config="azobenzene_gaq_w4a8_keep.yaml", paper=None)
    files = sorted((CONFIG_DIR / "ablations").glob("*.yaml"))
    return (reference, *(TableRow(p.stem, config=p, paper=None) for p in files))


#: Default rows: ``"quantization"`` (the main table) and ``"ablations"`` (reference row ``gaq_reference``).
TABLE_ROWS: dict[str, tuple[TableRow, ...]] = {
    "quantization": (
        TableRow("FP32 parent (So3krates attention)", checkpoint="azobenzene-gfn2-fp32"),
        TableRow("FP32 finetuned (control)", config="azobenzene_fp32_finetune.yaml", paper=None),
        TableRow("naive INT8 (PTQ)", checkpoint="azobenzene-gfn2-fp32", ptq=True),
        TableRow("Degree-Quant", config="azobenzene_degree_quant.yaml"),
        TableRow("LSQ", config="azobenzene_lsq.yaml"),
        TableRow("QDrop", config="azobenzene_qdrop.yaml"),
        TableRow("SVQ-KMeans", config="azobenzene_svq_kmeans.yaml"),
        TableRow("FP32 parent (cosine attention)", checkpoint="azobenzene-gfn2-fp32-cosine", paper=None),
        TableRow("GAQ W4A8 (cosine attention)", config="azobenzene_gaq_w4a8.yaml"),
        TableRow("GAQ W4A8 (FP32 attention kept)", config="azobenzene_gaq_w4a8_keep.yaml"),
        TableRow(
            "GAQ W4A8 (FP32 attention kept), smooth forces",
            config="azobenzene_gaq_w4a8_keep.yaml",
            force_mode="smooth",
        ),
        TableRow("GAQ, MDDQ 8 + 16 = 24 bits per vector", config="azobenzene_gaq_24bit.yaml", paper=None),
        TableRow(
            "per-axis INT8, 3 x 8 = 24 bits per vector", config="azobenzene_per_axis_int8.yaml", paper=None
        ),
    ),
    "ablations": _ablation_rows(),
}


# ----------------------------------------------------------------------------------------------------------
# building a table
# ----------------------------------------------------------------------------------------------------------
def _as_rows(rows) -> list[TableRow]:
    out = []
    for r in rows:
        if isinstance(r, TableRow):
            out.append(r)
        elif isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str):
            out.append(TableRow(r[0], checkpoint=r[1]))
        else:
            raise TypeError(f"rows must hold TableRow or (name, checkpoint) pairs, got {r!r}")
    if not out:
        raise ValueError("rows must not be empty")
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique, got {names}")
    return out


def _training_facts(raw: dict) -> dict:
    tc = raw.get("train_config") or {}
    q = tc.get("quantization") or {}
    opts = q.get("options") or {}
    return {
        "dataset": tc.get("dataset"),
        "n_train": tc.get("n_train"),
        "n_val": tc.get("n_val"),
        "epochs": tc.get("epochs"),
        "epochs_trained": raw.get("epoch"),
        "lr": tc.get("lr"),
        "init_checkpoint": q.get("init_checkpoint") or tc.get("init_checkpoint"),
        "warmup_epochs": opts.get("warmup_epochs"),
        "options": opts,
    }


def _checkpoint_label(spec: TableRow, path: Path) -> str:
    """A pretrained name as given, a file relative to the current folder when inside it."""
    if spec.checkpoint is not None and not Path(spec.checkpoint).is_file():
        return str(spec.checkpoint)
    return _display(path)


def _one_row(spec: TableRow, path: Path, kw: dict, md: dict, device, log) -> dict:
    from . import checkpoints as ckpt_mod
    from .deploy import memory_report
    from .evaluation import accuracy_and_lee, checkpoint_test_data, naive_int8_model

    raw, ds, sp = checkpoint_test_data(path)
    if len(sp.test) == 0:
        raise ValueError(f"row {spec.name!r}: the test split of {str(path)!r} is empty")
    quant = raw.get("quantization")
    if spec.ptq:
        if quant:
            raise ValueError(
                f"row {spec.name!r}: naive INT8 PTQ needs an FP32 checkpoint, {str(path)!r} is not"
            )
        model = naive_int8_model(raw, ds, sp, md["calibration_frames"], device)
        method = "naive_int8"
    else:
        model = ckpt_mod.load_model(raw, device=device, force_mode=spec.force_mode)
        method = quant["method"] if quant else "fp32"
    # one model per row, loaded once: the same evaluation as evaluate_checkpoint / naive_int8_ptq
    metrics = accuracy_and_lee(
        model, ds, sp.test, kw["max_test_frames"], kw["lee_frames"], kw["n_rotations"], kw["seed"]
    )
    first = int(sp.test[0])
    z = ds.numbers[ds.ptr[first] : ds.ptr[first + 1]]
    rep = memory_report(model, n_atoms=int(z.size))
    model_bytes = rep["weights"]["total"]["quantized" if method != "fp32" else "fp32"]
    row = {
        "name": spec.name,
        "method": method,
        "checkpoint": _checkpoint_label(spec, path),
        "ptq": bool(spec.ptq),
        "energy_mae": metrics["energy_mae"],
        "forces_mae": metrics["forces_mae"],
        "lee_mean": metrics["lee_mean"],
        "lee_max": metrics["lee_max"],
        "model_bytes": int(model_bytes),
        "model_bytes_fp32": int(rep["weights"]["total"]["fp32"]),
        "energy_rmse": metrics.get("energy_rmse"),
        "forces_rmse": metrics.get("forces_rmse"),
        "n_test_frames": metrics.get("n_frames"),
        "n_test_frames_available": metrics.get("n_test_frames_available"),
        "lee_frames": metrics.get("lee_frames"),
        "lee_rotations": metrics.get("lee_rotations"),
        "force_mode": (ckpt_mod.quantization_entry(model) or {}).get("force_mode"),
        "training": _training_facts(raw),
    }
    if spec.config is not None:
        row["config"] = _display(spec.config_path())
    paper = method if spec.paper == "auto" else spec.paper
    if paper is not None:
        row["paper_key"] = paper
    if md["n_steps"] > 0:
        idx = sp.test[: md["replicas"]]
        pos = np.stack([ds.positions[ds.ptr[int(i)] : ds.ptr[int(i) + 1]] for i in idx])
        if method == "fp32":
            modes = ["fp32"]
        elif spec.force_mode == "smooth":
            modes = ["smooth"]  # its "ste" run would repeat the row without force_mode
        else:
            modes = ["ste", "smooth"]
        for mode in modes:
            if mode != "fp32":
                from .gaq import set_force_mode

                set_force_mode(model, mode)
            if log:
                steps = f"{md['n_steps']} x {md['timestep_fs']} fs"
                log(f"  {spec.name}: NVE {steps}, {len(idx)} replicas, forces: {mode}")
            result = stability_check(
                model,
                z,
                pos,
                n_steps=md["n_steps"],
                timestep_fs=md["timestep_fs"],
                temperature_K=md["temperature_K"],
                seed=md["seed"],
                drift_threshold=md["drift_threshold"],
                device=device,
            )
            result["force_mode"] = mode
            # "stability": the model as it infers (quantized forces); "stability_smooth": the smooth,
            # conservative force mode that `spherequant md` uses for quantized models (docs: Concepts)
            row["stability" if mode in ("fp32", "ste") else "stability_smooth"] = result
        if method == "fp32":
            row["stability_smooth"] = row["stability"]
        elif spec.force_mode == "smooth":
            row["stability"] = row["stability_smooth"]
    else:
        row["stability"] = {
            "verdict": "not run",
            "drift": None,
            "simulated_ps": 0.0,
            "reason": "md_steps = 0",
        }
    return row


def build_table(
    rows: Sequence,
    *,
    table: str = "quantization",
    root: str | os.PathLike = ".",
    max_test_frames: int | None = None,
    lee_frames: int = 200,
    n_rotations: int = 8,
    md_steps: int = 2000,
    md_replicas: int = 4,
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    drift_threshold: float = 1.0,
    calibration_frames: int = 80,
    allow_missing: bool = False,
    seed: int = 0,
    device: str = "cpu",
    log=None,
) -> dict:
    """Evaluate every row (accuracy, force LEE, weight bytes, NVE stability) into a JSON-ready table.

    Every row's checkpoint is resolved before anything is evaluated, so a missing one fails fast.

    Parameters
    ----------
    rows : sequence of TableRow or (name, checkpoint) pairs
    table : str
        Table name recorded in the result (``"quantization"``, ``"ablations"`` or any label).
    root : path-like
        Folder the configs' ``output_dir`` entries are relative to.
    max_test_frames : int, optional
        First frames of each test split only (all by default).
    lee_frames, n_rotations : int
        Frames and Haar rotations per frame of the force LEE.
    md_steps : int
        NVE steps of the stability check (0 skips it).
    md_replicas : int
        Replicas, started from the first test frames.
    timestep_fs, temperature_K, drift_threshold
        See :func:`stability_check`.
    calibration_frames : int
        Training frames calibrating the naive INT8 PTQ row (80 = the 16 batches of 5 of
        ``azobenzene_naive_int8.yaml``).
    allow_missing : bool
        Skip rows without a checkpoint (listed under ``"missing"``) instead of raising.
    seed : int
        Seed of the LEE rotations and of the initial MD velocities.
    device : str
    log : callable, optional
        Called with progress lines (e.g. ``print``).

    Returns
    -------
    dict
        ``table``, ``units``, ``settings``, ``stability_criterion``, ``rows`` (see the module docstring),
        ``missing`` (``[{"name", "reason"}]``), ``dataset`` (metadata of the first row's data set).

    Raises
    ------
    FileNotFoundError
        A row's checkpoint is missing (and ``allow_missing`` is False).

    Examples
    --------
    >>> build_table([("x", "no-such-checkpoint.pt")], allow_missing=True)["missing"][0]["name"]
    'x'
    """
    specs = _as_rows(rows)
    for name, value, lo in (("lee_frames", lee_frames, 1), ("n_rotations", n_rotations, 1),
                            ("md_steps", md_steps, 0), ("md_replicas", md_replicas, 1),
                            ("calibration_frames", calibration_frames, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if max_test_frames is not None and (
        isinstance(max_test_frames, bool)
        or not isinstance(max_test_frames, numbers.Integral)
        or max_test_frames < 1
    ):
        raise ValueError(f"max_test_frames must be None or an int >= 1, got {max_test_frames!r}")
    for name, value, strict in (("timestep_fs", timestep_fs, True), ("temperature_K", temperature_K, False),
                                ("drift_threshold", drift_threshold, False)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite real number, got {value!r}")
        if value < 0 or (strict and value == 0):
            raise ValueError(f"{name} must be {'> 0' if strict else '>= 0'}, got {value!r}")
    resolved, missing = [], []
    for spec in specs:
        try:
            resolved.append((spec, spec.resolve(root)))
        except FileNotFoundError as err:
            if not allow_missing:
                raise
            missing.append({"name": spec.name, "reason": str(err)})
    md = dict(n_steps=md_steps, replicas=md_replicas, timestep_fs=float(timestep_fs),
              temperature_K=float(temperature_K), seed=seed, drift_threshold=float(drift_threshold),
              calibration_frames=calibration_frames)  # fmt: skip
    out_rows = []
    dataset_meta = None
    for spec, path in resolved:
        if log:
            log(f"{spec.name}: {path}")
        kw = dict(max_test_frames=max_test_frames, lee_frames=lee_frames, n_rotations=n_rotations, seed=seed)
        out_rows.append(_one_row(spec, path, kw, md, device, log))
        if dataset_meta is None:
            dataset_meta = _dataset_facts(out_rows[-1]["training"]["dataset"])
    return {
        "table": table,
        "units": {"energy_mae": "meV", "forces_mae": "meV/Angstrom (per component)", "lee": "meV/Angstrom",
                  "model_bytes": "bytes", "drift": "meV/atom/ps", "simulated_ps": "ps"},
        "settings": {"max_test_frames": max_test_frames, "lee_frames": lee_frames, "rotations": n_rotations,
                     "md_steps": md_steps, "md_replicas": md_replicas, "timestep_fs": float(timestep_fs),
                     "temperature_K": float(temperature_K), "drift_threshold": float(drift_threshold),
                     "calibration_frames": calibration_frames, "seed": seed},
        "stability_criterion": STABILITY_CRITERION,
        "rows": out_rows,
        "missing": missing,
        "dataset": dataset_meta,
    }  # fmt: skip


def _dataset_facts(name) -> dict | None:
    """A few metadata entries of a data set (how it was labelled and sampled)."""
    if name is None:
        return None
    from .train import load_training_data

    try:
        ds = load_training_data(str(name))
    except (OSError, ValueError, KeyError):
        return {"name": str(name)}
    meta = getattr(ds, "metadata", None) or {}
    keys = ("method", "molecule", "n_frames", "temperature_K", "timestep_fs", "stride", "frame_spacing_fs")
    return {"name": str(name), "n_frames_file": len(ds), **{k: meta[k] for k in keys if k in meta}}


def quantization_table(rows: Sequence | None = None, **kwargs) -> dict:
    """The main table (paper Tables II-III): :data:`TABLE_ROWS` ``["quantization"]`` by default.

    Keywords as :func:`build_table`; the result also holds ``paper`` (:data:`PAPER`).

    Examples
    --------
    >>> [r.name for r in TABLE_ROWS["quantization"]][:3]
    ['FP32 parent (So3krates attention)', 'FP32 finetuned (control)', 'naive INT8 (PTQ)']
    """
    data = build_table(TABLE_ROWS["quantization"] if rows is None else rows, table="quantization", **kwargs)
    data["paper"] = PAPER
    return data


def ablation_table(rows: Sequence | None = None, *, reference: str | None = None, **kwargs) -> dict:
    """The ablations (``models/configs/ablations``), relative to a reference row (``gaq_reference``).

    Each row gains ``change`` (the quantization options that differ from the reference's) and
    ``forces_mae_vs_reference`` / ``lee_mean_vs_reference`` (ratios). ``reference`` defaults to
    ``"gaq_reference"`` when such a row exists, else the first row.

    Examples
    --------
    >>> [r.name for r in TABLE_ROWS["ablations"]][0]
    'gaq_reference'
    """
    data = build_table(TABLE_ROWS["ablations"] if rows is None else rows, table="ablations", **kwargs)
    names = [r["name"] for r in data["rows"]]
    if reference is None:
        reference = "gaq_reference" if "gaq_reference" in names else (names[0] if names else None)
    elif reference not in names:
        raise ValueError(f"reference {reference!r} is not one of the evaluated rows {names}")
    data["reference"] = reference
    data["paper"] = {"source": PAPER["source"], "note": "the paper reports no numbers for these ablations"}
    ref = next((r for r in data["rows"] if r["name"] == reference), None)
    for r in data["rows"]:
        if ref is None:
            break
        a, b = r["training"]["options"], ref["training"]["options"]
        diff = {k: a.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "seed"}
        if r["method"] != ref["method"]:
            diff = {"method": r["method"], **diff}
        r["change"] = ", ".join(f"{k}={v}" for k, v in diff.items()) or ("reference" if r is ref else "none")
        for key in ("forces_mae", "lee_mean"):
            r[f"{key}_vs_reference"] = r[key] / ref[key] if ref[key] else float("nan")
    return data


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------
def _paper_values(key) -> dict:
    t2 = next((r for r in PAPER["table_ii"] if r["key"] == key), {})
    t3 = next((r for r in PAPER["table_iii"] if r["key"] == key), {})
    return {"energy_mae": t2.get("energy_mae"), "forces_mae": t2.get("forces_mae"), "lee": t3.get("lee"),
            "stability": t2.get("stability"), "remark": t3.get("remark")}  # fmt: skip


def _num(v, fmt=".4g"):
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def _verdict(st: dict) -> str:
    v = st.get("verdict", "-")
    if v == "exploded" and st.get("exploded_at_ps") is not None:
        return f"exploded at {st['exploded_at_ps']:.3g} ps"
    return v


def _table_rows(data: dict) -> tuple[list[list[str]], list[str]]:
    rows = data.get("rows") or []
    if data.get("table") == "ablations":
        headers = ["row", "change", "E-MAE (meV)", "F-MAE (meV/A)", "F-MAE / ref", "LEE mean (meV/A)",
                   "LEE / ref", "LEE max (meV/A)", "weights (KiB)", "NVE verdict", "drift (meV/atom/ps)",
                   "NVE verdict (smooth forces)", "drift (smooth)", "NVE (ps)"]  # fmt: skip
        body = []
        for r in rows:
            st, sm = r["stability"], r.get("stability_smooth") or {}
            body.append([r["name"], r.get("change", ""), _num(r["energy_mae"]), _num(r["forces_mae"]),
                         _num(r.get("forces_mae_vs_reference"), ".3g"), _num(r["lee_mean"]),
                         _num(r.get("lee_mean_vs_reference"), ".3g"), _num(r["lee_max"]),
                         _num(r["model_bytes"] / 1024, ".1f"), _verdict(st), _num(st.get("drift"), ".3g"),
                         _verdict(sm), _num(sm.get("drift"), ".3g"),
                         _num(st.get("simulated_ps"), ".3g")])  # fmt: skip
        return body, headers
    headers = ["row", "method", "E-MAE (meV)", "paper E-MAE", "F-MAE (meV/A)", "paper F-MAE",
               "LEE mean (meV/A)", "paper LEE", "LEE max (meV/A)", "weights (KiB)", "NVE verdict",
               "drift (meV/atom/ps)", "NVE verdict (smooth forces)", "drift (smooth)", "NVE (ps)",
               "paper stability"]  # fmt: skip
    body = []
    for r in rows:
        p = _paper_values(r.get("paper_key")) if r.get("paper_key") else {}
        lee_p = p.get("lee") if p.get("lee") is not None else p.get("remark")
        st = r["stability"]
        sm = r.get("stability_smooth") or {}
        body.append([r["name"], r["method"], _num(r["energy_mae"]), _num(p.get("energy_mae")),
                     _num(r["forces_mae"]), _num(p.get("forces_mae")), _num(r["lee_mean"]), _num(lee_p),
                     _num(r["lee_max"]), _num(r["model_bytes"] / 1024, ".1f"), _verdict(r["stability"]),
                     _num(st.get("drift"), ".3g"), _verdict(sm), _num(sm.get("drift"), ".3g"),
                     _num(st.get("simulated_ps"), ".3g"), _num(p.get("stability"))])  # fmt: skip
    return body, headers


def differences_paragraph(data: dict) -> str:
    """Structural differences between this table and the paper's, stated from the facts stored in ``data``.

    Examples
    --------
    >>> differences_paragraph({"rows": [], "settings": {}})
    ''
    """
    rows = data.get("rows") or []
    if not rows:
        return ""
    s = data.get("settings") or {}
    ds = data.get("dataset") or {}
    parts = []
    if ds.get("method"):
        sampled = ""
        if ds.get("temperature_K") is not None:
            sampled = f", sampled from {ds['temperature_K']:g} K Langevin dynamics"
        parts.append(
            f"Data: {ds.get('name')} ({ds.get('n_frames_file', '?')} frames of {ds.get('molecule', '?')} "
            f"labelled by {ds['method']}{sampled}), not the DFT labels of rMD17 azobenzene used by the paper."
        )
    tr = rows[0]["training"]
    avail = rows[0].get("n_test_frames_available")
    parts.append(
        f"Split: {tr.get('n_train')} training / {tr.get('n_val')} validation frames; errors over "
        f"{rows[0].get('n_test_frames')} of the {avail} remaining test frames."
    )
    qat = [r for r in rows if r["method"] != "fp32" and not r.get("ptq") and r["training"].get("epochs")]
    epochs = sorted({r["training"]["epochs"] for r in qat})
    warm = sorted({r["training"]["warmup_epochs"] for r in qat if r["training"].get("warmup_epochs")})
    if epochs:
        w = f", staged warm-up of {'/'.join(map(str, warm))} epochs" if warm else ""
        parts.append(
            f"Schedule: quantization-aware finetuning from {qat[0]['training'].get('init_checkpoint')} for "
            f"{'/'.join(map(str, epochs))} epochs{w}, learning rate "
            f"{'/'.join(format(x, 'g') for x in sorted({r['training']['lr'] for r in qat}))} (the paper: 80 "
            "epochs, 10 warm-up)."
        )
    control = [r for r in rows if r["method"] == "fp32" and r["training"].get("init_checkpoint")]
    if control:
        parts.append(
            f"The FP32 control ({control[0]['name']}) is finetuned for "
            f"{control[0]['training'].get('epochs')} epochs without quantization, to separate the effect of "
            "the extra epochs from that of quantization."
        )
    if any(r.get("ptq") for r in rows):
        parts.append(
            f"Naive INT8 is post-training (calibrated on {s.get('calibration_frames')} training frames)."
        )
    if s.get("md_steps"):
        ps = s["md_steps"] * s.get("timestep_fs", 0.5) / 1000
        parts.append(
            f"NVE: {s['md_steps']} steps of {s.get('timestep_fs')} fs ({ps:g} ps) with "
            f"{s.get('md_replicas')} replicas per model (the paper: 1 ns); drift threshold "
            f"{s.get('drift_threshold')} meV/atom/ps."
        )
    parts.append(f"LEE: {s.get('lee_frames')} test frames x {s.get('rotations')} Haar rotations.")
    return " ".join(parts)


def format_markdown(data: dict) -> str:
    """Markdown of a table (the numbers, then the differences paragraph and any missing rows).

    Examples
    --------
    >>> format_markdown({"table": "ablations", "rows": []}).split(" | ")[:3]
    ['| row', 'change', 'E-MAE (meV)']
    """
    body, headers = _table_rows(data)
    out = [format_table(body, headers)]
    diff = differences_paragraph(data)
    if diff:
        out.append("\n" + diff)
    missing = data.get("missing") or []
    if missing:
        out.append("\n" + "\n".join(f"- not evaluated: {m['name']} ({m['reason']})" for m in missing))
    return "\n".join(out) + "\n"


def plot_table(data: dict, path: str | os.PathLike) -> Path:
    """Bar plot (log y) of the force MAE and the mean force LEE per row; paper values as black markers.

    Returns
    -------
    pathlib.Path
        ``path`` (PNG, written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data.get("rows") or []
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(rows) + 3), 4.2))
    x = np.arange(len(rows))
    for ax, key, pkey, label in ((axes[0], "forces_mae", "forces_mae", "force MAE (meV/A)"),
                                 (axes[1], "lee_mean", "lee", "mean force LEE (meV/A)")):  # fmt: skip
        vals = np.array([max(float(r[key]), 1e-6) for r in rows]) if rows else np.zeros(0)
        ax.bar(x, vals, color="tab:blue", label="this project")
        paper = [_paper_values(r.get("paper_key")).get(pkey) if r.get("paper_key") else None for r in rows]
        px = [i for i, v in enumerate(paper) if v is not None]
        if px:
            ax.plot(px, [paper[i] for i in px], "k_", ms=18, mew=2.5, label="paper")
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(f"{data.get('table', 'table')}: test-split force error and equivariance", fontsize=10)
    fig.tight_layout()
    path = Path(path)

    def write(fh):
        fig.savefig(fh, format="png", dpi=110)

    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)
    return path


def write_table(data: dict, out_dir: str | os.PathLike, command: Sequence[str] | str | None = None) -> dict:
    """Write ``<out_dir>/<table>.json``, ``.md`` and ``.png``; returns the paths by suffix.

    ``command`` (the exact command line, default ``sys.argv``) is stored in the JSON.
    """
    out_dir = Path(out_dir)
    name = str(data.get("table", "table"))
    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    data = {"table": name, "command": command, **{k: v for k, v in data.items() if k != "table"}}
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    write_json(paths["json"], _jsonable(data))
    md = f"# {name}\n\n<!-- written by `{command}` -->\n\n{format_markdown(data)}"
    atomic_write(paths["md"], lambda fh: fh.write(md.encode()))
    plot_table(data, paths["png"])
    return paths


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        obj = float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
