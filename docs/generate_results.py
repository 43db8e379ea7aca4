"""Generate ``docs/results.md`` (tables and plots) from the benchmark files ``benchmarks/results/*.json``.

Nothing on the Results page is typed by hand: every number comes from a JSON file written by a script in
``benchmarks/``. Every file gets a section: its scalar fields as a list and every list of records as a table
(all columns, floats to four significant digits). Known benchmarks also get plots:

* ``mddq.json`` (``benchmarks/mddq.py``): mean reconstruction error and mean commutation error
  ``||Q(R v) - R Q(v)||`` versus bits per vector, per-axis scalar quantization against MDDQ;
* ``covering_radius.json`` (``benchmarks/covering_radius.py``): the Fejes Toth ratio of each codebook versus
  its size.

The quantization study (``quantization.json`` and ``ablations.json``, written by ``spherequant evaluate
--table quantization|ablations``) gets its own "Quantization" section: the table with the paper's numbers
beside ours, the bar plot of force MAE and LEE, the stability criterion, the structural differences from
the paper (stated from the facts stored in the JSON) and the paper's Tables II-III as stored. The anchor
rows (``anchor_mace.json``, ``anchor_peer.json``: MACE and the peer so3krates-torch trained on the FP32
parent's split) get an "Anchors" section: their errors beside the parent's, and validation force MAE
against CPU time.

Missing or unreadable files are tolerated: the page says which benchmark to run. Run by ``docs/conf.py`` at
build time, or by hand: ``python docs/generate_results.py [--root REPO] [--out docs/results.md]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from spherequant._report import atomic_savefig, atomic_write_text

__all__ = [
    "ANCHORS",
    "KNOWN",
    "STUDY",
    "anchors_section",
    "format_value",
    "qm9_table",
    "quantization_section",
    "records_table",
    "write_results",
]

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
#: Benchmarks with a dedicated description and plot: JSON stem -> (title, producing script).
KNOWN = {
    "mddq": ("MDDQ versus per-axis scalar quantization", "benchmarks/mddq.py"),
    "covering_radius": ("Exact covering radius and nearest-codeword search", "benchmarks/covering_radius.py"),
    "qm9_study": ("QM9 U0: FP32 vs GAQ W4A8 vs naive INT8", "benchmarks/qm9_study.py"),
    "parents": ("FP32 parents of the quantization study", "benchmarks/parents.py"),
    "nve_stability": (
        "NVE stability at length (energy traces per model and force mode)",
        "benchmarks/nve_stability.py",
    ),
    "force_modes": (
        "Test errors of the quantized models per force mode (what the smooth mode keeps)",
        "benchmarks/force_modes.py",
    ),
    "saturation_width": (
        "Smooth force mode: NVE drift and accuracy against the clamps' corner width",
        "benchmarks/saturation_width.py",
    ),
}


#: Tables of the quantization study: JSON stem -> (title, producing command).
STUDY = {
    "quantization": ("Main table (paper Tables II-III)", "spherequant evaluate --table quantization"),
    "ablations": ("Ablations", "spherequant evaluate --table ablations"),
}

#: Anchor rows: JSON stem -> (model, producing command; each script's docstring sets up its environment).
ANCHORS = {
    "anchor_mace": (
        "MACE (mace-torch)",
        "OMP_NUM_THREADS=1 /tmp/mace-venv/bin/python benchmarks/anchor_mace.py --cpu-hours 5.5667 "
        "--run-dir benchmarks/runs/anchor_mace [--resume]",
    ),
    "anchor_peer": (
        "so3krates-torch (peer port)",
        "OMP_NUM_THREADS=1 /tmp/peer-venv/bin/python benchmarks/anchor_peer.py --cpu-hours 5.5667 "
        "--run-dir benchmarks/runs/anchor_peer [--resume]",
    ),
}


def format_value(value) -> str:
    """A table cell: floats to 4 significant digits, other values as text (pipes escaped)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|")


def _flatten(rec: dict, prefix: str = "") -> dict:
    """Nested dicts of a record as dotted columns (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def records_table(records: list[dict]) -> str:
    """A Markdown table of a list of dicts; columns are the union of keys, in first-seen order.

    Nested dicts become dotted columns, so every cell is a number or a short text, never a dict.
    """
    records = [_flatten(rec) for rec in records]
    cols: list[str] = []
    for rec in records:
        cols.extend(k for k in rec if k not in cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in records:
        lines.append("| " + " | ".join(format_value(rec.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _open_figures() -> set[int]:
    """Numbers of the open pyplot figures (none when pyplot was never imported)."""
    plt = sys.modules.get("matplotlib.pyplot")
    return set(plt.get_fignums()) if plt is not None else set()


def _close_new_figures(before: set[int]) -> None:
    """Close the pyplot figures opened since ``before`` (:func:`_open_figures`)."""
    plt = sys.modules.get("matplotlib.pyplot")
    for num in _open_figures() - before:
        plt.close(num)


def _save(plt, fig, out: Path) -> bool:
    """Lay out, write atomically and close a figure; True (the plot functions' "drawn")."""
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=110)
    plt.close(fig)
    return True


def _plot_mddq(data: dict, out: Path) -> bool:
    sweep = [r for r in data.get("sweep") or [] if r]
    if not sweep:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in zip(
        axes, ("mean_err", "mean_comm"), ("mean ||Q(v) - v||", "mean ||Q(Rv) - R Q(v)||")
    ):
        for family in sorted({r["family"] for r in sweep}):
            rows = sorted((r for r in sweep if r["family"] == family), key=lambda r: r["bits"])
            ax.semilogy([r["bits"] for r in rows], [r[key] for r in rows], "o-", ms=3, label=family)
        ax.set_xlabel("bits per 3-vector")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(plt, fig, out)


def _plot_covering(data: dict, out: Path) -> bool:
    quality = data.get("quality") or []
    if not quality:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    kinds: dict[str, list] = {}
    for r in quality:
        kinds.setdefault(str(r["codebook"]).split("(")[0], []).append(r)
    for kind, rows in sorted(kinds.items()):
        rows = sorted(rows, key=lambda r: r["K"])
        ax.semilogx([r["K"] for r in rows], [r["fejes_toth_ratio"] for r in rows], "o-", ms=4, label=kind)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("codebook size K")
    ax.set_ylabel("covering radius / Fejes Toth bound")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def _plot_parents(data: dict, out: Path) -> bool:
    parents = [p for p in data.get("parents") or [] if p.get("curve")]
    if not parents:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for p in parents:
        epochs = [r["epoch"] for r in p["curve"]]
        for ax, key in zip(axes, ("val_forces_mae", "val_energy_mae")):
            ax.semilogy(epochs, [r[key] for r in p["curve"]], lw=0.8, label=f"{p['name']} ({p['attention']})")
    for ax, label in zip(axes, ("validation force MAE (meV/A)", "validation energy MAE (meV)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(plt, fig, out)


def _plot_nve(data: dict, out: Path) -> bool:
    """Total-energy trace of every run, one panel each; each panel's time axis spans its own run's target
    length, so a 1 ns run does not squeeze the 100 ps ones (and a run that blew up shows where)."""
    rows = [r for r in data.get("rows") or [] if (r.get("trace") or {}).get("time_ps")]
    if not rows:
        return False
    plt = _plt()
    ncol = min(3, len(rows))
    nrow = -(-len(rows) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.5 * nrow), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        t = r["trace"]["time_ps"]
        for series in r["trace"]["energy_meV_per_atom"]:
            ax.plot(t, [math.nan if v is None else v for v in series], lw=0.6)
        span = r.get("target_ps") or t[-1]
        ax.set_xlim(0.0, max(span, t[-1]))
        ax.set_title(f"{r['name']} [{r.get('force_mode') or 'fp32'}], {span:g} ps", fontsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax in axes.flat[max(0, len(rows) - ncol) : len(rows)]:
        ax.set_xlabel("time (ps)")
    for ax in axes[:, 0]:
        ax.set_ylabel("E_tot - E_tot(0)\n(meV/atom)", fontsize=8)
    return _save(plt, fig, out)


def _plot_nve_drift(data: dict, out: Path) -> bool:
    """Drift +- its uncertainty of every run (symmetric-log axis), by model and force mode, beside the
    paper's 0.15 meV/atom/ps; a run that blew up is a cross at its drift until the blow-up."""
    rows = [r for r in data.get("rows") or [] if r.get("drift_mean") is not None]
    if not rows:
        return False
    plt = _plt()
    names = list(dict.fromkeys(r["name"] for r in rows))
    style = {"ste": ("o", "C3", -0.15), "smooth": ("s", "C0", 0.15), None: ("D", "k", 0.0)}
    fig, ax = plt.subplots(figsize=(9.0, 0.32 * len(names) + 1.4))
    for mode, (marker, colour, dy) in style.items():
        sel = [r for r in rows if r.get("force_mode") == mode]
        ok = [r for r in sel if str(r.get("verdict", "")).startswith("stable")]
        bad = [r for r in sel if r not in ok]
        label = mode or "fp32"
        if ok:
            ax.errorbar([r["drift_mean"] for r in ok], [names.index(r["name"]) + dy for r in ok],
                        xerr=[r.get("drift_stderr") or 0.0 for r in ok], fmt=marker, color=colour, ms=4,
                        capsize=2, ls="none", label=label)  # fmt: skip
        if bad:
            ax.plot([r["drift_mean"] for r in bad], [names.index(r["name"]) + dy for r in bad], "x",
                    color=colour, ms=7, label=f"{label}: blew up")  # fmt: skip
    for v in (-0.15, 0.15):
        ax.axvline(v, color="0.5", ls="--", lw=0.8)
    ax.axvline(0.0, color="0.8", lw=0.6)
    ax.set_xscale("symlog", linthresh=1e-3)
    reach = max([0.3] + [abs(r["drift_mean"]) + (r.get("drift_stderr") or 0.0) for r in rows])
    ax.set_xlim(-3 * reach, 3 * reach)  # (the outermost points off the frame)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("energy drift (meV/atom/ps); dashed: the paper's 0.15")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, out)


def _plot_force_modes(data: dict, out: Path) -> bool:
    """Test force MAE of every quantized model in each force mode (horizontal bars, log axis)."""
    rows = [r for r in data.get("rows") or [] if r.get("forces_mae") is not None]
    if not rows:
        return False
    plt = _plt()
    names = list(dict.fromkeys(r["name"] for r in rows))
    style = {"ste": ("C3", -0.27), "smooth": ("C0", 0.0), "weights_only": ("0.6", 0.27)}
    fig, ax = plt.subplots(figsize=(9.0, 0.42 * len(names) + 1.4))
    for mode, (colour, dy) in style.items():
        sel = [r for r in rows if r.get("mode") == mode]
        if sel:
            ax.barh([names.index(r["name"]) + dy for r in sel], [r["forces_mae"] for r in sel], height=0.26,
                    color=colour, label=mode)  # fmt: skip
    ax.set_xscale("log")
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("test force MAE (meV/A)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, out)


#: Plots of each results file: (image file stem, plot function), drawn above its tables in this order.
_PLOTS = {
    "force_modes": [("force_modes", _plot_force_modes)],
    "mddq": [("mddq", _plot_mddq)],
    "covering_radius": [("covering_radius", _plot_covering)],
    "parents": [("parents", _plot_parents)],
    "nve_stability": [("nve_stability_drift", _plot_nve_drift), ("nve_stability", _plot_nve)],
}


def _draw(plot, data, img: Path, alt: str, docs_dir: Path, source: str) -> str:
    """Markdown for one plot ``plot(data, img)``: the image link; "" when it had nothing to draw; a
    "(No plot: ...)" line, also on stderr naming ``source``, when it raised."""
    before = _open_figures()
    try:
        ok = plot(data, img)
    except Exception as exc:  # a plot is an illustration: the page (and its tables) still build
        # close what the failed plot opened: sphinx-gallery's scraper saves every open figure with the
        # first tutorial's, and would fail that tutorial with this plot's error
        _close_new_figures(before)
        print(
            f"generate_results: no plot {img.name} of {source}: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return f"(No plot: {type(exc).__name__}: {exc}.)\n\n"
    return f"![{alt}]({img.relative_to(docs_dir).as_posix()})\n\n" if ok else ""


def _is_series(value) -> bool:
    """A list, or a dict holding lists: data for a plot rather than a table cell."""
    return isinstance(value, list) or (
        isinstance(value, dict) and any(isinstance(v, list) for v in value.values())
    )


def _section(path: Path, img_dir: Path, docs_dir: Path) -> str:
    stem = path.stem
    title, script = KNOWN.get(stem, (stem.replace("_", " ").capitalize(), None))
    out = [f"## {title}\n\n", f"Source: `benchmarks/results/{path.name}`"]
    out.append(f", written by `python {script}`.\n\n" if script else ".\n\n")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        out.append(f"```{{warning}}\nThis file could not be read ({type(exc).__name__}: {exc}).\n```\n\n")
        return "".join(out)
    if not isinstance(data, dict):
        data = {"records": data} if isinstance(data, list) else {"value": data}
    for img_stem, plot in _PLOTS.get(stem, []):
        out.append(_draw(plot, data, img_dir / f"{img_stem}.png", title, docs_dir, path.name))
    scalars = {k: v for k, v in data.items() if not isinstance(v, (list, dict))}
    if scalars:
        out.extend(f"- **{k}**: {format_value(v)}\n" for k, v in scalars.items())
        out.append("\n")
    for key, value in data.items():
        if isinstance(value, dict) and all(not isinstance(v, (list, dict)) for v in value.values()):
            out.append(
                f"**{key}**: " + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "\n\n"
            )
        elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            # per-record series (a training curve, an energy trace) are plotted, not tabulated
            rows = [{k: v for k, v in r.items() if not _is_series(v)} for r in value]
            out.append(f"### {key}\n\n{records_table(rows)}\n")
        elif isinstance(value, (list, dict)):
            out.append(f"**{key}**: `{format_value(value)[:300]}`\n\n")
    return "".join(out)


def _paper_tables(paper: dict) -> str:
    out = []
    for key, title in (("table_ii", "Paper, Table II"), ("table_iii", "Paper, Table III")):
        rows = [{k: v for k, v in r.items() if k != "key"} for r in paper.get(key) or []]
        if rows:
            out.append(f"#### {title}\n\n{records_table(rows)}\n")
    units = paper.get("units")
    if isinstance(units, dict):
        out.append("Paper units: " + ", ".join(f"{k} = {v}" for k, v in units.items()) + ".\n\n")
    return "".join(out)


def _study_table(path: Path, title: str, command: str, img_dir: Path, docs_dir: Path) -> str:
    out = [f"### {title}\n\n", f"Source: `benchmarks/results/{path.name}`, written by `{command}`.\n\n"]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError("no list of rows")
    except (OSError, ValueError) as exc:
        out.append(f"```{{warning}}\nThis file could not be read ({type(exc).__name__}: {exc}).\n```\n\n")
        return "".join(out)
    if data.get("command"):
        out.append(f"Command: `{data['command']}`\n\n")
    try:
        from spherequant.models.tables import format_markdown, plot_table
    except ImportError as exc:  # the package's model layer is unavailable: plain rendering
        out.append(f"(Rendered without spherequant.models.tables: {exc}.)\n\n{records_table(data['rows'])}\n")
        return "".join(out)
    img = img_dir / f"{path.stem}.png"
    try:
        plot_table(data, img)
        out.append(f"![{title}]({img.relative_to(docs_dir).as_posix()})\n\n")
    except (KeyError, TypeError, ValueError) as exc:
        out.append(f"(No plot: unexpected content, {type(exc).__name__}: {exc}.)\n\n")
    try:
        out.append(format_markdown(data) + "\n")
    except (KeyError, TypeError, ValueError) as exc:
        out.append(f"(No table: unexpected content, {type(exc).__name__}: {exc}.)\n\n")
    if data.get("stability_criterion"):
        out.append(f"Stability criterion: {data['stability_criterion']}\n\n")
    if isinstance(data.get("paper"), dict):
        out.append(_paper_tables(data["paper"]))
    return "".join(out)


def qm9_table(root: Path | str) -> str:
    """The QM9 row of the study as Markdown (included by the QM9 section of ``docs/datasets.md``), from
    ``benchmarks/results/qm9_study.json``: validation and test U0 errors (meV) of each method."""
    path = Path(root) / "benchmarks" / "results" / "qm9_study.json"
    if not path.exists():
        return "*No `qm9_study.json` yet*: run `nice -n 10 python benchmarks/qm9_study.py`.\n"
    try:
        data = json.loads(path.read_text())
        rows = [
            {
                "method": r["method"],
                "val U0 MAE (meV)": r.get("val_mae_meV", "not finished"),
                "test U0 MAE (meV)": r.get("test_mae_meV", ""),
                "test U0 RMSE (meV)": r.get("test_rmse_meV", ""),
                "val / test vs FP32 (meV)": " / ".join(
                    f"{r[k]['mean']:+.1f} ± {r[k]['se']:.1f}" for k in ("val_vs_fp32_meV", "test_vs_fp32_meV")
                )
                if "test_vs_fp32_meV" in r
                else "",
                "val / test molecules": f"{r['n_val']} / {r['n_test']}" if "n_val" in r else "",
                "epochs": r.get("epochs", ""),
                "config": f"`{r['config']}`",
            }
            for r in data["rows"]
        ]
        head = (
            f"Data `{data['dataset']}`, {data['target']}; {data['split']['n_train']} training molecules. "
            f"Command: `{data['command']}` ({data['device']}); "
            "source `benchmarks/results/qm9_study.json`.\n\n"
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"```{{warning}}\n`qm9_study.json` could not be read ({type(exc).__name__}: {exc}).\n```\n"
    note = (
        "\n*vs FP32*: mean over the same molecules of |error| minus the FP32 run's |error|, ± its standard "
        "error (paired, so much tighter than the MAEs' own spread).\n"
    )
    return head + records_table(rows) + note


def lookup_summary_table(root: Path | str) -> str:
    """The lookup speed-ups against cKDTree (included by ``docs/codebooks.md``), from
    ``benchmarks/results/lookup.json``: per codebook size, the compiled float64 query alone (with the
    candidate table, and with the table-free scan) and the build + 10^5 queries of a fresh index (the
    defaults, and the table forced), each as a ratio to cKDTree timed in the same run (CPU time, one
    core)."""
    path = Path(root) / "benchmarks" / "results" / "lookup.json"
    if not path.exists():
        return "*No `lookup.json` yet*: run `nice -n 10 python benchmarks/lookup.py`.\n"
    try:
        data = json.loads(path.read_text())
        rows = []
        for r in data["cpu"]:
            b = r["build_query"]
            rows.append(
                {
                    "codewords": r["n"],
                    "query only (table) vs cKDTree": r["index_numba"]["ratio_vs_cKDTree"]
                    if "index_numba" in r
                    else "",
                    "query only (scan) vs cKDTree": r["index_scan"]["ratio_vs_cKDTree"]
                    if "index_scan" in r
                    else "",
                    "build + 10^5 queries (default) vs cKDTree": b["index_default"]["ratio_vs_cKDTree"],
                    "build + 10^5 queries (table) vs cKDTree": b["index_table"]["ratio_vs_cKDTree"]
                    if "index_table" in b
                    else "",
                    "build + query, index default (ms CPU)": 1e3 * b["index_default"]["cpu_s"],
                    "build + query, cKDTree (ms CPU)": 1e3 * b["cKDTree"]["cpu_s"],
                    "mean candidates": r["mean_candidates"],
                }
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"```{{warning}}\n`lookup.json` could not be read ({type(exc).__name__}: {exc}).\n```\n"
    head = (
        f"Command: `nice -n 10 python benchmarks/lookup.py` ({data['queries']} random float64 queries, numba "
        f"{'available' if data.get('numba') else 'missing'}); source `benchmarks/results/lookup.json`.\n\n"
    )
    return head + records_table(rows)


def _deg(x) -> str:
    """Degrees to nine decimals (the references' precision), or blank."""
    return "" if x is None else f"{x:.9f}"


def best_known_sentence(data: dict) -> str:
    """Plain sentences from ``best_known_coverings.json``: every n where the learned codebook is worse than
    its reference and by how much, the largest margin elsewhere, and the sizes with no reference."""
    rows = [r for r in data["rows"] if r["ratio"] is not None]
    tol = data["worse_tolerance"]
    worse = {r["n"]: r for r in rows if r["worse"]}
    if sorted(worse) != sorted(data["worse_at"]):
        raise ValueError(f"worse_at {data['worse_at']} disagrees with the rows' worse flags {sorted(worse)}")
    if worse:
        parts = [
            f"n = {n} by {r['excess_deg']:.3g} deg ({100.0 * (r['ratio'] - 1.0):.3g} %: "
            f"{_deg(r['ours_deg'])} against {_deg(r['best_known_deg'])})"
            for n, r in sorted(worse.items())
        ]
        out = "The learned codebook is worse than its reference at " + "; ".join(parts) + ". "
    else:
        out = f"The learned codebook is worse than its reference at no listed n (ratio above 1 + {tol:g}). "
    rest = [r for r in rows if not r["worse"]]
    if rest:
        low = min(rest, key=lambda r: r["excess_deg"])
        high = max(rest, key=lambda r: r["excess_deg"])
        out += (
            f"Elsewhere ours minus the reference lies between {low['excess_deg']:.2g} deg (n = {low['n']}) "
            f"and {high['excess_deg']:.2g} deg (n = {high['n']})"
        )
        if low["ratio"] < 1.0 - 1e-7:
            out += f": ours is better than the reference by up to {100.0 * (1.0 - low['ratio']):.3g} %. "
        else:
            out += ", within the rounding of the published digits and coordinates (relative 1e-7). "
    missing = data.get("not_found") or []
    if missing:
        out += (
            f"No reference value was available for n = {', '.join(map(str, missing))}. "
            f"{data.get('not_found_note', '')}"
        )
    return out.strip() + "\n\n"


def best_known_table(root: Path | str) -> str:
    """The learned codebooks against the best known coverings (included by ``docs/codebooks.md``), from
    ``benchmarks/results/best_known_coverings.json``: every n with a reference in the shipped range, and a
    sentence listing every n where the learned codebook is worse and by how much."""
    path = Path(root) / "benchmarks" / "results" / "best_known_coverings.json"
    if not path.exists():
        return "*No `best_known_coverings.json` yet*: run `python benchmarks/best_known_coverings.py`.\n"
    try:
        data = json.loads(path.read_text())
        rows = [
            {
                "n": r["n"],
                "kind": r.get("kind", ""),
                "ours (deg)": _deg(r["ours_deg"]) if r["ours_deg"] is not None else "not in the table",
                "best known (deg)": _deg(r["best_known_deg"]),
                "ours - best (deg)": f"{r['excess_deg']:.2e}" if r.get("excess_deg") is not None else "",
                "ratio": f"{r['ratio']:.10f}" if r["ratio"] is not None else "",
                "worse": "yes" if r["worse"] else ("no" if r["worse"] is not None else ""),
                "reference": r["source"],
            }
            for r in data["rows"]
        ]
        sentence = best_known_sentence(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        return f"```{{warning}}\n`best_known_coverings.json` could not be read ({why}).\n```\n"
    head = (
        "Command: `python benchmarks/best_known_coverings.py --icosahedral DIR --sky-map FILE`; source "
        "`benchmarks/results/best_known_coverings.json`.\n\n"
    )
    return head + sentence + records_table(rows)


def quantization_section(root: Path | str, img_dir: Path, docs_dir: Path) -> str:
    """The "Quantization" section: each study table of :data:`STUDY` found, else a one-line note."""
    res = Path(root) / "benchmarks" / "results"
    out = ["## Quantization\n\n"]
    for stem, (title, command) in STUDY.items():
        path = res / f"{stem}.json"
        if path.exists():
            out.append(_study_table(path, title, command, img_dir, docs_dir))
        else:
            out.append(f"*{title}*: no `{stem}.json` yet; run `{command}`.\n\n")
    return "".join(out)


def _read_anchor(path: Path) -> dict:
    """An anchor script's results file, checked for the blocks the section reads (ValueError if absent)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("training", "history", "validation", "test") if k not in data]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    return data


def _plot_anchors(anchors: dict, out: Path) -> bool:
    """Validation force MAE against cumulative CPU hours: each anchor's epochs, and our parent's last
    finished epoch at the same CPU times (read from the anchors' ``parent_at_equal_time`` blocks)."""
    if not any(d["history"] for d in anchors.values()):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    parent = {}
    for label, d in anchors.items():
        hours = [r["cpu_s_total"] / 3600 for r in d["history"]]
        ax.semilogy(hours, [r["val_forces_mae"] for r in d["history"]], lw=0.9, label=label)
        at = d.get("parent_at_equal_time") or {}
        if at.get("clock") == "cpu":
            for r in at.get("per_epoch") or []:
                if r.get("parent_val_forces_mae_last") is not None:
                    parent[r["time_s"]] = r["parent_val_forces_mae_last"]
    if parent:
        t = sorted(parent)
        ax.semilogy([x / 3600 for x in t], [parent[x] for x in t], "k", lw=0.9, drawstyle="steps-post",
                    label="ours (FP32 parent), at the same CPU time")  # fmt: skip
    ax.set_xlabel("training CPU time (hours, one thread)")
    ax.set_ylabel("validation force MAE (meV/A)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def _parent_parameters(res: Path, run_dir) -> int | None:
    """The parameter count ``parents.json`` gives the parent trained in ``run_dir`` (its config's stem)."""
    try:
        parents = json.loads((res / "parents.json").read_text()).get("parents") or []
    except (OSError, ValueError, AttributeError):
        return None
    for p in parents:
        if run_dir and Path(str(p.get("config"))).stem == run_dir:
            return p.get("parameters")
    return None


def anchors_section(root: Path | str, img_dir: Path, docs_dir: Path) -> str:
    """The "Anchors" section from the :data:`ANCHORS` files found: each anchor's validation and test errors
    beside our FP32 parent's (its final model, and its best validation epoch within the anchor's CPU time),
    and the validation force MAE against CPU time; a note naming the command of each file missing."""
    res = Path(root) / "benchmarks" / "results"
    out = [
        "## Anchors: MACE and the peer so3krates-torch\n\n",
        "Each anchor is trained on our FP32 parent's split of the shipped azobenzene set (950 training, 50 "
        "validation frames) within the parent's CPU budget, one thread, and scored on the same test frames; "
        "the EMA weights of its best validation epoch are scored. Energy MAE per molecule in meV, force MAE "
        "per Cartesian component in meV/A. The parent's clock is the sum of its per-epoch process CPU times, "
        "or of its wall times for a run that predates their record (one process, one thread; wall time "
        "exceeds CPU time on a loaded machine).\n\n",
    ]
    anchors, parent = {}, None
    for stem, (label, command) in ANCHORS.items():
        path = res / f"{stem}.json"
        if not path.exists():
            out.append(f"*{label}*: no `{stem}.json` yet; run `{command}`.\n\n")
            continue
        try:
            anchors[label] = _read_anchor(path)
        except (OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            out.append(f"```{{warning}}\n`{stem}.json` could not be read ({why}).\n```\n\n")
            continue
        out.append(f"*{label}*: `benchmarks/results/{stem}.json`, written by `{command}`.\n\n")
        parent = parent or anchors[label].get("parent")
    if not anchors:
        return "".join(out)
    rows = []
    for label, d in anchors.items():
        t, v, e = d["training"], d["validation"], d["test"]
        best = t.get("best") or {}
        params = d.get("model", {}).get("parameters")
        params = params.get("total") if isinstance(params, dict) else params
        rows.append(
            {
                "model": label,
                "parameters": params,
                "epochs": t.get("epochs"),
                "CPU h": t.get("cpu_s", math.nan) / 3600,
                "stopped by": t.get("stop_reason"),
                "best epoch": best.get("epoch"),
                "val E (meV)": v["energy_mae"],
                "val F (meV/A)": v["forces_mae"],
                "test E (meV)": e["energy_mae"],
                "test F (meV/A)": e["forces_mae"],
                "test frames": e.get("n_frames"),
            }
        )
    if parent:
        test = parent.get("test") or {}
        rows.append(
            {
                "model": "ours (FP32 parent)",
                "parameters": _parent_parameters(res, parent.get("run_dir")),
                "epochs": parent.get("epochs_written"),
                "CPU h": (parent.get("train_cpu_s") or parent.get("train_wall_s", math.nan)) / 3600,
                "best epoch": parent.get("best_epoch"),
                "val E (meV)": parent.get("val_energy_mae"),
                "val F (meV/A)": parent.get("val_forces_mae"),
                "test E (meV)": test.get("energy_mae"),
                "test F (meV/A)": test.get("forces_mae"),
                "test frames": test.get("n_frames"),
            }
        )
    out.append(records_table(rows) + "\n")
    equal = []
    for label, d in anchors.items():
        at = (d.get("parent_at_equal_time") or {}).get("at_end") or {}
        best = at.get("best") or {}
        equal.append(
            {
                "anchor": label,
                "CPU h": at.get("time_s", math.nan) / 3600 if at else None,
                "anchor best val F (meV/A)": (d["training"].get("best") or {}).get("val_forces_mae"),
                "parent best val F within it (meV/A)": best.get("val_forces_mae", "no epoch yet"),
                "parent epochs done": at.get("epochs_done"),
            }
        )
    out.append("At equal CPU time (the parent's best validation epoch among those it had finished):\n\n")
    out.append(records_table(equal) + "\n")
    alt = "Validation force MAE against CPU time"
    out.append(_draw(_plot_anchors, anchors, img_dir / "anchors.png", alt, docs_dir, "the anchor files"))
    return "".join(out)


#: Stages of ``benchmarks/gpu_suite.py`` in the order it runs them (its JSON files are ``<stage>.json``).
GPU_STAGES = ("tests", "lookup", "speed", "table4", "md", "train")


def _gpu_rows(records: list[dict], columns: dict[str, str]) -> str:
    """Markdown table of ``records``, columns given as header -> dotted key; missing cells blank."""

    def get(rec, key):
        for part in key.split("."):
            rec = rec.get(part) if isinstance(rec, dict) else None
        return "" if rec is None else rec

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(get(r, k)) for k in columns.values()) + " |" for r in records]
    return "\n".join(lines) + "\n\n"


def _gpu_stage(stage: str, data: dict) -> str:
    """Key figures of one stage of the GPU suite (generic tables for what it does not know)."""
    res = data.get("results") or {}
    out = []
    if stage == "tests" and isinstance(res.get("counts"), dict):
        out.append(", ".join(f"{k}: {v}" for k, v in res["counts"].items()) + "\n\n")
        bad = [t for t in res.get("tests") or [] if t.get("outcome") in ("failed", "error")]
        if bad:
            out.append(_gpu_rows(bad, {"test": "id", "outcome": "outcome", "message": "message"}))
    elif stage == "lookup" and res.get("rows"):
        out.append(
            f"{format_value(res.get('queries'))} float32 queries; copy bandwidth "
            f"{format_value(res.get('copy_bandwidth_GBps'))} GB/s.\n\n"
        )
        out.append(
            _gpu_rows(
                res["rows"],
                {
                    "n": "n",
                    "index queries/s": "index.qps",
                    "Codebook.nearest queries/s": "codebook_nearest.qps",
                    "brute force queries/s": "brute_matmul.qps",
                    "x brute force": "speedup_vs_brute",
                    "exact": "index.exact",
                    "fraction of copy roofline": "fraction_of_copy_roofline",
                },
            )
        )
    elif stage == "md" and res.get("rows"):
        out.append(
            _gpu_rows(
                res["rows"],
                {
                    "model": "model",
                    "replicas": "replicas",
                    "steps": "steps",
                    "steps/s": "steps_per_s",
                    "molecule-steps/s": "molecule_steps_per_s",
                    "ns/day": "ns_per_day",
                    "verdict": "verdict",
                },
            )
        )
    elif stage == "train" and (res.get("throughput") or res.get("run")):
        if res.get("throughput"):
            out.append(
                _gpu_rows(
                    res["throughput"],
                    {
                        "model": "model",
                        "config": "config",
                        "batch": "batch",
                        "steps/s": "steps_per_s",
                        "frames/s": "frames_per_s",
                        "s per 950 frames": "seconds_per_950_frames",
                    },
                )
            )
        run = res.get("run") or {}
        if run:
            best = run.get("best") or {}
            out.append(
                f"Training run of `{run.get('config')}`: {run.get('epochs_done')} of "
                f"{run.get('epochs_planned')} epochs; best validation force MAE "
                f"{format_value(best.get('val_forces_mae', ''))} meV/Angstrom.\n\n"
            )
    elif stage == "table4" and isinstance(res.get("table"), list):
        out.append(
            _gpu_rows(
                res["table"],
                {
                    "batch": "batch",
                    "model": "variant",
                    "total ms": "total_ms",
                    "weights ms": "breakdown_ms.weights",
                    "GEMM ms": "breakdown_ms.gemm",
                    "quant ms": "breakdown_ms.quant",
                    "attention ms": "breakdown_ms.attention",
                    "other ms": "breakdown_ms.other",
                    "x FP32": "speedup_vs_fp32",
                    "x bf16": "speedup_vs_bf16",
                },
            )
        )
        if res.get("peak_memory"):
            out.append(
                _gpu_rows(res["peak_memory"], {"batch": "batch", "model": "variant", "peak MiB": "peak_MiB"})
            )
    else:

        def keys(rec, prefix=""):  # dotted keys of the leaves: a nested dict never lands in a cell
            for k, v in rec.items():
                yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

        for key, value in res.items():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                cols = {}
                for r in value:
                    cols.update({k: k for k in keys(r)})
                out.append(f"\n**{key}**\n\n" + _gpu_rows(value, cols))
            elif not isinstance(value, (list, dict)):
                out.append(f"- **{key}**: {format_value(value)}\n")
        out.append("\n")
    for what in ("skipped", "errors"):
        items = data.get(what) or []
        if items:
            text = "; ".join(f"{i.get('item')}: {i.get('reason') or i.get('error')}" for i in items)
            out.append(f"*{what.capitalize()}*: {format_value(text)}\n\n")
    return "".join(out)


def _gpu_how_to() -> str:
    """The device command of ``benchmarks/gpu_suite.py`` (its ``WHEELS_DOWNLOAD`` and ``DEVICE_RUN``)."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("_gpu_suite_docs", ROOT / "benchmarks" / "gpu_suite.py")
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        run, wheels = suite.DEVICE_RUN, suite.WHEELS_DOWNLOAD
    except (ImportError, OSError, AttributeError, SyntaxError) as exc:
        return f"(The device command could not be read from `benchmarks/gpu_suite.py`: {exc}.)\n\n"
    return (
        "How to measure: on the developer machine, in the repository root, fetch the peer's wheels once "
        "(`echo /.whl/ >> .git/info/exclude`, then)\n\n"
        f"```bash\n{wheels}\n```\n\n"
        f"and call the device tool's `run` with `carry: {json.dumps(run['carry'])}`, "
        f"`timeout_s: {run['timeout_s']}` and the command\n\n```bash\n{run['command']}\n```\n\n"
        "then copy the returned files into `benchmarks/results/gpu/` and rebuild the documentation.\n\n"
    )


def gpu_section(root: Path | str) -> str:
    """The "GPU" section from ``<root>/benchmarks/results/gpu/`` (``benchmarks/gpu_suite.py``'s files):
    device and date, each stage's status and wall time, every goal beside its measured value, and each
    stage's key figures; "not measured yet" when no suite has been run there."""
    gpu = Path(root) / "benchmarks" / "results" / "gpu"
    out = ["## GPU\n\n"]
    try:
        suite = json.loads((gpu / "suite.json").read_text())
        if not isinstance(suite, dict):
            raise ValueError("suite.json is not an object")
    except FileNotFoundError:
        out.append(
            "```{note}\nGPU figures: **not measured yet**. They come from one command, "
            "`python benchmarks/gpu_suite.py --out benchmarks/results/gpu` on one H100/H200 (under 9 "
            "minutes; the exact device command, with the peer's wheels, is in that script's docstring); "
            "CI runs the same code as a CPU dry run (`--device cpu --tiny`).\n```\n\n"
        )
        out.append(_gpu_how_to())
        return "".join(out)
    except (OSError, ValueError) as exc:
        out.append(f"```{{warning}}\n`suite.json` could not be read ({type(exc).__name__}: {exc}).\n```\n\n")
        return "".join(out)
    device = suite.get("device") or {}
    command = suite.get("command", "benchmarks/gpu_suite.py")
    out.append(
        f"Source: `benchmarks/results/gpu/`, written by `{command}`"
        f".\n\n- **device**: {format_value(device.get('name', 'unknown'))}"
        f" (torch {format_value(device.get('torch', '?'))}, "
        f"CUDA {format_value(device.get('cuda', '-'))})\n"
        f"- **date**: {format_value(suite.get('started', '?'))}\n"
        f"- **commit**: {format_value(suite.get('commit') or '?')}\n"
        f"- **wall time**: {format_value(suite.get('wall_s', '?'))} s\n\n"
    )
    if suite.get("tiny"):
        out.append(
            "```{warning}\nThis is a `--tiny` dry run at toy sizes: its numbers are not GPU figures.\n```\n\n"
        )
    stages, goals, bodies = [], [], []
    for stage in GPU_STAGES:
        st = (suite.get("stages") or {}).get(stage)
        path = gpu / f"{stage}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            bodies.append(f"### {stage}\n\n`{stage}.json` could not be read ({type(exc).__name__}).\n\n")
            data = None
        if st is None and data is None:
            continue
        st = st or {}
        stages.append(
            {
                "stage": stage,
                "status": st.get("status", (data or {}).get("status", "")),
                "wall s": st.get("wall_s", ""),
                "limit s": st.get("limit_s", ""),
                "reason": st.get("reason", ""),
            }
        )
        if not isinstance(data, dict):
            continue
        for g in data.get("goals") or []:
            met = g.get("met")
            goals.append(
                {
                    "stage": stage,
                    "figure": g.get("name"),
                    "measured": g.get("value"),
                    "goal": g.get("goal"),
                    "met": "-" if met is None else ("yes" if met else "no"),
                }
            )
        try:
            bodies.append(f"### {stage}\n\n" + _gpu_stage(stage, data))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            bodies.append(f"### {stage}\n\n(Unexpected content: {type(exc).__name__}: {exc}.)\n\n")
    out.append(_gpu_rows(stages, {k: k for k in ("stage", "status", "wall s", "limit s", "reason")}))
    if goals:
        out.append(
            "### Goals\n\n" + _gpu_rows(goals, {k: k for k in ("stage", "figure", "measured", "goal", "met")})
        )
    out.extend(bodies)
    out.append("### How to measure again\n\n" + _gpu_how_to())
    return "".join(out)


def write_results(root: Path | str = ROOT, out: Path | str | None = None) -> Path:
    """Write the Results page from ``<root>/benchmarks/results/*.json``; return its path.

    Plots go to ``<out's folder>/_generated/results/``. Unchanged files are not rewritten.
    """
    root = Path(root)
    out = Path(out) if out is not None else DOCS / "results.md"
    docs_dir = out.parent
    img_dir = docs_dir / "_generated" / "results"
    img_dir.mkdir(parents=True, exist_ok=True)
    all_files = sorted((root / "benchmarks" / "results").glob("*.json"))
    files = [p for p in all_files if p.stem not in STUDY and p.stem not in ANCHORS]
    text = [
        "# Results\n\n",
        "<!-- generated by docs/generate_results.py from benchmarks/results/*.json; do not edit -->\n\n",
        "Every table and plot on this page is generated from the JSON files in `benchmarks/results/` by "
        "`docs/generate_results.py` when the documentation is built. To refresh a section, rerun the "
        "benchmark script it names and rebuild the documentation.\n\n",
    ]
    if not all_files:
        text.append(
            "```{note}\nNo benchmark results were found in `benchmarks/results/`. Run the scripts in "
            "`benchmarks/` (for example `python benchmarks/mddq.py`) and rebuild.\n```\n\n"
        )
    for stem, (title, script) in KNOWN.items():
        if not (root / "benchmarks" / "results" / f"{stem}.json").exists() and all_files:
            text.append(f"```{{note}}\n*{title}*: no `{stem}.json` yet; run `python {script}`.\n```\n\n")
    text.append(quantization_section(root, img_dir, docs_dir))
    text.append(anchors_section(root, img_dir, docs_dir))
    qm9_md = docs_dir / "_generated" / "qm9_study.md"  # included by docs/datasets.md
    if not qm9_md.exists() or qm9_md.read_text() != qm9_table(root):
        atomic_write_text(qm9_md, qm9_table(root))
    for name, render in (
        ("lookup_summary", lookup_summary_table),
        ("best_known_coverings", best_known_table),
    ):
        md = docs_dir / "_generated" / f"{name}.md"  # included by docs/codebooks.md
        if not md.exists() or md.read_text() != render(root):
            atomic_write_text(md, render(root))
    text.append(gpu_section(root))
    for path in files:
        text.append(_section(path, img_dir, docs_dir))
    content = "".join(text)
    if not out.exists() or out.read_text() != content:
        atomic_write_text(out, content)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="repository root holding benchmarks/results/")
    ap.add_argument("--out", default=str(DOCS / "results.md"), help="Markdown page to write")
    args = ap.parse_args(argv)
    print(write_results(args.root, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
