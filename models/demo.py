"""``spherequant demo``: the project's main job on shipped data, on CPU in a few minutes.

It prints Markdown tables and writes them, with JSON and pictures, into an output folder:

1. codebooks: kind, size, exact covering radius, ratio to the Fejes Toth bound, minimum separation;
   a picture of one codebook's Voronoi cells;
2. vector quantizers on 1e5 random vectors: naive per-axis INT8 versus MDDQ (8 + 12 bits, and at a 16-bit
   budget), reconstruction error and commutation error under Haar rotations; a plot of error versus bits;
3. the shipped FP32 force field on (part of) its test split: energy and force MAE and the force LEE, beside
   the paper's naive INT8 post-training quantization of the same model and the shipped GAQ W4A8 model
   (quantization-aware finetune of the FP32 model).
"""

from __future__ import annotations

import time
from pathlib import Path

from spherequant._report import format_table, write_json

__all__ = ["add_arguments", "codebook_rows", "model_rows", "run"]

CODEBOOK_SPECS = (
    ("tetrahedron", ()),
    ("octahedron", ()),
    ("icosahedron", ()),
    ("fibonacci", (100,)),
    ("fibonacci", (1000,)),
    ("fibonacci", (10000,)),
    ("icosahedral", (1,)),
    ("icosahedral", (2,)),
    ("icosahedral", (3,)),
    ("icosahedral", (4,)),
    ("healpix", (2,)),
    ("healpix", (8,)),
    ("random", (1000,)),
)


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="spherequant-demo", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--voronoi",
        default="icosahedral:2",
        help="codebook drawn in voronoi.png, as kind:arg (default: %(default)s)",
    )
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors in the quantizer comparison")
    parser.add_argument("--model", default="azobenzene-gfn2-fp32", help="pretrained name or checkpoint path")
    parser.add_argument(
        "--gaq-model", default="azobenzene-gfn2-gaq-w4a8", help="GAQ model (pretrained name or checkpoint)"
    )
    parser.add_argument("--test-frames", type=int, default=1000, help="test frames evaluated (default 1000)")
    parser.add_argument("--lee-frames", type=int, default=100, help="test frames rotated for the LEE")


def _make(kind: str, args: tuple):
    from spherequant import codebook

    ctor = getattr(codebook, kind)
    return ctor(*args, seed=0) if kind == "random" else ctor(*args)


def codebook_rows() -> list[dict]:
    """Exact covering radius, Fejes Toth ratio and minimum separation of the demo's codebooks."""
    rows = []
    for kind, args in CODEBOOK_SPECS:
        cb = _make(kind, args)
        t0 = time.perf_counter()
        delta = cb.covering_radius(degrees=True)
        rows.append(
            {
                "kind": kind,
                "arg": args[0] if args else "",
                "n": cb.size,
                "covering_radius_deg": delta,
                "fejes_toth_ratio": cb.fejes_toth_ratio(),
                "min_separation_deg": cb.min_separation(degrees=True),
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows


def model_rows(spec: str, test_frames: int, lee_frames: int, gaq_spec: str | None = None) -> list[dict]:
    """Test-split accuracy and LEE of the FP32 model ``spec``, of its naive INT8 PTQ and of the GAQ model
    ``gaq_spec`` (rows of missing models are left out with a note)."""
    from spherequant.models import checkpoints
    from spherequant.models.evaluation import evaluate_checkpoint, naive_int8_ptq

    try:
        checkpoints.resolve_checkpoint(spec)
    except FileNotFoundError as err:
        print(f"(skipped: {err})")
        return []
    kw = {"max_test_frames": test_frames, "lee_frames": lee_frames, "n_rotations": 8}
    fp32 = {"name": "FP32", **evaluate_checkpoint(spec, **kw)}
    naive = {"name": "naive INT8 (PTQ)", **naive_int8_ptq(spec, **kw)}
    rows = [fp32, naive]
    if gaq_spec:
        try:
            checkpoints.resolve_checkpoint(gaq_spec)
        except FileNotFoundError as err:
            print(f"(GAQ row skipped: {err})")
        else:
            rows.append({"name": "GAQ W4A8 (QAT)", **evaluate_checkpoint(gaq_spec, **kw)})
    return rows


def _parse_spec(spec: str):
    kinds = sorted({k for k, _ in CODEBOOK_SPECS})
    kind, _, arg = spec.partition(":")
    if kind not in kinds:
        raise ValueError(f"--voronoi must be KIND[:N] with KIND one of {kinds}, got {spec!r}")
    try:
        args = (int(arg),) if arg else ()
        return _make(kind, args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--voronoi {spec!r} is not a valid codebook: {err}") from None


def _check_args(args):
    """Bad arguments fail here, before minutes of work (ValueError naming the option)."""
    for name in ("vectors", "test_frames", "lee_frames"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} exists and is not a folder")
    return _parse_spec(args.voronoi)


def run(args) -> int:
    voronoi = _check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    print("## Codebooks: exact covering radius vs the Fejes Toth bound\n")
    rows = codebook_rows()
    results["codebooks"] = rows
    print(
        format_table(
            [
                (
                    r["kind"],
                    r["arg"],
                    r["n"],
                    r["covering_radius_deg"],
                    r["fejes_toth_ratio"],
                    r["min_separation_deg"],
                )
                for r in rows
            ],
            ["kind", "arg", "n", "covering radius (deg)", "ratio to Fejes Toth", "min separation (deg)"],
            floatfmt=".6g",
        )
    )
    from spherequant.plotting import plot_voronoi

    fig = plot_voronoi(voronoi)
    png = out / "voronoi.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    print(f"\nwrote {png}")

    print("\n## Vector quantizers: naive per-axis versus MDDQ (1e5 vectors, Haar rotations)\n")
    from spherequant.comparison import compare_vector_quantizers
    from spherequant.plotting import plot_error_vs_bits

    cmp = compare_vector_quantizers(args.vectors, seed=0, sweep=True, sweep_n=min(args.vectors, 20_000))
    results["vector_quantizers"] = cmp
    print(
        format_table(
            [
                [r["name"], r["bits"], r["mean_err"], r["max_err"], r["mean_comm"], r["max_comm"]]
                for r in cmp["rows"]
            ],
            [
                "quantizer",
                "bits/vector",
                "mean error",
                "max error",
                "mean commutation error",
                "max commutation error",
            ],
        )
    )
    png = out / "error_vs_bits.png"
    plot_error_vs_bits(cmp).savefig(png, dpi=120)
    print(f"\nwrote {png}")

    print("\n## Force field: shipped FP32 model vs naive INT8 post-training quantization vs GAQ W4A8\n")
    results["model"] = model_rows(args.model, args.test_frames, args.lee_frames, args.gaq_model)
    if results["model"]:
        print(
            format_table(
                [
                    [r["name"], r["energy_mae"], r["forces_mae"], r["lee_mean"], r["lee_max"], r["n_frames"]]
                    for r in results["model"]
                ],
                [
                    "model",
                    "energy MAE (meV)",
                    "force MAE (meV/A)",
                    "LEE mean (meV/A)",
                    "LEE max (meV/A)",
                    "test frames",
                ],
            )
        )
        print(
            f"\nLEE over {args.lee_frames} test frames x 8 Haar rotations; {results['model'][0]['dataset']}"
        )

    write_json(out / "demo.json", results)
    print(f"wrote {out / 'demo.json'}")
    return 0
