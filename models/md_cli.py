"""``spherequant md``: molecular dynamics of a trained model (or the analytic Morse+LJ potential).

Usage::

    spherequant md --model CHECKPOINT_OR_PRETRAINED_NAME --dataset NAME --frame 0 --steps 1000 --timestep 0.5
                   --ensemble nve --temperature 300 --replicas 4 --out DIR [--resume] [--device cuda] [--plot]

``--model morse`` runs :class:`~spherequant.models.md.MorseLJPotential` built from the starting frame (a quick
check of the engine without a trained model). Prints a JSON summary (also written to ``DIR/summary.json``).
Exit status: 0 done, 2 bad arguments, 3 a replica blew up (``--blowup stop``; the last good state is kept in
``DIR/checkpoint.pt``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_arguments", "load_md_model", "load_model", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``md`` options on ``parser``."""
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint file, pretrained name, or 'morse' (analytic potential)",
    )
    parser.add_argument("--dataset", required=True, help="shipped data set name or .npz path (start frame)")
    parser.add_argument("--frame", type=int, default=0, help="index of the starting frame (default 0)")
    parser.add_argument("--steps", type=int, default=1000, help="total number of steps (default 1000)")
    parser.add_argument("--timestep", type=float, default=0.5, help="timestep in fs (default 0.5)")
    parser.add_argument("--ensemble", choices=("nve", "langevin"), default="nve")
    parser.add_argument("--temperature", type=float, default=300.0, help="initial / bath temperature (K)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    parser.add_argument("--replicas", type=int, default=1, help="independent replicas run as one batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=10, help="steps between saved frames and checks")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument("--out", required=True, help="output folder (checkpoint, trajectory, summary, plot)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None, help="default: the model's")
    parser.add_argument("--blowup", choices=("stop", "freeze", "off"), default="stop", help="on a blow-up")
    parser.add_argument("--remove-rotation", action="store_true", help="zero the initial angular momentum")
    parser.add_argument("--plot", action="store_true", help="write DIR/energy.png")
    parser.add_argument(
        "--force-mode",
        choices=("smooth", "ste", "stored"),
        default="smooth",
        help="quantized models: 'smooth' (default; conservative forces of the weight-quantized network with "
        "saturated, unrounded activations), "
        "'ste' (straight-through forces, not conservative) or 'stored' (as saved in the checkpoint)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the energy + forces pass with torch.compile (spherequant.models.fast.set_compile): "
        "faster steps after a compilation of a minute or more at the start; worth it for long runs",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_md_model(spec: str, z=None, positions=None, device="cpu", force_mode: str | None = "smooth"):
    """The potential MD runs on: a checkpoint path, a pretrained name, or ``"morse"`` (needs ``z`` and
    ``positions``).

    Checkpoints (FP32 or quantized) load safely with :func:`spherequant.models.checkpoints.load_model`
    (``ValueError`` for an unreadable, unsafe or broken file, and when ``z`` holds elements the model was not
    trained on); a quantized model runs in ``force_mode`` (default ``"smooth"``: conservative forces, as NVE
    needs; None keeps the stored mode); ``force_mode`` is ignored for FP32 models.

    Examples
    --------
    >>> import numpy as np
    >>> m = load_md_model("morse", [8, 1, 1], np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    >>> type(m).__name__
    'MorseLJPotential'
    """
    if not isinstance(spec, str):
        raise TypeError(f"model must be a str, got {type(spec).__name__}")
    if spec == "morse":
        from .md import MorseLJPotential

        return MorseLJPotential.from_molecule(z, positions)
    from . import checkpoints

    try:
        path = checkpoints.resolve_checkpoint(spec)
    except FileNotFoundError:
        raise ValueError(
            f"model {spec!r} is neither a checkpoint file nor a pretrained name "
            f"(available: {checkpoints.available_pretrained()}) nor 'morse'"
        ) from None
    ckpt = checkpoints.read_checkpoint(path)
    mode = force_mode if ckpt.get("quantization") is not None else None
    model = checkpoints.load_model(ckpt, device=device, force_mode=mode)
    if z is not None:
        model.check_elements(z)
    return model


def _md_network(model):
    """The network MD integrates: a smooth-mode quantized model as its plain float equivalent
    (:func:`~spherequant.models.gaq.smooth_float_model`: the same energies and forces to float round-off,
    through the fast path's written-out forces), any other model as it is."""
    from .gaq import quantization_state, smooth_float_model

    state = quantization_state(model)
    if state is None or state.force_mode != "smooth":
        return model
    try:
        return smooth_float_model(model)
    except ValueError:  # hooks it cannot carry over: run the quantized modules themselves
        return model


def load_model(spec: str, z=None, positions=None, device="cpu", force_mode: str | None = "smooth"):
    """Deprecated name of :func:`load_md_model` (not to be confused with
    :func:`spherequant.models.checkpoints.load_model`)."""
    import warnings

    warnings.warn(
        "md_cli.load_model is deprecated: use md_cli.load_md_model", DeprecationWarning, stacklevel=2
    )
    return load_md_model(spec, z, positions, device, force_mode)


def _load_frame(spec: str, frame: int):
    from . import data

    ds = data.load_npz(spec) if Path(spec).is_file() else data.load_dataset(spec)
    if len(ds) == 0:
        raise ValueError(f"--dataset {spec!r} holds no frames")
    if not -len(ds) <= frame < len(ds):
        raise ValueError(f"frame {frame} out of range for {len(ds)} frames of {spec!r}")
    item = ds[frame]
    return item["numbers"], item["positions"]


def _check_args(args) -> None:
    """Fail on bad numbers before loading anything (ValueError naming the option)."""
    import math

    for name, low in (("steps", 0), ("replicas", 1), ("save_every", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if not (math.isfinite(args.timestep) and args.timestep > 0):
        raise ValueError(f"--timestep must be a positive finite number of fs, got {args.timestep}")
    for name in ("temperature", "friction"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name} must be finite and >= 0, got {value}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} exists and is not a folder")


def run(args: argparse.Namespace) -> int:
    """Run MD; print the summary as JSON. Returns the exit status."""
    import torch

    from spherequant._report import atomic_write

    from .checkpoints import resolve_device
    from .cli import USER_ERRORS, report_error
    from .fast import set_compile
    from .gaq import quantization_state
    from .md import MDBlowUp, plot_energy, run_md

    try:
        _check_args(args)
        device = str(
            resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), "--device")
        )
        z, pos = _load_frame(args.dataset, args.frame)
        mode = None if args.force_mode == "stored" else args.force_mode
        model = load_md_model(args.model, z, pos, device=device, force_mode=mode)
        kwargs = dict(
            n_steps=args.steps,
            timestep_fs=args.timestep,
            ensemble=args.ensemble,
            temperature_K=args.temperature,
            friction_per_fs=args.friction,
            replicas=args.replicas,
            seed=args.seed,
            save_every=args.save_every,
            checkpoint_every=args.checkpoint_every,
            out_dir=args.out,
            resume=args.resume,
            device=device,
            dtype=args.dtype,
            blowup=args.blowup,
            remove_rotation=args.remove_rotation,
            progress=not args.no_progress,
        )
        status = 0
        old_compile = set_compile(True) if args.compile else None  # (else SPHEREQUANT_COMPILE decides)
        try:
            result = run_md(_md_network(model), z, pos, **kwargs)
        except MDBlowUp as err:
            print(f"spherequant md: blow-up: {err}", file=sys.stderr)
            result, status = err.result, 3
        finally:
            if old_compile is not None:
                set_compile(old_compile)
    except (*USER_ERRORS, OSError) as err:
        return report_error(err)
    summary = result.summary()
    summary.update(model=args.model, dataset=args.dataset, frame=args.frame, device=str(device))
    state = quantization_state(model)
    summary["force_mode"] = None if state is None else state.force_mode
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=1).encode()
    atomic_write(out / "summary.json", lambda fh: fh.write(text))
    if args.plot:
        summary["plot"] = str(plot_energy(result, out / "energy.png"))
    print(json.dumps(summary, indent=1))
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m spherequant.models.md_cli``."""
    parser = argparse.ArgumentParser(prog="spherequant md", description=__doc__.splitlines()[0])
    add_arguments(parser)
    from .cli import USER_ERRORS, report_error

    try:
        return run(parser.parse_args(argv))
    except USER_ERRORS as err:
        return report_error(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
