"""The ``spherequant`` command line.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int``;
this file only lists them, so ``spherequant --help`` stays fast and adding a command touches one line here.

Exit status: 0 success, 2 a user error (bad argument, unreadable or unsafe file, unavailable device), reported
as exactly one ``error: ...`` line on stderr and no traceback (argparse usage errors likewise exit 2 with one
``spherequant ...: error: ...`` line after the usage line); subcommands document other codes (``md``: 3 for a
blow-up).
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["COMMANDS", "USER_ERRORS", "build_parser", "main", "report_error"]

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
    try:
        return int(mod.run(args) or 0)
    except USER_ERRORS as err:
        return report_error(err)


#: Exceptions that mean "bad input" (arguments, files, devices): one ``error:`` line and exit status 2.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def report_error(err: BaseException | str) -> int:
    """Print ``error: <message>`` as one line on stderr and return the exit status 2 (a user error)."""
    text = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
