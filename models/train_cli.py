"""``spherequant train``: train a So3krates force field from a YAML config.

Usage::

    spherequant train models/configs/azobenzene_fp32.yaml [--resume] [--device cuda] [--epochs 2000]
                      [--output-dir runs/x] [--no-progress]
    spherequant train models/configs/azobenzene_gaq_w4a8.yaml [--init-checkpoint runs/azobenzene_fp32/best.pt]
                      [--export models/pretrained/azobenzene-gfn2-gaq-w4a8.pt --convert]
    torchrun --nproc_per_node=4 -m spherequant.models.train_cli models/configs/azobenzene_fp32.yaml

Also runnable as ``python -m spherequant.models.train_cli CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``train`` options on ``parser``."""
    parser.add_argument("config", help="YAML training config (see models/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pt")
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


def run(args: argparse.Namespace) -> int:
    """Train; print the best validation row and the test metrics as JSON. Returns the exit status."""
    from .train import TrainConfig, load_config, load_training_data, train

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
        config = TrainConfig.from_dict(values)
        dataset = load_training_data(config.dataset)
    except (OSError, TypeError, ValueError) as err:
        print(f"spherequant train: error: {err}", file=sys.stderr)
        return 2
    result = train(config, resume=args.resume, dataset=dataset)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        summary = {"output_dir": result["output_dir"], "best": result["best"], "test": result["test"]}
        if args.export is not None:
            from pathlib import Path

            from .train import export_model

            best = Path(result["output_dir"]) / "best.pt"
            if not best.is_file():
                print(
                    f"spherequant train: error: cannot export: no {best} (all epochs in GAQ warm-up?)",
                    file=sys.stderr,
                )
                return 2
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
