"""``spherequant train``: train a So3krates force field from a YAML config.

Usage::

    spherequant train models/configs/azobenzene_fp32.yaml [--resume | --overwrite] [--device cuda]
                      [--epochs 2000] [--output-dir runs/x] [--no-progress]
    spherequant train models/configs/azobenzene_gaq_w4a8.yaml [--init-checkpoint runs/azobenzene_fp32/best.pt]
                      [--export models/pretrained/azobenzene-gfn2-gaq-w4a8.pt --convert]
    torchrun --nproc_per_node=4 -m spherequant.models.train_cli models/configs/azobenzene_fp32.yaml

Also runnable as ``python -m spherequant.models.train_cli CONFIG``.

Exit status: 0 when training finished with a finite model; 2 for a user error found before training starts
(bad config or option, missing data, ``--resume`` without ``last.pt`` or with a changed config, an output
folder that holds another run or is in use, an ``--export`` path that cannot be written), with one
``error:`` line on stderr; 1 when training diverged (NaN/inf, see ``on_nonfinite`` in
:class:`~spherequant.models.train.TrainConfig`), also with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["add_arguments", "check_export_path", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``train`` options on ``parser``."""
    parser.add_argument("config", help="YAML training config (see models/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pt")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the files of a previous run in output_dir and start over",
    )
    parser.add_argument(
        "--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:1)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the config's number of epochs")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--dataset", default=None, help="override the config's dataset (name or path)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--init-checkpoint",
        default=None,
        help="override quantization.init_checkpoint (FP32 checkpoint path or pretrained name)",
    )
    parser.add_argument(
        "--export", default=None, metavar="PATH", help="after training, export best.pt (EMA weights) to PATH"
    )
    parser.add_argument(
        "--convert", action="store_true", help="with --export: store the converted quantized model"
    )


def check_export_path(path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Check before training that ``--export PATH`` can be written; returns it as a :class:`~pathlib.Path`.

    Raises
    ------
    ValueError
        When ``path`` is empty or a folder, when its nearest existing parent is not a writable folder, or when
        it is the run's own ``last.pt`` / ``best.pt``.
    """
    if not str(path).strip():
        raise ValueError("--export must be a file path, got an empty string")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--export {str(p)!r} is a folder; give a file path such as model.pt")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--export {str(p)!r}: {str(parent)!r} is not a folder")
    try:  # a real probe: permission bits say little for root or special file systems
        with tempfile.TemporaryFile(dir=parent, prefix=".export-probe."):
            pass
    except OSError as err:
        raise ValueError(
            f"--export {str(p)!r}: cannot write in folder {str(parent)!r} ({err.strerror or err})"
        ) from None
    own = {(Path(output_dir) / name).resolve() for name in ("last.pt", "best.pt")}
    if p.resolve() in own:
        raise ValueError(f"--export {str(p)!r} would overwrite the run's own checkpoint; choose another path")
    return p


def _error(message: object, code: int) -> int:
    text = " ".join(str(message).split())  # one line
    print(f"spherequant train: error: {text}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Train; print the best validation row and the test metrics as JSON. Returns the exit status."""
    from .train import TrainConfig, TrainingDivergedError, TrainingRun, load_config, load_training_data

    try:
        config = load_config(args.config)
        overrides = {
            "device": args.device,
            "epochs": args.epochs,
            "output_dir": args.output_dir,
            "dataset": args.dataset,
        }
        values = config.to_dict()
        values.update({k: v for k, v in overrides.items() if v is not None})
        if args.no_progress:
            values["progress"] = False
        if args.init_checkpoint is not None:
            if values.get("quantization") is None:
                raise ValueError("--init-checkpoint needs a config with a 'quantization' section")
            values["quantization"] = {**values["quantization"], "init_checkpoint": args.init_checkpoint}
        if args.convert and args.export is None:
            raise ValueError("--convert needs --export PATH")
        if args.convert and values.get("quantization") is None:
            raise ValueError("--convert needs a config with a 'quantization' section")
        if args.resume and args.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        config = TrainConfig.from_dict(values)
        if args.export is not None:
            check_export_path(args.export, config.output_dir)
        dataset = load_training_data(config.dataset)
        session = TrainingRun(config, resume=args.resume, dataset=dataset, overwrite=args.overwrite)
    except (OSError, TypeError, ValueError) as err:
        return _error(err, 2)
    try:
        result = session.fit()
    except TrainingDivergedError as err:
        return _error(err, 1)
    finally:
        session.close()

    if int(os.environ.get("RANK", "0")) == 0:
        summary = {"output_dir": result["output_dir"], "best": result["best"], "test": result["test"]}
        if args.export is not None:
            from .train import export_model

            best = Path(result["output_dir"]) / "best.pt"
            if not best.is_file():
                return _error(f"cannot export: no {best} (all epochs in GAQ warm-up?)", 2)
            summary["exported"] = str(export_model(best, args.export, convert=args.convert))
        print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m spherequant.models.train_cli``."""
    parser = argparse.ArgumentParser(prog="spherequant train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
