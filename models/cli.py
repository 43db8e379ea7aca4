"""The ``spherequant`` command line.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int``;
this file only lists them, so ``spherequant --help`` stays fast and adding a command touches one line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["COMMANDS", "build_parser", "main"]

#: Subcommand name -> (module under ``spherequant.models`` defining it, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "print codebook / quantizer / model tables on shipped data and write plots"),
    "data": ("data_cli", "generate (GFN2-xTB molecular dynamics) and inspect rMD17-format data sets"),
    "train": ("train_cli", "train a So3krates force field from a YAML config"),
    "evaluate": ("evaluate_cli", "test-split energy/force errors and force LEE of a checkpoint"),
    "md": ("md_cli", "molecular dynamics (NVE / Langevin): energy drift, blow-up detection, resume"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spherequant",
        description="Verified quantizers on the sphere and a quantized SO(3)-equivariant force field.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(f"spherequant.models.{module}")
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import spherequant

        print(spherequant.__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    mod = importlib.import_module(f"spherequant.models.{args._module}")
    return int(mod.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
