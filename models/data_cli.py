"""``spherequant data``: generate GFN2-xTB reference data and inspect data files.

Subcommands::

    spherequant data xtb-md --molecule ethanol --frames 50 [--temperature 500 --stride 20 --timestep 0.5
                            --seed 0 --workers 1 --out ethanol.npz --no-resume --float32]
    spherequant data info FILE|NAME
    spherequant data list

Also runnable as ``python -m spherequant.models.data_cli ...``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``data`` subcommands on ``parser``."""
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    md = sub.add_parser(
        "xtb-md",
        help="Langevin MD with GFN2-xTB -> rMD17-format .npz (needs `pip install spherequant[xtb]`)",
        description="Generate a GFN2-xTB Langevin MD data set in rMD17 format (kcal/mol) with provenance.",
    )
    md.add_argument(
        "--molecule", required=True, help="built-in name (ethanol, azobenzene, ...), SMILES, or .xyz"
    )
    md.add_argument("--frames", type=int, default=1000, help="frames to store (default 1000)")
    md.add_argument("--temperature", type=float, default=500.0, help="kelvin (default 500)")
    md.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    md.add_argument("--stride", type=int, default=20, help="MD steps between frames (default 20)")
    md.add_argument("--equilibration", type=int, default=2000, help="dropped MD steps (default 2000)")
    md.add_argument("--seed", type=int, default=0, help="Langevin / momenta seed (default 0)")
    md.add_argument("--workers", type=int, default=1, help="independent trajectories in parallel (default 1)")
    md.add_argument(
        "--checkpoint-every", type=int, default=200, help="frames between checkpoints (default 200)"
    )
    md.add_argument("--accuracy", type=float, default=1.0, help="tblite accuracy (default 1.0)")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs (default 0.01)")
    md.add_argument("--float32", action="store_true", help="store coordinates and forces as float32")
    md.add_argument("--out", default=None, help="output .npz (default <molecule>-gfn2-<T>K.npz)")
    md.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from <out>.ckpt.npz if present (default: yes)",
    )
    md.add_argument("--quiet", action="store_true", help="no progress bar")
    info = sub.add_parser("info", help="summarise a data file or a shipped data set name")
    info.add_argument("target", help="path (.npz rMD17/ours, .extxyz, anything ASE reads) or shipped name")
    sub.add_parser("list", help="list the shipped data sets")


def _summary(ds) -> str:
    import numpy as np

    from .data import energy_statistics

    lines = [f"frames                 {len(ds)}"]
    lines.append(f"composition            {ds.formula if ds.fixed_composition else 'variable'}")
    lines.append(f"atoms per frame        {int(ds.n_atoms.min())}..{int(ds.n_atoms.max())}")
    if len(ds):
        e = ds.energies
        lines.append(
            f"energy (eV)            mean {e.mean():.4f}  std {e.std():.4f}  span {e.max() - e.min():.4f}"
        )
        st = energy_statistics(ds)
        if ds.has_forces:
            fn = np.linalg.norm(ds.forces, axis=-1)
            lines.append(f"|F| (eV/A)             mean {fn.mean():.4f}  max {fn.max():.4f}")
            lines.append(f"force RMS (eV/A)       {st.force_rms:.4f}   shift method {st.method}")
        else:
            lines.append(f"forces                 none (energy-only data)   shift method {st.method}")
    meta = ds.metadata
    for key in ("method", "molecule", "smiles", "temperature_K", "timestep_fs", "stride", "frame_spacing_fs",
                "equilibration_steps", "seed", "scf_failures", "wall_time_per_frame_s", "storage_dtype",
                "source_file", "command"):  # fmt: skip
        if key in meta and meta[key] is not None:
            lines.append(f"{key:<23}{meta[key]}")
    if "versions" in meta:
        lines.append("versions".ljust(23) + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    return "\n".join(lines)


def _open(target: str):
    from .data import available_datasets, load_dataset, load_npz, read_ase
    from .qm9 import parse_name

    p = Path(target)
    if p.exists():
        return load_npz(p) if p.suffix == ".npz" else read_ase(p)
    if target in available_datasets() or target.endswith("K") or parse_name(target) is not False:
        return load_dataset(target)
    raise ValueError(
        f"{target!r} is neither an existing file nor a shipped data set ({available_datasets()})"
    )


def _check_xtb_args(args) -> None:
    """Bad numbers and output paths fail before the (optional) xTB backend is even imported."""
    import math

    for name in ("frames", "stride", "workers", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.equilibration < 0:
        raise ValueError(f"--equilibration must be >= 0, got {args.equilibration}")
    for name in ("temperature", "timestep", "accuracy", "friction"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a positive finite number, got {value}")
    if args.workers > args.frames:
        raise ValueError(f"--workers ({args.workers}) must not exceed --frames ({args.frames})")
    if args.out is not None and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give a .npz file name")


def _error(err) -> int:
    from .cli import report_error

    return report_error(err)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``spherequant data`` command; returns the exit status."""
    cmd = getattr(args, "data_command", None)
    if cmd == "list":
        from .data import available_datasets

        print("\n".join(available_datasets()))
        return 0
    if cmd == "info":
        try:
            ds = _open(args.target)
        except (ValueError, TypeError, OSError) as err:
            return _error(err)
        print(_summary(ds))
        return 0
    if cmd == "xtb-md":
        from .xtb import command_line, generate_xtb_md, resolve_molecule

        try:
            _check_xtb_args(args)
            label = resolve_molecule(args.molecule)[0]
        except (ValueError, TypeError) as err:
            return _error(err)
        out = args.out or f"{label.replace(' ', '-')}-gfn2-{args.temperature:g}K.npz"
        try:
            path = generate_xtb_md(
                args.molecule,
                out,
                temperature=args.temperature,
                timestep_fs=args.timestep,
                stride=args.stride,
                n_frames=args.frames,
                equilibration_steps=args.equilibration,
                seed=args.seed,
                workers=args.workers,
                checkpoint_every=args.checkpoint_every,
                resume=args.resume,
                accuracy=args.accuracy,
                friction=args.friction,
                float32=args.float32,
                progress=not args.quiet,
                command=getattr(args, "_command", None) or command_line(),
            )
        except (ValueError, TypeError, ImportError) as err:
            return _error(err)
        from .data import load_npz

        print(f"wrote {path}")
        print(_summary(load_npz(path)))
        return 0
    from .cli import report_error

    return report_error("give a subcommand: spherequant data {xtb-md,info,list} ... (see --help)")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m spherequant.models.data_cli SUBCOMMAND ...``."""
    parser = argparse.ArgumentParser(prog="spherequant data", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if argv is not None:
        args._command = shlex.join(["spherequant", "data", *argv])
    from .cli import USER_ERRORS

    try:
        return run(args)
    except USER_ERRORS as err:
        return _error(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
