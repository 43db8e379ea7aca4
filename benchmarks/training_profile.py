"""Where the time of one compiled training step goes (CPU, 1 thread): a profile by category.

The step is the one of ``spherequant train`` with ``compile: true`` and of ``benchmarks/model_speed.py``'s
``training step (compiled)`` row: energies and forces of a batch of 5 azobenzene frames through the traced
graph of :mod:`spherequant.models.compiled`, the energy + force loss, its first-order backward through the
compiled backward graph, and Adam (``fused=True``). First the step is timed without the profiler (median of
``--repeats`` rounds over the same batches); then one round runs under ``torch.profiler`` and its self CPU
time is split into:

* ``forward graph: generated kernels`` / ``backward graph: generated kernels``: inductor's fused C++ loops
  (self time of the two ``CompiledFxGraph`` calls, the first of a step being the forward one), their Python
  wrapper included;
* ``matmuls``: ``aten::mm`` / ``aten::addmm`` / ``aten::bmm`` that the graphs call (extern kernels);
* ``autograd and runtime glue``: AOTAutograd's runtime wrappers, the dynamo guard check, gradient
  accumulation, copies and conversions of inputs;
* ``optimizer``: ``Optimizer.step`` and ``zero_grad`` (the fused Adam kernel included);
* ``loss and rest``: everything else (radius graph, loss, Python of the training step).

Shares are of the profiled round (the profiler adds its own overhead per event); milliseconds are the shares
times the unprofiled median step. Writes ``benchmarks/results/training_profile.json``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/training_profile.py             # shipped 64 x 2 model, 40 steps
    python benchmarks/training_profile.py --quick --out /tmp/prof.json  # toy model (a minute: it compiles)
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "training_profile.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

CATEGORIES = (
    "forward graph: generated kernels",
    "backward graph: generated kernels",
    "matmuls",
    "autograd and runtime glue",
    "optimizer",
    "loss and rest",
)
_MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}
_GLUE_PREFIXES = ("CompiledFunction", "TorchDynamo", "Torch-Compiled Region", "torch::autograd::",
                  "autograd::engine", "aten::copy_", "aten::_to_copy", "aten::to", "aten::item",
                  "aten::empty_strided", "aten::as_strided", "aten::add_", "aten::_local_scalar_dense",
                  "aten::resolve_conj", "aten::resolve_neg", "aten::detach", "aten::lift_fresh")  # fmt: skip


def category_of(name: str, graphs: list) -> str:
    """The category (:data:`CATEGORIES`) of a profiler event; ``graphs``: the compiled graphs' event names in
    order of first call (forward, backward)."""
    if name.startswith("## Call CompiledFxGraph"):
        return CATEGORIES[0] if graphs.index(name) % 2 == 0 else CATEGORIES[1]
    if name in _MATMULS:
        return "matmuls"
    if name.startswith(("Optimizer.", "aten::_fused_adam")):
        return "optimizer"
    if name.startswith(_GLUE_PREFIXES):
        return "autograd and runtime glue"
    return "loss and rest"


def categorize(events) -> tuple[dict, list]:
    """Self CPU microseconds per category (:data:`CATEGORIES`), and per event name ``(name, category, us,
    calls)`` largest first, of a profiled round.

    ``events``: ``(name, self_cpu_us, start_us)`` of every profiler event, in any order. Inside an
    optimizer event everything counts as optimizer."""
    events = sorted(events, key=lambda e: e[2])
    first: dict = {}
    for name, _, t in events:
        if name.startswith("## Call CompiledFxGraph"):
            first.setdefault(name, t)
    graphs = sorted(first, key=first.get)
    out = dict.fromkeys(CATEGORIES, 0.0)
    by_name: dict = {}
    for name, self_us, _ in events:
        key = category_of(name, graphs)
        out[key] += self_us
        us, calls = by_name.get(name, (0.0, 0))
        by_name[name] = (us + self_us, calls + 1)
    top = sorted(((n, category_of(n, graphs), us, c) for n, (us, c) in by_name.items()), key=lambda r: -r[2])
    return out, top


def _events(prof):
    """``(name, self_cpu_us, start_us)`` of the profiler's events (optimizer children folded in)."""
    evs = list(prof.events())
    opt = [(e.time_range.start, e.time_range.end) for e in evs if e.name.startswith("Optimizer.step")]
    out = []
    for e in evs:
        name = e.name
        if not name.startswith("Optimizer.") and any(a <= e.time_range.start < b for a, b in opt):
            name = "Optimizer.step (inside)"
        out.append((name, float(e.self_cpu_time_total), float(e.time_range.start)))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a toy model (16 features, 1 layer)")
    ap.add_argument("--model", default="azobenzene-gfn2-fp32-small", help="pretrained name or checkpoint")
    ap.add_argument("--steps", type=int, default=40, help="steps per round (default 40)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--out", default=str(DEFAULT_JSON), help="JSON file to write ('' to skip)")
    args = ap.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        ap.error(f"--steps must be >= 2 and --repeats >= 1, got {args.steps}, {args.repeats}")
    import model_speed as ms
    from spherequant.models import compiled
    from spherequant.models.data import collate, load_dataset

    from spherequant import _report

    torch.set_num_threads(1)
    dtype = torch.float32
    ds = load_dataset(ms.DATASET)
    if args.quick:
        model = ms.load_models(True, dtype)[0].train()
    else:
        from spherequant.models.checkpoints import load_model

        model = load_model(args.model).to(dtype).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)
    batches = [collate(ds, range(5 * k, 5 * k + 5), dtype=dtype) for k in range(args.steps)]

    def step(b):
        opt.zero_grad(set_to_none=True)
        out = compiled.training_forward(model, b.z, b.pos, b.batch, num_graphs=b.num_graphs)
        if out is None:
            raise RuntimeError(f"not compiled: {compiled.unsupported_reason(model)}")
        ms._loss(out, b).backward()
        opt.step()

    t0 = time.perf_counter()
    step(batches[0])
    compile_s = time.perf_counter() - t0
    for b in batches:  # warm-up round
        step(b)
    rounds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        rounds.append((time.perf_counter() - t0) * 1e3 / len(batches))
    step_ms = statistics.median(rounds)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for b in batches:
            step(b)
    us, top = categorize(_events(prof))
    total = sum(us.values())
    rows = [dict(category=k, share=v / total, ms_per_step=step_ms * v / total) for k, v in us.items()]
    n = len(batches)
    top_events = [dict(event=name[:80], category=cat, share=v / total, ms_per_step=step_ms * v / total,
                       calls_per_step=c / n) for name, cat, v, c in top[:15]]  # fmt: skip
    name = "toy (quick)" if args.quick else args.model
    print(f"model {name}: step {step_ms:.2f} ms (median of {args.repeats} rounds of {len(batches)} steps); "
          f"compiled in {compile_s:.1f} s")  # fmt: skip
    table = [[r["category"], 100 * r["share"], r["ms_per_step"]] for r in rows]
    print(_report.format_table(table, ["category", "% of profiled self time", "ms per step"], floatfmt=".2f"))
    table = [[e["event"][:48], e["category"], 100 * e["share"], e["ms_per_step"], e["calls_per_step"]]
             for e in top_events]  # fmt: skip
    print(_report.format_table(table, ["largest events", "category", "%", "ms per step", "calls per step"],
                               floatfmt=".2f"))  # fmt: skip
    argv_list = sys.argv[1:] if argv is None else list(argv)
    result = {
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/training_profile.py", *argv_list]),
        "model": name,
        "batch_size": 5,
        "steps_per_round": len(batches),
        "step_ms_median": step_ms,
        "step_ms_rounds": rounds,
        "compile_seconds": compile_s,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rows": rows,
        "top_events": top_events,
    }
    if args.out:
        _report.write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
