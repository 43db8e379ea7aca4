"""``spherequant train``: train a So3krates force field from a YAML config.

Usage::

    spherequant train models/configs/azobenzene_fp32.yaml [--resume] [--device cuda] [--epochs 2000]
                      [--output-dir runs/x] [--no-progress]
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


def run(args: argparse.Namespace) -> int:
    """Train; print the best validation row and the test metrics as JSON. Returns the exit status."""
    from .train import TrainConfig, _load_data, load_config, train

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
        config = TrainConfig.from_dict(values)
        dataset = _load_data(config.dataset)
    except (OSError, TypeError, ValueError) as err:
        print(f"spherequant train: error: {err}", file=sys.stderr)
        return 2
    result = train(config, resume=args.resume, dataset=dataset)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        summary = {"output_dir": result["output_dir"], "best": result["best"], "test": result["test"]}
        print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m spherequant.models.train_cli``."""
    parser = argparse.ArgumentParser(prog="spherequant train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
