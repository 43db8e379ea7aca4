"""Test errors of every quantized study model in each force mode, and what the smooth mode keeps.

For each quantized row of the main table (the checkpoints :mod:`nve_stability` integrates; for naive INT8
that is the study's ``azobenzene_naive_int8.yaml`` PTQ checkpoint with its own calibration batches, not the
main table's calibration on 80 frames, so its figures differ from the table's), on the test frames of its
split, three networks are scored:

``ste``
    every quantizer active (the model as it infers; its forces are the straight-through ones);
``smooth``
    the smooth force mode: quantized weights, each activation quantizer replaced by its saturation (clamp to
    its range, MDDQ's magnitude clip; :mod:`spherequant.models.saturation`), conservative forces;
``weights_only``
    quantized weights, activation quantizers switched off (the identity): the smooth mode's definition before
    it kept the clipping, shown to measure what keeping it is worth.

Per network: energy MAE (meV per molecule), the mean signed energy error (``energy_offset``: the smooth
networks keep the energy reference fitted in the stored mode, so a constant offset is expected and harmless
in dynamics), the energy MAE after removing that offset, and the force MAE / RMSE (meV/A per component).
Writes ``benchmarks/results/force_modes.json`` after every model (atomic); a rerun skips models already
scored with the same frames unless ``--force``.

Usage::

    python benchmarks/force_modes.py                       # every quantized study model, all test frames
    python benchmarks/force_modes.py --max-frames 500 --out /tmp/force_modes.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "force_modes.json"
MODES = ("ste", "smooth", "weights_only")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_in_mode(path: Path, mode: str):
    """The checkpoint's model in ``mode`` (see the module docstring), eval mode."""
    from spherequant.models import checkpoints, gaq

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model = checkpoints.load_model(path, force_mode="ste" if mode == "weights_only" else mode)
    if mode == "weights_only":
        for m in model.modules():
            if isinstance(m, gaq.ActivationQuantizer):
                m.enabled = False
    return model.eval()


def errors(model, dataset, indices, batch_size: int = 50) -> dict:
    """Energy and force errors of ``model`` on frames ``indices``, with the energy's mean signed error.

    Returns
    -------
    dict
        ``energy_mae``, ``energy_offset`` (mean of predicted - reference), ``energy_mae_offset_free`` (MAE
        of the errors minus their mean), ``energy_rmse`` (meV); ``forces_mae``, ``forces_rmse`` (meV/A, per
        Cartesian component); ``n_frames``.
    """
    from spherequant.models import data as data_mod

    dtype = next(model.parameters()).dtype
    de, f_abs, f_sq, n_comp = [], 0.0, 0.0, 0
    for b in data_mod.iterate_batches(dataset, indices, batch_size, dtype=dtype):
        out = model(b.z, b.pos, b.batch, num_graphs=b.num_graphs)
        de.append((out["energy"].detach() - b.energy).double())
        df = (out["forces"].detach() - b.forces).double()
        f_abs += float(df.abs().sum())
        f_sq += float((df * df).sum())
        n_comp += df.numel()
    de = torch.cat(de) * 1000.0
    if not bool(torch.isfinite(de).all()) or not math.isfinite(f_sq):
        raise FloatingPointError("non-finite energy or force error")
    offset = float(de.mean())
    return {
        "energy_mae": float(de.abs().mean()),
        "energy_offset": offset,
        "energy_mae_offset_free": float((de - offset).abs().mean()),
        "energy_rmse": float((de * de).mean().sqrt()),
        "forces_mae": 1000.0 * f_abs / n_comp,
        "forces_rmse": 1000.0 * math.sqrt(f_sq / n_comp),
        "n_frames": int(de.numel()),
    }


def quantized_study_models() -> list[tuple[str, Path]]:
    """(row name, checkpoint) of every quantized model of the main table that exists."""
    from nve_stability import resolve, study_models
    from spherequant.models.checkpoints import read_checkpoint

    out = []
    for name, source in study_models():
        try:
            path = resolve(source, name=name)
        except FileNotFoundError as err:
            print(f"skip    {name}: {err}")
            continue
        if read_checkpoint(path).get("quantization") is not None:
            out.append((name, path))
    return out


def score(name: str, path: Path, max_frames: int | None) -> list[dict]:
    """One row per mode for the checkpoint ``path``."""
    from spherequant.models.evaluation import checkpoint_test_data

    _, ds, split = checkpoint_test_data(str(path))
    test = split.test if max_frames is None else split.test[:max_frames]
    rows = []
    for mode in MODES:
        t0 = time.process_time()
        row = {"name": name, "mode": mode, **errors(load_in_mode(path, mode), ds, test)}
        row["n_test_frames_available"] = len(split.test)
        row["checkpoint"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        row["cpu_s"] = round(time.process_time() - t0, 2)
        rows.append(row)
        print(
            f"{name:45s} {mode:13s} F {row['forces_mae']:8.2f} meV/A  E {row['energy_mae']:9.2f} meV "
            f"(offset {row['energy_offset']:+9.2f}, without it {row['energy_mae_offset_free']:8.2f})",
            flush=True,
        )
    return rows


def _write(rows: list[dict], out: Path, max_frames: int | None) -> None:
    from spherequant._report import atomic_write_text

    data = {
        "command": "python benchmarks/force_modes.py"
        + ("" if max_frames is None else f" --max-frames {max_frames}"),
        "modes": {
            "ste": "every quantizer active (straight-through forces)",
            "smooth": "quantized weights, activation quantizers as their saturation (clamp / magnitude "
            "clip), conservative forces",
            "weights_only": "quantized weights, activation quantizers off (the smooth mode before it kept "
            "the clipping)",
        },
        "units": {"energy": "meV per molecule", "forces": "meV/A per Cartesian component"},
        "rows": rows,
    }
    atomic_write_text(out, json.dumps(data, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-frames", type=int, default=None, help="first test frames only (default all)")
    parser.add_argument("--only", action="append", metavar="ROW", help="only these table rows (repeatable)")
    parser.add_argument("--force", action="store_true", help="rescore models already in the output")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max-frames must be >= 1, got {args.max_frames}")
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    models = quantized_study_models()
    order = [name for name, _ in models]
    if args.only:
        unknown = set(args.only) - set(order)
        if unknown:
            parser.error(f"--only: no quantized table row named {sorted(unknown)}")
        models = [m for m in models if m[0] in args.only]

    def scored(row):  # with the frames asked for
        available = row["n_test_frames_available"]
        return row["n_frames"] == (available if args.max_frames is None else min(args.max_frames, available))

    for name, path in models:
        done = [r for r in rows if r["name"] == name]
        if not args.force and len(done) == len(MODES) and all(scored(r) for r in done):
            continue
        rows = [r for r in rows if r["name"] != name] + score(name, path, args.max_frames)
        rows.sort(key=lambda r: (order.index(r["name"]) if r["name"] in order else len(order),
                                 MODES.index(r["mode"])))  # fmt: skip
        _write(rows, out, args.max_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
