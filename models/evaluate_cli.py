"""``spherequant evaluate``: test-split accuracy and force equivariance of a checkpoint (and naive INT8 PTQ).

Examples::

    spherequant evaluate azobenzene-gfn2-fp32 --json benchmarks/results/fp32_eval.json
    spherequant evaluate runs/azobenzene_fp32/best.pt --naive-int8 --max-test-frames 1000
"""

from __future__ import annotations

import argparse

from spherequant._report import format_table, write_json

__all__ = ["add_arguments", "main", "run"]

_COLUMNS = ("energy_mae", "forces_mae", "energy_rmse", "forces_rmse", "lee_mean", "lee_max", "n_frames")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint path or pretrained name")
    parser.add_argument(
        "--max-test-frames", type=int, default=None, help="first frames of the test split only"
    )
    parser.add_argument("--lee-frames", type=int, default=200, help="test frames rotated for the LEE")
    parser.add_argument("--rotations", type=int, default=8, help="Haar rotations per LEE frame")
    parser.add_argument("--naive-int8", action="store_true", help="also evaluate naive INT8 PTQ of the model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")


def run(args) -> int:
    from .evaluation import evaluate_checkpoint, naive_int8_ptq

    for name in ("max_test_frames", "lee_frames", "rotations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {value}")
            return 2
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
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="spherequant evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
