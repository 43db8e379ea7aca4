"""GPU suite: every GPU figure of the project from one command, in at most 9 minutes on one H100/H200.

Stages (select with ``--stages a,b,...``; default all, in this order), each writing ``<out>/<stage>.json``:

* ``tests``  -- ``pytest -m "gpu or not slow"`` restricted to the tests that need CUDA: every test marked
  ``gpu``, every test with a ``skipif`` whose condition or reason names CUDA/GPU, and every parametrisation
  whose ids name cuda (lookup kernels, integer GEMMs, MD, the force field's fast path, DDP with NCCL on one
  GPU, ...); one record per test, written as the tests run, so a timeout keeps what ran;
* ``lookup`` -- exact nearest-codeword throughput on the device, float32, Fibonacci codebooks of n = 64,
  1024, 16384: :class:`spherequant.lookup.NearestIndex` and :meth:`spherequant.codebook.Codebook.nearest`
  against torch's brute force (``argmax(x @ P.T)`` in chunks, from ``benchmarks/lookup.py``) in the same run,
  1e8 queries; exactness of every fast path checked against :func:`spherequant.lookup.brute_force_nearest`
  on a 1e6-query sample; the device-to-device copy bandwidth measured as the roofline (16 bytes per query);
* ``speed``  -- the model-speed table on the device (``benchmarks/model_speed.py`` times the CPU only, so
  this stage times with the builders, batches and paired CUDA-event timer of
  ``benchmarks/peer_so3krates_torch.py``): energy+forces latency and throughput at batch 1, 64 and 1024 of
  the shipped FP32 model (eager reference, fast path), the shipped GAQ W4A8 model (fake-quant, converted to
  integer), and ours against the peer ``so3krates-torch`` at equal size (132 features, 3 layers, degrees
  1-3; the peer row records why it is missing when it is not importable); then the fast path replayed as a
  CUDA graph (batch 1 and 64) and, with a minute left, under ``torch.compile``. Training steps/s and MD
  steps/s are the ``train`` and ``md`` stages;
* ``table4`` -- the paper's Table IV from ``benchmarks/latency.py``: per-section latency and peak memory of
  FP32, bf16 and the converted W4A8 model with integer kernels, at batch 1 and a memory-bound batch;
* ``md``     -- NVE steps/s of the shipped FP32 and GAQ models (:func:`spherequant.models.md.run_md`) for one
  azobenzene and for 1024 replicas;
* ``train``  -- :func:`spherequant.models.train.train` throughput (steps/s at batch 5 and 64) for FP32 and
  GAQ QAT, then, in the time left, the shipped config ``azobenzene_gaq_w4a8_keep.yaml`` trained in chunks of
  epochs (exact resume between chunks); its best checkpoint comes back as ``train_checkpoint.pt``.

Every stage runs in its own process (a CUDA error, a crash or a hang ends that stage only) under a wall-clock
limit; inside a stage every measurement checks the time left first and is recorded under ``"skipped"`` when
it does not fit. A stage's JSON is rewritten after every measurement, so a killed stage keeps what it
measured; the parent then records ``"status": "timeout"`` (or ``"failed"`` with the exit code and the end of
the stage's stderr). ``suite.json`` holds the device, the date, the commit and each stage's status and wall
time. At most 8 files are written: ``suite.json``, the six stage files and ``train_checkpoint.pt``.

Goals (from issue 18; recorded in each stage's ``"goals"`` beside the measured value): lookup >= 1e10
queries/s at n = 16384; speed >= 5x the peer at batch 1 and >= 2x at batch 1024; table4 W4A8 >= 2x FP32 and
>= 1.3x bf16 at the memory-bound batch; md >= 2000 NVE steps/s for one azobenzene. A ``--tiny`` run records
the goals with ``"met": null`` (toy sizes prove nothing about speed).

Usage::

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu                 # everything, on CUDA
    python benchmarks/gpu_suite.py --out /tmp/gs --stages lookup,md             # some stages
    python benchmarks/gpu_suite.py --out /tmp/gs --stages train --limit train=300   # a rerun, more time
    python benchmarks/gpu_suite.py --out /tmp/gs --device cpu --tiny            # CPU dry run (CI runs it)

On the project's lent GPU machine (the device tool's ``run``: one H200, python3 3.12 with torch, e3nn, h5py,
numba and pytest, nothing can be downloaded there) spherequant is installed from the copied checkout, and the
peer travels as wheels. Its model code imports ``ase``, ``h5py``, ``matscipy``, ``scipy`` and
``typing_extensions`` (checked by importing it with every third-party import traced); the image lacks
``ase`` and ``matscipy``. Once, on the developer machine, in the repository root (about 6.5 MB)::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl so3krates-torch==0.2.1 matscipy==1.3.1 ase==3.29.0

then call ``run`` with ``carry: [".whl"]``, ``timeout_s: 600`` and this command (the suite ends within
520 s; the installs take seconds)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    || echo 'no peer wheels: the peer rows will be skipped'; export PYTHONPATH=/tmp/site;
    (python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
    || python3 -m pip install -q --no-index --no-deps --no-build-isolation .)
    && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT

(one line, joined by spaces; the same text is ``DEVICE_RUN`` in this module). The eight files come back
under ``files_at``: copy them into ``benchmarks/results/gpu/`` and rebuild the docs, where the Results page
renders them. Without the wheels the suite still runs and the peer rows record ``"peer ... not
importable"``; if the editable install fails (an old setuptools there), the plain install still lets every
benchmark stage run (the ``tests`` stage then imports the checkout's ``spherequant`` without its models).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

__all__ = ["FILES", "STAGES", "main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = ("tests", "lookup", "speed", "table4", "md", "train")
#: Every file the suite may write into ``--out`` (the device tool returns at most 8 files).
FILES = ("suite.json", *(f"{s}.json" for s in STAGES), "train_checkpoint.pt")
#: Wall-clock limit of each stage on the GPU (seconds); they sum to 490 s of the 520 s total (the last stage
#: gets whatever is left), which leaves room for installing the wheels and a 600 s device-call limit.
BUDGET_S = {"tests": 100, "lookup": 45, "speed": 90, "table4": 60, "md": 65, "train": 130}
#: Limits of the CPU dry run (generous: a toy run ends long before).
TINY_BUDGET_S = {"tests": 90, "lookup": 60, "speed": 90, "table4": 90, "md": 90, "train": 120}
TOTAL_S = 520.0
#: Seconds a stage keeps for writing its JSON and exiting after its last measurement.
RESERVE_S = 6.0
#: The wheels the peer needs on the GPU machine (its image lacks them), fetched once on the developer machine.
WHEELS = ("so3krates-torch==0.2.1", "matscipy==1.3.1", "ase==3.29.0")
WHEELS_DOWNLOAD = (
    "python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
    "--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "
    "-d .whl " + " ".join(WHEELS)
)
#: The device tool's ``run`` call that produces every GPU figure (``carry``, ``timeout_s``, ``command``).
DEVICE_RUN = {
    "carry": [".whl"],
    "timeout_s": 600,
    "command": (
        "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl "
        "|| echo 'no peer wheels: the peer rows will be skipped'; export PYTHONPATH=/tmp/site; "
        "(python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . "
        "|| python3 -m pip install -q --no-index --no-deps --no-build-isolation .) "
        "&& PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT"
    ),
}
SHIPPED_FP32 = "azobenzene-gfn2-fp32"
SHIPPED_GAQ = "azobenzene-gfn2-gaq-w4a8"
DATASET = "azobenzene-gfn2-500K"
TRAIN_CONFIG = "azobenzene_gaq_w4a8_keep.yaml"


# ----------------------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------------------
def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def _write_json(path: Path, obj) -> None:
    from spherequant._report import write_json

    write_json(path, _json_safe(obj))


def _json_safe(obj):
    """``obj`` with non-finite floats as ``None`` and tuples as lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _json_safe(obj.tolist())
    return str(obj)


class Budget:
    """Wall-clock budget of one stage: ``left()`` seconds until the deadline (minus the write reserve)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return self.seconds - RESERVE_S - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class Record:
    """The JSON of one stage, rewritten after every change (a killed stage keeps what it measured)."""

    def __init__(self, stage: str, out: Path, device: str, tiny: bool, budget: Budget):
        self.path = out / f"{stage}.json"
        self.budget = budget
        self.tiny = tiny
        self.items_ok = 0
        self.data = {
            "stage": stage,
            "status": "running",
            "started": _now_iso(),
            "device": {"requested": device},
            "tiny": tiny,
            "budget_s": budget.seconds,
            "wall_s": 0.0,
            "results": {},
            "goals": [],
            "skipped": [],
            "errors": [],
            "notes": [],
        }
        self.save()

    def save(self) -> None:
        self.data["wall_s"] = round(self.budget.elapsed(), 3)
        _write_json(self.path, self.data)

    def result(self, key: str, value) -> None:
        self.data["results"][key] = value
        self.save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.save()

    def skip(self, item: str, reason: str) -> None:
        print(f"  skipped {item}: {reason}", flush=True)
        self.data["skipped"].append({"item": item, "reason": reason})
        self.save()

    def goal(self, name: str, value, goal: str, met: bool | None) -> None:
        """Record a goal beside its measured value (``met`` is None in a tiny run or when not measured)."""
        if self.tiny or value is None:
            met = None
        self.data["goals"].append({"name": name, "goal": goal, "value": value, "met": met})
        self.save()

    def fits(self, item: str, need_s: float) -> bool:
        """True when ``need_s`` seconds are left; otherwise record ``item`` as skipped for time."""
        left = self.budget.left()
        if left >= need_s:
            return True
        self.skip(
            item, f"time: needs ~{need_s:.0f} s, {max(left, 0.0):.0f} s left of {self.budget.seconds:.0f}"
        )
        return False

    @contextlib.contextmanager
    def item(self, name: str):
        """Run one measurement; an exception is recorded under ``errors`` and the stage goes on."""
        t0 = time.perf_counter()
        print(f"  [{name}]", flush=True)
        try:
            yield
            self.items_ok += 1
        except Exception as err:  # one failing measurement must not lose the others
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            self.data["errors"].append(
                {"item": name, "error": f"{type(err).__name__}: {err}"[:1000], "traceback": tb[-3000:]}
            )
        finally:
            print(f"  [{name}] {time.perf_counter() - t0:.1f} s", flush=True)
            self.save()

    def finish(self) -> None:
        d = self.data
        d["items_ok"] = self.items_ok
        if d["errors"] and not self.items_ok:  # nothing measured
            d["status"] = "failed"
        elif d["errors"] or d["skipped"]:
            d["status"] = "partial"
        else:
            d["status"] = "ok"
        self.save()


class Ctx:
    """What a stage function gets: device, size, budget, record, output folder, scratch folder."""

    def __init__(self, stage, device, tiny, budget, rec, out, tmp):
        self.stage, self.device, self.tiny = stage, device, tiny
        self.budget, self.rec, self.out, self.tmp = budget, rec, out, Path(tmp)


def _device_info(device) -> dict:
    import torch

    info = {
        "requested": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            capability=f"{p.major}.{p.minor}",
            memory_GiB=round(p.total_memory / 2**30, 1),
            multiprocessors=p.multi_processor_count,
        )
    else:
        info.update(name=f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    return info


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _best_time(fn, device, repeat: int) -> float:
    """Best wall time (s) of ``repeat`` calls of ``fn`` after one warm-up, synchronised on the device."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _peak_memory(device):
    """Context: yields a dict that gets ``peak_MiB`` (CUDA max allocated) or None on the CPU."""

    @contextlib.contextmanager
    def cm():
        import torch

        box = {"peak_MiB": None}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        yield box
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            box["peak_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20

    return cm()


def _load_bench(name: str):
    """Import ``benchmarks/<name>.py`` as a module (the benchmarks folder is not a package)."""
    import importlib

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


# ----------------------------------------------------------------------------------------------------------
# stage: tests
# ----------------------------------------------------------------------------------------------------------
_CUDA_RE = re.compile(r"cuda|gpu", re.IGNORECASE)


def _needs_cuda(item) -> bool:
    """A test that needs CUDA: marked ``gpu``, skipped without CUDA, or with ``cuda`` in its parameter ids."""
    if item.get_closest_marker("gpu") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        text = " ".join([str(mark.kwargs.get("reason", "")), *(str(a) for a in mark.args)])
        if _CUDA_RE.search(text):
            return True
    params = re.search(r"\[(.*)\]$", item.nodeid)  # parametrisation ids such as [cuda-float32]
    return bool(params and re.search("cuda", params.group(1), re.IGNORECASE))


def pytest_collection_modifyitems(config, items):  # pragma: no cover - runs inside the pytest subprocess
    """pytest hook (``-p gpu_suite`` with ``GPU_SUITE_SELECT=1``): keep only the tests that need CUDA."""
    if os.environ.get("GPU_SUITE_SELECT") != "1":
        return
    keep = [it for it in items if _needs_cuda(it)]
    drop = [it for it in items if not _needs_cuda(it)]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_runtest_logreport(report):  # pragma: no cover - runs inside the pytest subprocess
    """pytest hook: append each test phase's outcome to ``GPU_SUITE_TESTLOG`` as it happens (JSON lines)."""
    path = os.environ.get("GPU_SUITE_TESTLOG")
    if not path or not (report.when == "call" or report.outcome != "passed"):
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    else:
        message = report.longreprtext[-800:] if report.outcome != "passed" else ""
    row = {
        "id": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration_s": round(report.duration, 4),
        "message": message,
    }
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def _cuda_test_files(tiny: bool) -> list[str]:
    """Test files that mention CUDA or the gpu mark (the smallest one in a tiny run)."""
    files = []
    for p in sorted((REPO / "tests").glob("test_*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")
        if re.search(r"cuda|mark\.gpu", text, re.IGNORECASE):
            files.append(p)
    if tiny and files:  # the smallest with a CUDA-skipping test, not this suite's own tests (the dry run)
        marked = re.compile(r"mark\.gpu|skipif\([^)]*cuda", re.IGNORECASE)
        cands = [
            p for p in files if p.name != "test_gpu_suite.py" and marked.search(p.read_text(errors="replace"))
        ]
        files = [min(cands or files, key=lambda p: p.stat().st_size)]
    return [str(p.relative_to(REPO)) for p in files]


def _run_group(cmd, *, env, cwd, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, killed at ``timeout`` s; returns (exit code or None, tail)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    tail: collections.deque = collections.deque(maxlen=200)

    def pump():
        for line in iter(proc.stdout.readline, b""):
            text = line.decode(errors="replace")
            tail.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc = None
    reader.join(timeout=5)
    return rc, "".join(tail)


def _kill_group(proc) -> None:
    """Terminate the process group of ``proc`` (started with ``start_new_session``), then kill it."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stage_tests(ctx: Ctx) -> None:
    rec = ctx.rec
    files = _cuda_test_files(ctx.tiny)
    log = ctx.tmp / "tests.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-p",
        "gpu_suite",
        "-m",
        "gpu or not slow",
        *files,
    ]
    env = dict(os.environ, GPU_SUITE_SELECT="1", GPU_SUITE_TESTLOG=str(log), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    if ctx.device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run on a GPU machine still tests the skip path
    rec.result("command", shlex.join(["python", *cmd[1:]]))
    rec.result("files", files)
    with rec.item("pytest"):
        rc, tail = _run_group(cmd, env=env, cwd=REPO, timeout=ctx.budget.left())
        rows = []
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        outcome: dict[str, dict] = {}
        for r in rows:  # a test's outcome: failed if any phase failed, else skipped / passed
            o = outcome.setdefault(
                r["id"], {"id": r["id"], "outcome": "passed", "duration_s": 0.0, "message": ""}
            )
            o["duration_s"] += r["duration_s"]
            if r["outcome"] == "failed" or (r["outcome"] == "skipped" and o["outcome"] == "passed"):
                o["outcome"] = "error" if r["outcome"] == "failed" and r["when"] != "call" else r["outcome"]
                o["message"] = r["message"]
        tests = list(outcome.values())
        counts = collections.Counter(t["outcome"] for t in tests)
        rec.result("pytest_exit_code", rc)
        summary = [
            ln.strip(" =\n")
            for ln in tail.splitlines()
            if re.search(r"\d+ (passed|skipped|failed|deselected)", ln)
        ]
        rec.result("pytest_summary", summary[-1] if summary else None)
        rec.result("counts", {k: counts.get(k, 0) for k in ("passed", "failed", "error", "skipped")})
        rec.result("tests", tests)
        if rc is None:
            rec.skip("pytest", "time: killed at the stage's limit; tests listed are those that finished")
        elif rc not in (0, 5):
            rec.data["errors"].append(
                {"item": "pytest", "error": f"pytest exit code {rc}", "traceback": tail[-3000:]}
            )
        bad = counts.get("failed", 0) + counts.get("error", 0)
        ran = counts.get("passed", 0) + bad
        rec.goal(
            "CUDA tests passing",
            f"{counts.get('passed', 0)}/{ran}",
            "all pass",
            (bad == 0 and ran > 0) if ctx.device.type == "cuda" else None,
        )


# ----------------------------------------------------------------------------------------------------------
# stage: lookup
# ----------------------------------------------------------------------------------------------------------
def _lookup_impls():
    """Adapter: codebook, index, reference and the brute-force baseline of benchmarks/lookup.py."""
    from spherequant import codebook
    from spherequant.lookup import NearestIndex, brute_force_nearest

    brute_torch = _load_bench("lookup")._brute_torch  # chunked argmax(x @ P.T), the benchmark's baseline
    return codebook.fibonacci, NearestIndex, brute_force_nearest, brute_torch


def _copy_bandwidth(device, nbytes: int) -> float:
    """Device-to-device copy bandwidth (bytes/s, read + write) of a ``nbytes`` buffer, best of 5."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = _best_time(lambda: dst.copy_(src), device, 5)
    return 2 * nbytes / best


def stage_lookup(ctx: Ctx) -> None:
    import numpy as np
    import torch

    rec, dev = ctx.rec, ctx.device
    fibonacci, NearestIndex, brute_force_nearest, brute_torch = _lookup_impls()
    sizes = [64, 1024] if ctx.tiny else [64, 1024, 16384]
    nq = 10_000 if ctx.tiny else 100_000_000
    n_check = min(nq, 1_000_000)
    repeat = 2 if ctx.tiny else 3
    rec.result("queries", nq)
    rec.result("dtype", "float32")
    rec.result("exactness_sample", n_check)
    with rec.item("copy_bandwidth"):
        bw = _copy_bandwidth(dev, (1 << 20) if ctx.tiny else (1 << 30))
        rec.result("copy_bandwidth_GBps", bw / 1e9)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(nq, 3, device=dev, dtype=torch.float32, generator=gen)
    rows = []
    for n in sizes:
        if not rec.fits(f"n={n}", 3.0 if ctx.tiny else 8.0):
            continue
        with rec.item(f"n={n}"):
            cb = fibonacci(n)
            index = NearestIndex(cb.points)
            pts = torch.tensor(np.asarray(cb.points), dtype=torch.float32, device=dev)
            ref = brute_force_nearest(cb.points, x[:n_check])  # same dot-product expression as the index
            row = {"n": n, **index.stats("float32")}
            methods = {
                "index": lambda idx=index: idx.query(x),
                "codebook_nearest": lambda c=cb: c.nearest(x),
            }
            for name, fn in methods.items():  # exactness on the sample, then the full set timed
                sub = index.query(x[:n_check]) if name == "index" else cb.nearest(x[:n_check])
                mism = int((sub != ref).sum())
                t = _best_time(fn, dev, repeat)
                row[name] = {"qps": nq / t, "seconds": t, "mismatches_in_sample": mism, "exact": mism == 0}
                rec.result("rows", [*rows, row])
            # brute force (matmul + argmax): fewer queries at large n, it is O(n) per query
            nb = int(min(nq, max(10_000, 1e11 // n))) if not ctx.tiny else nq
            t = _best_time(lambda nb=nb, pts=pts: brute_torch(pts, x[:nb]), dev, repeat)
            bsub = brute_torch(pts, x[:n_check])
            agree = float((bsub == ref).float().mean())
            row["brute_matmul"] = {
                "qps": nb / t,
                "seconds": t,
                "queries": nb,
                "agreement_with_reference": agree,
            }
            row["speedup_vs_brute"] = row["index"]["qps"] / row["brute_matmul"]["qps"]
            if "copy_bandwidth_GBps" in rec.data["results"]:
                row["fraction_of_copy_roofline"] = 16 * row["index"]["qps"] / bw
            rows.append(row)
            rec.result("rows", rows)
            print(
                f"    n={n}: index {row['index']['qps'] / 1e9:.3g} G/s, brute {nb / t / 1e9:.3g} G/s, "
                f"exact={row['index']['exact']}",
                flush=True,
            )
    big = next((r for r in rows if r["n"] == 16384), None)
    value = None if big is None else big["index"]["qps"]
    rec.goal(
        "exact lookup queries/s at n = 16384 (float32)",
        value,
        ">= 1e10",
        None if value is None else value >= 1e10 and big["index"]["exact"],
    )
    for r in rows:
        if not (r["index"]["exact"] and r["codebook_nearest"]["exact"]):
            rec.data["errors"].append(
                {"item": f"n={r['n']}", "error": "fast lookup disagrees with brute force", "traceback": ""}
            )


# ----------------------------------------------------------------------------------------------------------
# stage: md
# ----------------------------------------------------------------------------------------------------------
def _md_inputs():
    """Adapter: ``(load_model, run_md, z, positions)`` -- the shipped models' loader, the MD engine and the
    first frame of the azobenzene set."""
    from spherequant.models.checkpoints import load_model
    from spherequant.models.data import load_dataset
    from spherequant.models.md import run_md

    frame = load_dataset(DATASET)[0]
    return load_model, run_md, frame["numbers"], frame["positions"]


def stage_md(ctx: Ctx) -> None:
    rec, dev = ctx.rec, ctx.device
    load_model, run_md, z, pos = _md_inputs()
    replicas = [1, 2] if ctx.tiny else [1, 1024]
    warm_steps = 2 if ctx.tiny else 20
    max_steps = 3 if ctx.tiny else 20000
    variants = {"fp32": SHIPPED_FP32, "gaq_w4a8": SHIPPED_GAQ}
    cases = [(v, b) for b in replicas for v in variants]
    rec.result("molecule", {"dataset": DATASET, "frame": 0, "atoms": len(z)})
    rec.result(
        "settings",
        {
            "ensemble": "nve",
            "timestep_fs": 0.5,
            "temperature_K": 300.0,
            "integrate_in_float64": True,
            "blowup": "off",
        },
    )
    rows = []
    models = {}
    for k, (variant, b) in enumerate(cases):
        name = f"{variant} x{b}"
        if not rec.fits(name, 2.0 if ctx.tiny else 6.0):
            continue
        with rec.item(name):
            if variant not in models:
                models[variant] = load_model(variants[variant], device=dev)
            model = models[variant]
            kw = dict(replicas=b, timestep_fs=0.5, temperature_K=300.0, device=dev, blowup="off", seed=0)
            run_md(model, z, pos, n_steps=2, save_every=2, **kw)  # first calls: allocator, library set-up
            warm = run_md(model, z, pos, n_steps=warm_steps, save_every=warm_steps, **kw)
            per_step = max(warm.wall_s / warm_steps, 1e-6)
            share = max(ctx.budget.left() - 2.0, 0.5) / (len(cases) - k)
            n = int(max(warm_steps, min(max_steps, 0.7 * share / per_step)))
            res = run_md(model, z, pos, n_steps=n, save_every=max(1, n // 10), **kw)
            s = res.summary()
            row = {
                "model": variant,
                "checkpoint": variants[variant],
                "replicas": b,
                "steps": res.steps_done,
                "wall_s": res.wall_s,
                "steps_per_s": res.steps_done / res.wall_s,
                "molecule_steps_per_s": b * res.steps_done / res.wall_s,
                "ns_per_day": res.ns_per_day,
                "verdict": s["verdict"],
                "drift": s["drift"],
            }
            rows.append(row)
            rec.result("rows", rows)
            print(f"    {name}: {row['steps_per_s']:.1f} steps/s ({n} steps), {row['verdict']}", flush=True)
    one = next((r for r in rows if r["model"] == "fp32" and r["replicas"] == 1), None)
    value = None if one is None else one["steps_per_s"]
    rec.goal("NVE steps/s, one azobenzene, FP32", value, ">= 2000", None if value is None else value >= 2000)
    one_q = next((r for r in rows if r["model"] == "gaq_w4a8" and r["replicas"] == 1), None)
    value = None if one_q is None else one_q["steps_per_s"]
    rec.goal(
        "NVE steps/s, one azobenzene, GAQ W4A8", value, ">= 2000", None if value is None else value >= 2000
    )


# ----------------------------------------------------------------------------------------------------------
# stage: train
# ----------------------------------------------------------------------------------------------------------
def _train_api():
    """Adapter: ``(load_config, TrainConfig, train)`` of spherequant.models.train."""
    from spherequant.models.train import TrainConfig, load_config, train

    return load_config, TrainConfig, train


def _train_config(base: Path, **over):
    """A shipped YAML config with ``over`` applied (``quantization_options`` updates the GAQ options)."""
    load_config, TrainConfig, _ = _train_api()
    d = load_config(base).to_dict()
    opts = over.pop("quantization_options", None)
    d.update(over)
    if opts and d.get("quantization"):
        d["quantization"] = dict(
            d["quantization"], options=dict(d["quantization"].get("options") or {}, **opts)
        )
    return TrainConfig.from_dict(d)


def stage_train(ctx: Ctx) -> None:
    rec, dev = ctx.rec, ctx.device
    _, _, train = _train_api()
    cfg_dir = REPO / "models" / "configs"
    quiet = dict(device=str(dev), progress=False, plot=False, evaluate_test=False, refit_energy_shift=False)
    batches = [2, 4] if ctx.tiny else [5, 64]
    steps = 2 if ctx.tiny else 60
    n_val = 2 if ctx.tiny else 10
    if ctx.tiny:  # the toy configs shipped for tests (ethanol, 16 features): same code path, seconds on a CPU
        variants = {"fp32": cfg_dir / "tiny_test.yaml", "gaq_qat": cfg_dir / "tiny_qat_test.yaml"}
    else:
        variants = {"fp32": cfg_dir / "azobenzene_fp32.yaml", "gaq_qat": cfg_dir / TRAIN_CONFIG}
    rec.result(
        "throughput_method",
        (
            "spherequant.models.train.train with the shipped config's model and optimiser, epochs=2 "
            f"of {steps} steps (GAQ: warmup_epochs=0, so every step is fully quantized); steps/s = "
            "steps / the second epoch's epoch_time_s, which also holds the epoch's validation of "
            f"{n_val} frames and its checkpoint writes (an upper bound on the step time)"
        ),
    )
    rows = []
    for b in batches:
        for variant, path in variants.items():
            name = f"{variant} batch {b}"
            if not rec.fits(name, 5.0 if ctx.tiny else 15.0):
                continue
            with rec.item(name):
                out_dir = ctx.tmp / f"tp_{variant}_{b}"
                over = dict(
                    quiet,
                    output_dir=str(out_dir),
                    n_train=b * steps,
                    n_val=n_val,
                    epochs=2,
                    batch_size=b,
                    val_batch_size=max(n_val, 1),
                )
                if variant == "gaq_qat":
                    over.update(quantization_options={"warmup_epochs": 0})
                cfg = _train_config(path, **over)
                t0 = time.perf_counter()
                out = train(cfg)
                hist = out["history"]
                ep = hist[-1]
                row = {
                    "model": variant,
                    "config": path.name,
                    "batch": b,
                    "steps": steps,
                    "epoch_time_s": ep["epoch_time_s"],
                    "steps_per_s": steps / ep["epoch_time_s"],
                    "frames_per_s": b * steps / ep["epoch_time_s"],
                    "seconds_per_950_frames": 950 * ep["epoch_time_s"] / (b * steps),
                    "first_epoch_time_s": hist[0]["epoch_time_s"],
                    "call_wall_s": time.perf_counter() - t0,
                }
                rows.append(row)
                rec.result("throughput", rows)
                print(f"    {name}: {row['steps_per_s']:.1f} steps/s", flush=True)
                shutil.rmtree(out_dir, ignore_errors=True)
    _train_run(ctx)


def _train_run(ctx: Ctx) -> None:
    """Train the shipped config in chunks of epochs (exact resume) while time is left; keep best.pt."""
    rec, dev = ctx.rec, ctx.device
    _, _, train = _train_api()
    path = REPO / "models" / "configs" / ("tiny_qat_test.yaml" if ctx.tiny else TRAIN_CONFIG)
    run_dir = ctx.tmp / "run"
    over = dict(device=str(dev), progress=False, plot=False, output_dir=str(run_dir))
    if ctx.tiny:
        over.update(n_train=8, n_val=4, val_batch_size=4, evaluate_test=False)
    target = _train_config(path, **over).epochs
    info = {"config": path.name, "epochs_planned": target, "epochs_done": 0, "calls": []}
    rec.result("run", info)
    done, per_epoch, overhead = 0, None, None
    while done < target:
        left = ctx.budget.left()
        if per_epoch is None:
            chunk = 1
            need = 8.0 if ctx.tiny else 30.0
        else:
            chunk = int(max(0, (left - overhead - 3.0) // (1.2 * per_epoch)))
            chunk = min(chunk, target - done)
            need = overhead + chunk * per_epoch
        if chunk < 1 or not rec.fits(f"run epochs {done + 1}..", need):
            if chunk < 1:
                rec.skip(
                    f"run epochs {done + 1}..{target}",
                    f"time: {left:.0f} s left, an epoch takes ~{per_epoch:.0f} s",
                )
            break
        last = done + chunk == target
        n_errors = len(rec.data["errors"])
        with rec.item(f"run epochs {done + 1}..{done + chunk}"):
            t0 = time.perf_counter()
            cfg_over = dict(over, epochs=done + chunk)
            if not ctx.tiny:
                cfg_over["evaluate_test"] = last
                cfg_over["refit_energy_shift"] = last
            out = train(_train_config(path, **cfg_over), resume=done > 0)
            wall = time.perf_counter() - t0
            hist = out["history"]
            new = [h for h in hist if h["epoch"] > done]
            ep_time = sum(h["epoch_time_s"] for h in new) / max(len(new), 1)
            per_epoch = ep_time if per_epoch is None else max(per_epoch, ep_time)
            overhead = max(wall - sum(h["epoch_time_s"] for h in new), 0.0)
            done = max(h["epoch"] for h in hist)
            info.update(epochs_done=done, history=hist, best=out["best"], test=out["test"])
            info["calls"].append({"epochs": len(new), "wall_s": wall})
            best = run_dir / "best.pt"
            if best.is_file():
                tmp = ctx.out / ".train_checkpoint.pt.tmp"
                shutil.copyfile(best, tmp)
                os.replace(tmp, ctx.out / "train_checkpoint.pt")
                info["checkpoint"] = "train_checkpoint.pt"
            rec.result("run", info)
        if len(rec.data["errors"]) > n_errors:  # a failed chunk would fail again: stop the run here
            break
    info["complete"] = done >= target
    rec.result("run", info)


# ----------------------------------------------------------------------------------------------------------
# stage: speed
# ----------------------------------------------------------------------------------------------------------
def _peer_helpers():
    """Adapter: the peer benchmark's builders, batches, callers and paired timer (benchmarks/
    peer_so3krates_torch.py), and the peer's modules or the reason they are not importable."""
    pb = _load_bench("peer_so3krates_torch")
    try:
        peer = pb._import_peer()
        why = None
    except SystemExit as err:  # the benchmark exits with the install hint when the peer is missing
        peer, why = (
            None,
            f"peer so3krates-torch=={pb.PEER_VERSION} not importable: {str(err).splitlines()[0]}",
        )
    return pb, peer, why


def _cuda_graph(fn, warmup: int = 3):
    """``fn`` (static inputs) captured in a CUDA graph: returns ``(replay, captured output)``."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def _speed_groups(ctx: Ctx, pb, peer):
    """Adapter: the model groups of the speed table as ``{group: {row: (model, call)}}`` plus the peer.

    ``peer size``: ours at the peer benchmark's default size (132 features, 3 layers, degrees 1-3; built by
    ``benchmarks/peer_so3krates_torch.py``), eager reference and fast path, and the peer when importable;
    ``shipped``: ``azobenzene-gfn2-fp32`` (eager, fast path), ``azobenzene-gfn2-gaq-w4a8`` fake-quant and
    converted to integer (energy + straight-through forces)."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from spherequant.models import fast
    from spherequant.models.checkpoints import load_model
    from spherequant.models.data import load_dataset
    from spherequant.models.deploy import convert_to_integer

    dev, dtype = ctx.device, torch.float32
    ds = load_dataset(DATASET)
    args = SimpleNamespace(
        features=12 if ctx.tiny else 132,
        layers=1 if ctx.tiny else 3,
        heads=4,
        degrees=[1, 2, 3],
        cutoff=5.0,
        num_rbf=8 if ctx.tiny else 32,
        seed=0,
    )

    def forward(m, ob):
        return m(
            ob["z"],
            ob["pos"],
            ob["batch"],
            edge_index=ob["edge_index"],
            num_graphs=ob["num_graphs"],
            compute_forces=True,
        )

    def eager(m, ob):
        with fast.fast_path(False):
            return forward(m, ob)

    ours = pb.build_ours(args, dtype, dev).eval()
    groups = {"peer size": {"ours eager": (ours, eager), "ours fast path": (ours, forward)}}
    fp = load_model(SHIPPED_FP32, device=dev, dtype=dtype)
    gq = load_model(SHIPPED_GAQ, device=dev, dtype=dtype)
    integer = convert_to_integer(load_model(SHIPPED_GAQ, dtype=dtype)).to(dev).eval()
    for m in (fp, gq, getattr(integer, "net", None)):  # as the peer benchmark's build_ours: no per-call
        if m is not None and hasattr(m, "validate_inputs"):  # input checks (device syncs) while timed
            m.validate_inputs = False
    groups["shipped"] = {
        "FP32 eager": (fp, eager),
        "FP32 fast path": (fp, forward),
        "GAQ W4A8 fake-quant": (gq, forward),
        "GAQ W4A8 integer": (integer, forward),
    }
    peer_model = None
    if peer is not None:
        avg_nb = pb.avg_num_neighbors(peer, ds, np.arange(16), args.cutoff, dtype)
        peer_model = pb.build_peer(peer, args, dtype, dev, avg_nb).eval()
    model_info = {
        "peer size": {
            k: getattr(args, k) for k in ("features", "layers", "heads", "degrees", "cutoff", "num_rbf")
        },
        "shipped": {"fp32": SHIPPED_FP32, "gaq": SHIPPED_GAQ},
    }
    return ds, args, groups, peer_model, model_info


def _speed_minimal(ctx: Ctx) -> None:
    """Energy+forces latency (batch 1) and throughput (batch 64, 1024) of ours (eager, fast path, GAQ
    fake-quant and integer) and of the peer at equal size, timed in one process with the peer benchmark's
    paired timer (CUDA events on a GPU); then, on CUDA, the fast path replayed as a CUDA graph."""
    import numpy as np
    import torch

    rec, dev = ctx.rec, ctx.device
    pb, peer, why = _peer_helpers()
    if why:
        rec.skip("peer", why)
    ds, args, groups, peer_model, info = _speed_groups(ctx, pb, peer)
    rec.result("models", info)
    batches = [1, 4] if ctx.tiny else [1, 64, 1024]
    repeats = 2 if ctx.tiny else 20
    rows = []
    for n_mol in batches:
        idx = np.arange(n_mol) % len(ds)
        for group, members in groups.items():
            if not rec.fits(f"{group}, batch {n_mol}", 2.0 if ctx.tiny else 8.0):
                continue
            with rec.item(f"{group}, batch {n_mol}"):
                ob = pb.our_batch(ds, idx, 5.0, dev, torch.float32)
                fns = {
                    name: (lambda m=m, call=call, ob=ob: call(m, ob)) for name, (m, call) in members.items()
                }
                if group == "peer size" and peer_model is not None:
                    frames = pb.peer_frames(peer, ds, idx, args.cutoff, torch.float32)
                    pbatch = pb.peer_batch(peer, frames, dev, torch.float32)
                    fns["peer so3krates-torch"] = lambda d=pbatch: pb.call_peer(peer_model, d)
                with _peak_memory(dev) as mem:
                    t = pb.time_pair(
                        fns, dev, repeats if n_mol == 1 else max(2, repeats // 4), 1 if ctx.tiny else 2
                    )
                eager_name = "ours eager" if group == "peer size" else "FP32 eager"
                for name, v in t.items():
                    row = {
                        "group": group,
                        "row": name,
                        "batch": n_mol,
                        "ms": v["ms_median"],
                        "ms_min": v["ms_min"],
                        "molecules_per_s": 1e3 * n_mol / v["ms_median"],
                        "speedup_vs_eager": t[eager_name]["ms_median"] / v["ms_median"],
                    }
                    if "peer so3krates-torch" in t:
                        row["speedup_vs_peer"] = t["peer so3krates-torch"]["ms_median"] / v["ms_median"]
                    rows.append(row)
                rows[-1]["group_peak_MiB"] = mem["peak_MiB"]
                rec.result("rows", rows)
    if dev.type == "cuda":  # last: a failed capture must not disturb the other measurements
        for group, name in (("peer size", "ours fast path"), ("shipped", "FP32 fast path")):
            for n_mol in (1, 64):
                item = f"CUDA graph, {group}: {name}, batch {n_mol}"
                if not rec.fits(item, 8.0):
                    continue
                with rec.item(item):
                    m, call = groups[group][name]
                    ob = pb.our_batch(ds, np.arange(n_mol) % len(ds), 5.0, dev, torch.float32)
                    ref = call(m, ob)["forces"].detach().clone()
                    replay, out = _cuda_graph(lambda m=m, call=call, ob=ob: call(m, ob))
                    replay()
                    torch.cuda.synchronize(dev)
                    err = float((out["forces"] - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                    t = pb.time_pair({"graph": replay}, dev, repeats, 2)["graph"]
                    plain = next(
                        (r for r in rows if (r["group"], r["row"], r["batch"]) == (group, name, n_mol)), None
                    )
                    rows.append(
                        {
                            "group": group,
                            "row": f"{name} + CUDA graph",
                            "batch": n_mol,
                            "ms": t["ms_median"],
                            "ms_min": t["ms_min"],
                            "molecules_per_s": 1e3 * n_mol / t["ms_median"],
                            "forces_rel_error_vs_plain": err,
                            "speedup_vs_plain": None if plain is None else plain["ms"] / t["ms_median"],
                        }
                    )
                    rec.result("rows", rows)
    if dev.type == "cuda" or ctx.tiny:  # the dry run walks the same code without compiling
        _speed_compiled(ctx, pb, ds, groups, rows, batches, repeats, compile_on=dev.type == "cuda")
    for b, goal in ((1, 5.0), (1024, 2.0)):
        r = next(
            (r for r in rows if (r["batch"], r["row"]) == (b, "ours fast path") and "speedup_vs_peer" in r),
            None,
        )
        value = None if r is None else r["speedup_vs_peer"]
        rec.goal(
            f"energy+forces vs peer at equal size, batch {b} (fast path)",
            value,
            f">= {goal:g}x",
            None if value is None else value >= goal,
        )
    g1 = next((r for r in rows if (r["batch"], r["row"]) == (1, "ours fast path + CUDA graph")), None)
    p1 = next((r for r in rows if (r["batch"], r["row"]) == (1, "peer so3krates-torch")), None)
    value = None if g1 is None or p1 is None else p1["ms"] / g1["ms"]
    rec.goal(
        "energy+forces vs peer at equal size, batch 1 (fast path + CUDA graph)",
        value,
        ">= 5x",
        None if value is None else value >= 5.0,
    )


def _speed_compiled(ctx: Ctx, pb, ds, groups, rows, batches, repeats, compile_on: bool = True) -> None:
    """The shipped FP32 fast path under ``torch.compile`` (the fast path's opt-in ``set_compile``), when at
    least a minute is left: first-call seconds (the compile), then timings at each batch; forces checked
    against the plain call. A compile failure (the fast path then warns and runs eager) is an error here."""
    import warnings

    import numpy as np
    import torch
    from spherequant.models.fast import set_compile

    rec, dev = ctx.rec, ctx.device
    name = "FP32 fast path"
    label = f"{name} + torch.compile" + ("" if compile_on else " (dry run: not compiled)")
    if not rec.fits(f"torch.compile, shipped: {name}", 60.0 if compile_on else 2.0):
        return
    with rec.item(f"torch.compile, shipped: {name}"):
        m, call = groups["shipped"][name]
        old = set_compile(compile_on)
        try:
            for n_mol in batches:
                if ctx.budget.left() < 10.0:
                    rec.skip(f"torch.compile, batch {n_mol}", "time: under 10 s left")
                    break
                ob = pb.our_batch(ds, np.arange(n_mol) % len(ds), 5.0, dev, torch.float32)
                with fast_path_plain():
                    ref = call(m, ob)["forces"].detach().clone()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    t0 = time.perf_counter()
                    out = call(m, ob)
                    _sync(dev)
                    first = time.perf_counter() - t0
                failed = [str(w.message) for w in caught if "compile" in str(w.message).lower()]
                if failed:
                    raise RuntimeError(f"torch.compile of the fast path failed: {failed[0][:500]}")
                err = float((out["forces"] - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                t = pb.time_pair({"c": lambda ob=ob: call(m, ob)}, dev, repeats if n_mol == 1 else 3, 1)["c"]
                plain = next(
                    (r for r in rows if (r["group"], r["row"], r["batch"]) == ("shipped", name, n_mol)), None
                )
                rows.append(
                    {
                        "group": "shipped",
                        "row": label,
                        "batch": n_mol,
                        "ms": t["ms_median"],
                        "ms_min": t["ms_min"],
                        "molecules_per_s": 1e3 * n_mol / t["ms_median"],
                        "first_call_s": first,
                        "forces_rel_error_vs_plain": err,
                        "speedup_vs_plain": None if plain is None else plain["ms"] / t["ms_median"],
                    }
                )
                rec.result("rows", rows)
        finally:
            set_compile(old)


@contextlib.contextmanager
def fast_path_plain():
    """The fast path without ``torch.compile`` inside the block (the reference of the compiled rows)."""
    from spherequant.models.fast import set_compile

    old = set_compile(False)
    try:
        yield
    finally:
        set_compile(old)


def stage_speed(ctx: Ctx) -> None:
    ctx.rec.result(
        "source",
        "gpu_suite's own measurement with the peer benchmark's builders and paired timer "
        "(benchmarks/model_speed.py times on the CPU only)",
    )
    ctx.rec.note(
        "energy+forces only: training steps/s and MD steps/s are measured by the train and md stages"
    )
    _speed_minimal(ctx)


# ----------------------------------------------------------------------------------------------------------
# stage: table4
# ----------------------------------------------------------------------------------------------------------
def _latency_main(lat, dev, tiny: bool, big: int, json_path: Path):
    """Adapter: run benchmarks/latency.py's ``main`` at batch 1 and ``big`` (its ``--batches`` option, or the
    older ``--batch``); returns ``(result dict, argv)``."""
    common = ["--device", dev.type, "--json", str(json_path)]
    if tiny:
        argv = [*common, "--quick", "--features", "16", "--layers", "1"]
        return lat.main(argv), argv
    for form in (["--batches", f"1,{big}"], ["--batch", str(big)]):
        argv = [*common, *form]
        try:
            return lat.main(argv), argv
        except SystemExit as err:  # argparse: this version does not know the option
            if err.code != 2:
                raise
    raise RuntimeError("benchmarks/latency.py accepts neither --batches nor --batch")


def _table4_rows(res: dict) -> list[dict]:
    """One row per (batch, variant) from latency.py's JSON: total ms, speed-ups (time ratios inverted) and
    the section breakdown, from either of its layouts (a case per batch holding ``variants``, or a case per
    (batch, variant))."""
    rows = []
    for c in res.get("cases", []):
        if "variants" in c:
            for v, e in c["variants"].items():
                r = {"batch": c["batch"], "variant": v, "total_ms": e["total_ms"]}
                for d, ratio in (e.get("ratio_vs") or {}).items():
                    r[f"speedup_vs_{d}"] = 1.0 / ratio if ratio else None
                if v == "w4a8" and c.get("w4a8_breakdown_ms"):
                    r["breakdown_ms"] = c["w4a8_breakdown_ms"]
                rows.append(r)
        else:
            keys = ("batch", "variant", "total_ms", "speedup_vs_fp32", "speedup_vs_bf16", "breakdown_ms")
            rows.append({k: c[k] for k in keys if k in c})
    return rows


def stage_table4(ctx: Ctx) -> None:
    """Table IV through benchmarks/latency.py (its ``main``), plus the peak memory of each case."""
    from types import SimpleNamespace

    import torch

    rec, dev = ctx.rec, ctx.device
    lat = _load_bench("latency")
    big = 16 if ctx.tiny else 1024
    rows = []
    with rec.item("latency.main"):
        res, argv = _latency_main(lat, dev, ctx.tiny, big, ctx.tmp / "latency.json")
        rec.result(
            "command",
            "python benchmarks/latency.py "
            + " ".join(a for a in argv if a != "--json" and not a.endswith("latency.json")),
        )
        rec.result("latency", res)
        rows = _table4_rows(res)
        rec.result("table", rows)
    with rec.item("peak memory"):
        args = SimpleNamespace(features=16 if ctx.tiny else 132, layers=1 if ctx.tiny else 3)
        models = lat.build_models(args, dev)
        mem = []
        for n_mol in (1, big):
            b = lat.make_batch(n_mol, dev)
            for variant in ("fp32", "bf16", "w4a8"):
                if not rec.fits(f"memory {variant} batch {n_mol}", 1.0 if ctx.tiny else 3.0):
                    continue
                run = lat._runner(variant, models, b)
                run()
                with _peak_memory(dev) as m:
                    run()
                stored = [*models[variant].parameters(), *models[variant].buffers()]
                mem.append(
                    {
                        "batch": n_mol,
                        "variant": variant,
                        "peak_MiB": m["peak_MiB"],
                        "weights_bytes": sum(t.numel() * t.element_size() for t in stored),
                    }
                )
                rec.result("peak_memory", mem)
        del models
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    w_big = next((r for r in rows if r["batch"] == big and r["variant"] == "w4a8"), {})
    for target, goal in (("fp32", 2.0), ("bf16", 1.3)):
        value = w_big.get(f"speedup_vs_{target}")
        rec.goal(
            f"W4A8 speed-up vs {target} at batch {big} (memory-bound)",
            value,
            f">= {goal:g}x",
            None if value is None else value >= goal,
        )
    w1 = next((r for r in rows if r["batch"] == 1 and r["variant"] == "w4a8"), {})
    rec.goal(
        "W4A8 speed-up vs FP32 at batch 1 (reported honestly)", w1.get("speedup_vs_fp32"), "report", None
    )


# ----------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------
STAGE_FUNCS = {
    "tests": stage_tests,
    "lookup": stage_lookup,
    "speed": stage_speed,
    "table4": stage_table4,
    "md": stage_md,
    "train": stage_train,
}


def run_stage(stage: str, out: Path, device: str, tiny: bool, seconds: float) -> dict:
    """Run one stage in this process; returns its record (also written to ``<out>/<stage>.json``)."""
    budget = Budget(seconds)
    rec = Record(stage, out, device, tiny, budget)
    with tempfile.TemporaryDirectory(prefix=f"gpu_suite_{stage}_") as tmp:
        try:
            import torch

            dev = torch.device(device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
            if dev.type == "cuda" and dev.index is not None:
                torch.cuda.set_device(dev)  # code that says plain "cuda" (latency.py) uses this one too
            if dev.type == "cpu":  # the dry run checks code paths; one thread avoids oversubscription
                torch.set_num_threads(1)
            rec.data["device"] = _device_info(dev)
            rec.save()
            STAGE_FUNCS[stage](Ctx(stage, dev, tiny, budget, rec, out, tmp))
        except Exception as err:  # recorded; the suite goes on with the next stage
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            rec.data["errors"].append(
                {"item": stage, "error": f"{type(err).__name__}: {err}"[:1000], "traceback": tb[-3000:]}
            )
        rec.finish()
    return rec.data


def _run_child(stage: str, out: Path, device: str, tiny: bool, seconds: float) -> dict:
    """Run one stage in a child process with a hard wall-clock limit; fill in its JSON if it died."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        stage,
        "--out",
        str(out),
        "--device",
        device,
        "--stage-budget",
        f"{seconds:.1f}",
        *(["--tiny"] if tiny else []),
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    rc, tail = _run_group(cmd, env=env, cwd=REPO, timeout=seconds + 10.0)
    wall = time.perf_counter() - t0
    path = out / f"{stage}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {
            "stage": stage,
            "started": _now_iso(),
            "device": {"requested": device},
            "tiny": tiny,
            "budget_s": seconds,
            "results": {},
            "goals": [],
            "skipped": [],
            "errors": [],
            "notes": [],
        }
    if rc is None:
        data["status"] = "timeout"
        data["skipped"].append(
            {"item": stage, "reason": f"time: killed after {wall:.0f} s (limit {seconds:.0f} s)"}
        )
    elif rc != 0 or data.get("status") in (None, "running"):
        data["status"] = "failed"
        data["errors"].append(
            {"item": stage, "error": f"stage process exited with code {rc}", "traceback": tail[-3000:]}
        )
    data["process_wall_s"] = round(wall, 3)
    _write_json(path, data)
    return data


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _remove_temp_files(out: Path) -> None:
    """Remove temporary files that a killed stage left behind in ``out`` (the device returns 8 files)."""
    known = "|".join(re.escape(f) for f in FILES)
    pattern = re.compile(rf"\.({known})(\.\d+\.[a-z0-9_]+)?\.tmp")
    for p in out.iterdir():
        if p.is_file() and pattern.fullmatch(p.name):
            with contextlib.suppress(OSError):
                p.unlink()


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (at most 8 files are written there)")
    ap.add_argument(
        "--stages", default="all", help=f"comma-separated subset of {','.join(STAGES)} (default all)"
    )
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: the CPU dry run")
    ap.add_argument(
        "--total-budget",
        type=float,
        default=None,
        help=f"wall-clock limit of the whole suite in s (default {TOTAL_S:.0f}; tiny: sum of stage limits)",
    )
    ap.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help="override one stage's wall-clock limit (repeatable), e.g. --limit train=200 for a rerun",
    )
    ap.add_argument("--in-process", action="store_true", help="run the stages in this process (no isolation)")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--stage-budget", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()  # the stages run with the repository as working directory
    if args.child:
        out.mkdir(parents=True, exist_ok=True)
        seconds = args.stage_budget or (TINY_BUDGET_S if args.tiny else BUDGET_S)[args.child]
        data = run_stage(args.child, out, args.device, args.tiny, seconds)
        return 0 if data["status"] in ("ok", "partial") else 1
    names = list(STAGES) if args.stages == "all" else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        return _error(
            f"--stages: unknown stage(s) {unknown or names}; choose from {', '.join(STAGES)} or all"
        )
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        return _error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    limits = dict(TINY_BUDGET_S if args.tiny else BUDGET_S)
    for item in args.limit:
        stage, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if stage not in STAGES or not (math.isfinite(seconds) and seconds > 0):
            return _error(f"--limit takes STAGE=SECONDS with a stage of {', '.join(STAGES)}, got {item!r}")
        limits[stage] = seconds
    total = (
        args.total_budget
        if args.total_budget is not None
        else (sum(limits[s] for s in names) if args.tiny else TOTAL_S)
    )
    if not (math.isfinite(total) and total > 0):
        return _error(f"--total-budget must be a positive number of seconds, got {total}")
    if out.exists() and not out.is_dir():
        return _error(f"--out {str(out)!r} exists and is not a folder")
    if args.device.startswith("cuda"):
        import torch  # is_available() creates no CUDA context in this process

        if not torch.cuda.is_available():
            return _error(
                "--device cuda: CUDA is not available here (the CPU dry run is --device cpu --tiny)"
            )
        index = int(args.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return _error(
                f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    suite = {
        "suite": "benchmarks/gpu_suite.py",
        "started": _now_iso(),
        "commit": _git_commit(),
        "command": "python benchmarks/gpu_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device_requested": args.device,
        "tiny": args.tiny,
        "total_budget_s": total,
        "isolation": "in-process" if args.in_process else "one process per stage",
        "device": None,
        "stages": {},
    }
    _write_json(out / "suite.json", suite)
    for k, stage in enumerate(names):
        remaining = total - (time.perf_counter() - t_start)
        later = names[k + 1 :]
        # each later stage keeps at least 20 s; the last stage may use all that is left
        allowed = remaining - 20.0 * len(later)
        allowed = min(limits[stage], allowed) if later else allowed
        print(f"== {stage}: limit {allowed:.0f} s ({remaining:.0f} s left in the suite)", flush=True)
        if allowed < 10.0:
            suite["stages"][stage] = {
                "status": "not_run",
                "reason": f"time: {remaining:.0f} s left in the suite",
            }
            _write_json(out / "suite.json", suite)
            continue
        t0 = time.perf_counter()
        if args.in_process:
            data = run_stage(stage, out, args.device, args.tiny, allowed)
        else:
            data = _run_child(stage, out, args.device, args.tiny, allowed)
        wall = time.perf_counter() - t0
        for g in data.get("goals") or []:
            suite.setdefault("goals", []).append({"stage": stage, **g})
        if suite["device"] is None and (data.get("device") or {}).get("name"):
            suite["device"] = data["device"]
        suite["stages"][stage] = {
            "status": data.get("status"),
            "wall_s": round(wall, 3),
            "limit_s": round(allowed, 1),
            "skipped": len(data.get("skipped", [])),
            "errors": len(data.get("errors", [])),
        }
        print(f"== {stage}: {data.get('status')} in {wall:.1f} s", flush=True)
        _write_json(out / "suite.json", suite)
    _remove_temp_files(out)
    suite["wall_s"] = round(time.perf_counter() - t_start, 3)
    suite["finished"] = _now_iso()
    _write_json(out / "suite.json", suite)
    for g in suite.get("goals", []):
        met = {True: "met", False: "MISSED", None: "-"}[g["met"]]
        print(f"goal [{g['stage']}] {g['name']}: {g['value']} (goal {g['goal']}; {met})")
    bad = [s for s, d in suite["stages"].items() if d["status"] not in ("ok", "partial")]
    print(
        f"suite finished in {suite['wall_s']:.1f} s; "
        + ", ".join(f"{s}: {d['status']}" for s, d in suite["stages"].items())
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
