"""``spherequant evaluate``: test-split accuracy and force equivariance of a checkpoint (and naive INT8 PTQ).

Examples::

    spherequant evaluate azobenzene-gfn2-fp32 --json benchmarks/results/fp32_eval.json
    spherequant evaluate runs/azobenzene_fp32/best.pt --naive-int8 --max-test-frames 1000
    spherequant evaluate --table quantization --out-dir benchmarks/results
    spherequant evaluate --table ablations --allow-missing
    spherequant evaluate --table quantization --row "FP32=fp32.pt" --row "INT8=naive-int8:fp32.pt"

With ``--table`` (see :mod:`spherequant.models.tables`) every row of the quantization study (or the rows given
by ``--row NAME=CHECKPOINT``; the prefix ``naive-int8:`` applies the naive INT8 PTQ to an FP32 checkpoint)
is evaluated for accuracy, force LEE, weight bytes and NVE stability, and ``<out-dir>/<table>.json``,
``.md`` and ``.png`` are written.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from spherequant._report import format_table, write_json

from .cli import USER_ERRORS, report_error

__all__ = ["add_arguments", "main", "run"]

_COLUMNS = ("energy_mae", "forces_mae", "energy_rmse", "forces_rmse", "lee_mean", "lee_max", "n_frames")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", nargs="?", default=None, help="checkpoint path or pretrained name (not with --table)"
    )
    parser.add_argument(
        "--max-test-frames", type=int, default=None, help="first frames of the test split only"
    )
    parser.add_argument("--lee-frames", type=int, default=200, help="test frames rotated for the LEE")
    parser.add_argument("--rotations", type=int, default=8, help="Haar rotations per LEE frame")
    parser.add_argument("--naive-int8", action="store_true", help="also evaluate naive INT8 PTQ of the model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    tab = parser.add_argument_group("tables (--table)")
    tab.add_argument(
        "--table", choices=("quantization", "ablations"), default=None, help="build a study table instead"
    )
    tab.add_argument("--out-dir", default="benchmarks/results", help="folder for <table>.json/.md/.png")
    tab.add_argument(
        "--row",
        action="append",
        default=None,
        metavar="NAME=CHECKPOINT",
        help="a row (repeatable; replaces the default rows); CHECKPOINT may start with 'naive-int8:'",
    )
    tab.add_argument("--root", default=".", help="folder the configs' output_dir entries are relative to")
    tab.add_argument("--md-steps", type=int, default=2000, help="NVE steps of the stability check (0: skip)")
    tab.add_argument("--md-replicas", type=int, default=4, help="NVE replicas (first test frames)")
    tab.add_argument("--timestep", type=float, default=0.5, help="NVE timestep (fs)")
    tab.add_argument(
        "--drift-threshold", type=float, default=1.0, help="largest |drift| of a stable run (meV/atom/ps)"
    )
    tab.add_argument("--allow-missing", action="store_true", help="skip rows whose checkpoint is missing")


def run(args) -> int:
    from .checkpoints import resolve_device
    from .evaluation import evaluate_checkpoint, naive_int8_ptq

    for name in ("max_test_frames", "lee_frames", "rotations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return report_error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    try:
        resolve_device(args.device, "--device")
    except ValueError as err:
        return report_error(err)
    if args.json and Path(args.json).is_dir():
        return report_error(f"--json {args.json!r} is a folder; give a file name")
    table = getattr(args, "table", None)
    if table is not None and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        return report_error(f"--out-dir {args.out_dir!r} exists and is not a folder")
    if (args.checkpoint is None) == (table is None):
        return report_error(
            "give either a checkpoint or --table quantization|ablations (exactly one of them)"
        )
    if table is not None:
        return _run_table(args)
    kw = {
        "max_test_frames": args.max_test_frames,
        "lee_frames": args.lee_frames,
        "n_rotations": args.rotations,
        "device": args.device,
    }
    try:
        rows = [{"name": "model", **evaluate_checkpoint(args.checkpoint, **kw)}]
        if args.naive_int8:
            rows.append({"name": "naive INT8 (PTQ)", **naive_int8_ptq(args.checkpoint, **kw)})
    except USER_ERRORS as err:
        return report_error(f"{err}")
    print(f"{rows[0]['dataset']}, test split ({rows[0]['n_test_frames_available']} frames available)")
    print(format_table([[r["name"], *(r[c] for c in _COLUMNS)] for r in rows], ["model", *_COLUMNS]))
    print(
        "units: meV (energy), meV/Angstrom (forces, LEE); LEE over "
        f"{rows[0]['lee_frames']} frames x {rows[0]['lee_rotations']} rotations"
    )
    if args.json:
        write_json(args.json, {"command": "spherequant evaluate", "rows": rows})
        print(f"wrote {args.json}")
    return 0


def _parse_rows(items):
    from .tables import TableRow

    rows = []
    for item in items:
        name, sep, ckpt = item.partition("=")
        if not sep or not name or not ckpt:
            raise ValueError(f"--row must be NAME=CHECKPOINT, got {item!r}")
        ptq = ckpt.startswith("naive-int8:")
        rows.append(TableRow(name, checkpoint=ckpt.removeprefix("naive-int8:"), ptq=ptq))
    return rows


def _run_table(args) -> int:
    from .tables import ablation_table, format_markdown, quantization_table, write_table

    if args.naive_int8 or args.json:
        return report_error(
            "--naive-int8 and --json apply to a single checkpoint; --table writes to --out-dir"
        )
    for name, low in (("md_steps", 0), ("md_replicas", 1)):
        value = getattr(args, name)
        if value < low:
            return report_error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    kw = dict(
        root=args.root,
        max_test_frames=args.max_test_frames,
        lee_frames=args.lee_frames,
        n_rotations=args.rotations,
        md_steps=args.md_steps,
        md_replicas=args.md_replicas,
        timestep_fs=args.timestep,
        drift_threshold=args.drift_threshold,
        allow_missing=args.allow_missing,
        device=args.device,
        log=print,
    )
    build = quantization_table if args.table == "quantization" else ablation_table
    try:
        rows = _parse_rows(args.row) if args.row else None
        data = build(rows, **kw)
    except USER_ERRORS as err:
        return report_error(f"{err}")
    command = _command(args)
    paths = write_table(data, args.out_dir, command=command)
    print(format_markdown(data))
    print("units: meV (energy), meV/Angstrom (forces, LEE), meV/atom/ps (drift)")
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def _command(args) -> str:
    """The command line that reproduces a table run (every option spelled out)."""
    words = ["spherequant", "evaluate", "--table", args.table, "--out-dir", args.out_dir, "--root", args.root]
    if args.max_test_frames is not None:
        words += ["--max-test-frames", str(args.max_test_frames)]
    words += ["--lee-frames", str(args.lee_frames), "--rotations", str(args.rotations)]
    words += ["--md-steps", str(args.md_steps), "--md-replicas", str(args.md_replicas)]
    words += ["--timestep", f"{args.timestep:g}", "--drift-threshold", f"{args.drift_threshold:g}"]
    for row in args.row or []:
        words += ["--row", row]
    if args.allow_missing:
        words.append("--allow-missing")
    if args.device != "cpu":
        words += ["--device", args.device]
    return shlex.join(words)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="spherequant evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except USER_ERRORS as err:
        return report_error(err)
