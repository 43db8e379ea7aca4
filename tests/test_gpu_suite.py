"""benchmarks/gpu_suite.py: the CPU dry run of every stage (so the suite cannot fail on an import, a path or a
JSON key the first time it meets a GPU), its time and failure handling, and the CUDA checks it runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402

CUDA = torch.cuda.is_available()
GOAL_KEYS = {"name", "goal", "value", "met"}


def _run_suite(out: Path, *extra: str, timeout: float = 400, cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------------------
# the dry run: every stage at toy size, each in its own process, exactly as on the GPU
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite_dry_run")
    t0 = time.perf_counter()
    proc = _run_suite(out, "--device", "cpu", "--tiny")
    wall = time.perf_counter() - t0
    stages = {}
    for s in gpu_suite.STAGES:
        p = out / f"{s}.json"
        stages[s] = json.loads(p.read_text()) if p.is_file() else None
    suite = json.loads((out / "suite.json").read_text()) if (out / "suite.json").is_file() else None
    return SimpleNamespace(out=out, proc=proc, wall=wall, stages=stages, suite=suite)


def _log(d) -> str:
    return f"\nstdout tail:\n{d.proc.stdout[-3000:]}\nstderr tail:\n{d.proc.stderr[-3000:]}"


def test_dry_run_succeeds_and_writes_at_most_8_known_files(dry_run):
    assert dry_run.proc.returncode == 0, _log(dry_run)
    names = sorted(p.name for p in dry_run.out.iterdir())
    assert len(names) <= 8, names
    assert set(names) <= set(gpu_suite.FILES), names
    assert set(names) >= {"suite.json", *(f"{s}.json" for s in gpu_suite.STAGES), "train_checkpoint.pt"}


def test_dry_run_suite_summary(dry_run):
    s = dry_run.suite
    assert s is not None, _log(dry_run)
    assert s["tiny"] is True and s["device_requested"] == "cpu"
    assert s["isolation"] == "one process per stage"
    assert list(s["stages"]) == list(gpu_suite.STAGES)
    for name, st in s["stages"].items():
        assert st["status"] in ("ok", "partial"), (name, st, _log(dry_run))
        assert 0 < st["wall_s"] <= st["limit_s"] + 15, (name, st)
    assert s["device"]["name"].startswith("CPU")
    assert s["wall_s"] >= sum(st["wall_s"] for st in s["stages"].values()) - 1e-6
    assert s["finished"] >= s["started"]


@pytest.mark.parametrize("stage", gpu_suite.STAGES)
def test_dry_run_stage_json_schema(dry_run, stage):
    d = dry_run.stages[stage]
    assert d is not None, _log(dry_run)
    assert d["stage"] == stage and d["tiny"] is True
    assert d["status"] in ("ok", "partial"), (d["status"], d["errors"])
    assert d["errors"] == [], d["errors"]
    assert d["device"]["requested"] == "cpu" and d["device"]["torch"] == torch.__version__
    assert d["results"], stage
    assert 0 < d["wall_s"] <= d["budget_s"]
    for g in d["goals"]:
        assert set(g) == GOAL_KEYS, g
        assert g["met"] is None, g  # toy sizes prove nothing about speed
    for sk in d["skipped"]:
        assert set(sk) == {"item", "reason"} and sk["reason"], sk
    # every skip for time names the time; a partial stage says why
    if d["status"] == "partial":
        assert d["skipped"], d


def test_dry_run_tests_stage_selects_only_device_tests(dry_run):
    r = dry_run.stages["tests"]["results"]
    assert r["pytest_exit_code"] == 0
    assert r["tests"], r
    assert r["counts"]["skipped"] == len(r["tests"])  # without CUDA every selected test skips ...
    assert all("cuda" in t["message"].lower() or "gpu" in t["message"].lower() for t in r["tests"]), r
    assert "'gpu or not slow'" in r["command"] and "-p gpu_suite" in r["command"]
    assert f"{len(r['tests'])} skipped" in r["pytest_summary"] and "deselected" in r["pytest_summary"]


def test_dry_run_lookup_is_exact_and_rates_consistent(dry_run):
    r = dry_run.stages["lookup"]["results"]
    assert [row["n"] for row in r["rows"]] == [64, 1024]
    for row in r["rows"]:
        for m in ("index", "codebook_nearest"):
            assert row[m]["exact"] and row[m]["mismatches_in_sample"] == 0, row
            assert math.isclose(row[m]["qps"], r["queries"] / row[m]["seconds"], rel_tol=1e-9)
        assert row["brute_matmul"]["agreement_with_reference"] > 0.99
        assert math.isclose(row["speedup_vs_brute"], row["index"]["qps"] / row["brute_matmul"]["qps"])
        assert row["max_candidates"] >= 1
    assert r["copy_bandwidth_GBps"] > 0


def test_dry_run_md_rows(dry_run):
    d = dry_run.stages["md"]
    rows = d["results"]["rows"]
    assert {(r["model"], r["replicas"]) for r in rows} == {
        (m, b) for m in ("fp32", "gaq_w4a8") for b in (1, 2)
    }
    for r in rows:
        assert r["steps"] >= 2 and r["verdict"] == "stable", r
        assert math.isclose(r["steps_per_s"], r["steps"] / r["wall_s"], rel_tol=1e-9)
        assert math.isclose(r["molecule_steps_per_s"], r["replicas"] * r["steps_per_s"], rel_tol=1e-9)
    assert d["goals"][0]["name"].startswith("NVE steps/s, one azobenzene")


def test_dry_run_train_throughput_and_checkpoint(dry_run):
    from spherequant.models.checkpoints import load_model
    from spherequant.models.data import collate, load_dataset

    r = dry_run.stages["train"]["results"]
    rows = r["throughput"]
    assert {(x["model"], x["batch"]) for x in rows} == {(m, b) for m in ("fp32", "gaq_qat") for b in (2, 4)}
    for x in rows:
        assert math.isclose(x["steps_per_s"], x["steps"] / x["epoch_time_s"], rel_tol=1e-9)
        assert math.isclose(x["seconds_per_950_frames"], 950 / x["frames_per_s"], rel_tol=1e-9)
    run = r["run"]
    assert run["complete"] and run["epochs_done"] == run["epochs_planned"] == 2, run
    assert [h["epoch"] for h in run["history"]] == [1, 2]
    assert len(run["calls"]) == 2  # first chunk of one epoch, then an exact resume
    ckpt_path = dry_run.out / "train_checkpoint.pt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["best"]["val_loss"] == run["best"]["val_loss"]
    assert ckpt["quantization"]["method"] == "gaq"
    model = load_model(ckpt_path)
    b = collate(load_dataset("ethanol-gfn2-500K"), [0, 1], dtype=next(model.parameters()).dtype)
    out = model(b.z, b.pos, b.batch, num_graphs=b.num_graphs)
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()


def test_dry_run_speed_and_table4(dry_run):
    sp = dry_run.stages["speed"]["results"]
    rows = sp["rows"]
    want = {
        ("peer size", "ours eager"),
        ("peer size", "ours fast path"),
        ("shipped", "FP32 eager"),
        ("shipped", "FP32 fast path"),
        ("shipped", "GAQ W4A8 fake-quant"),
        ("shipped", "GAQ W4A8 integer"),
    }
    for b in (1, 4):
        assert {(r["group"], r["row"]) for r in rows if r["batch"] == b} >= want, rows
    by = {(r["group"], r["row"], r["batch"]): r for r in rows}
    for r in rows:
        assert r["ms"] > 0
        assert math.isclose(r["molecules_per_s"], 1e3 * r["batch"] / r["ms"], rel_tol=1e-9)
        if (r["group"], r["row"]) in want:
            eager = by[(r["group"], "ours eager" if r["group"] == "peer size" else "FP32 eager", r["batch"])]
            assert math.isclose(r["speedup_vs_eager"], eager["ms"] / r["ms"], rel_tol=1e-9)
    assert not any("CUDA graph" in r["row"] for r in rows)  # CUDA only
    compiled = [r for r in rows if r["row"] == "FP32 fast path + torch.compile (dry run: not compiled)"]
    assert [r["batch"] for r in compiled] == [1, 4]
    for r in compiled:
        assert r["forces_rel_error_vs_plain"] < 1e-5 and r["first_call_s"] > 0
        assert math.isclose(
            r["speedup_vs_plain"], by[("shipped", "FP32 fast path", r["batch"])]["ms"] / r["ms"]
        )
    try:
        import so3krates_torch  # noqa: F401
    except ImportError:
        skipped = dry_run.stages["speed"]["skipped"]
        assert any(s["item"] == "peer" and "not importable" in s["reason"] for s in skipped)
    t4 = dry_run.stages["table4"]["results"]
    want = {(b, v) for b in (1, 16) for v in ("fp32", "bf16", "w4a8")}
    assert {(r["batch"], r["variant"]) for r in t4["table"]} >= want
    for r in t4["table"]:
        assert r["total_ms"] > 0
        if r["variant"] == "w4a8":
            assert r["speedup_vs_fp32"] > 0 and r["speedup_vs_bf16"] > 0, r
    assert {(m["batch"], m["variant"]) for m in t4["peak_memory"]} == {
        (b, v) for b in (1, 16) for v in ("fp32", "bf16", "w4a8")
    }
    assert all(m["peak_MiB"] is None and m["weights_bytes"] > 0 for m in t4["peak_memory"])


def _generate_results():
    import importlib

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        return importlib.import_module("generate_results")
    finally:
        sys.path.remove(str(ROOT / "docs"))


def test_results_page_renders_the_dry_run(dry_run, tmp_path):
    gen = _generate_results()
    gpu = tmp_path / "benchmarks" / "results" / "gpu"
    gpu.mkdir(parents=True)
    for p in dry_run.out.glob("*.json"):
        shutil.copy(p, gpu / p.name)
    text = gen.gpu_section(tmp_path)
    assert text.startswith("## GPU")
    assert dry_run.suite["device"]["name"] in text and dry_run.suite["started"] in text
    assert "dry run at toy sizes" in text and "not measured yet" not in text
    for stage in gpu_suite.STAGES:
        assert f"### {stage}" in text, stage
        for g in dry_run.stages[stage]["goals"]:
            assert g["name"] in text, g
    for row in dry_run.stages["lookup"]["results"]["rows"]:
        assert gen.format_value(row["index"]["qps"]) in text
    for row in dry_run.stages["md"]["results"]["rows"]:
        assert gen.format_value(row["steps_per_s"]) in text
    assert "{" not in text.split("### Goals")[1], "a dict leaked into a table"
    page = gen.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    assert text in page


def test_results_page_without_gpu_results_says_not_measured_yet(tmp_path):
    gen = _generate_results()
    text = gen.gpu_section(tmp_path)
    assert "not measured yet" in text and "benchmarks/gpu_suite.py" in text
    page = gen.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    assert "## GPU" in page and "not measured yet" in page


def _norm(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def test_device_command_is_stated_identically_in_the_docstring_and_the_docs(tmp_path):
    doc = _norm(gpu_suite.__doc__)
    assert _norm(gpu_suite.DEVICE_RUN["command"]) in doc
    assert _norm(gpu_suite.WHEELS_DOWNLOAD) in doc
    assert 'carry: [".whl"]' in doc and "timeout_s: 600" in doc
    assert len(gpu_suite.DEVICE_RUN["command"]) <= 2000  # the device tool's limit
    text = _generate_results().gpu_section(tmp_path)
    assert gpu_suite.DEVICE_RUN["command"] in text and gpu_suite.WHEELS_DOWNLOAD in text
    for w in gpu_suite.WHEELS:
        assert w in doc


def test_results_page_survives_broken_gpu_files(tmp_path):
    gen = _generate_results()
    gpu = tmp_path / "benchmarks" / "results" / "gpu"
    gpu.mkdir(parents=True)
    (gpu / "suite.json").write_text(
        json.dumps(
            {
                "device": {"name": "NVIDIA H200"},
                "started": "2026-12-05",
                "stages": {"lookup": {"status": "timeout"}},
            }
        )
    )
    (gpu / "lookup.json").write_text("{not json")
    (gpu / "md.json").write_text(json.dumps({"status": "ok", "results": {"rows": "oops"}, "goals": [{}]}))
    text = gen.gpu_section(tmp_path)
    assert "NVIDIA H200" in text and "timeout" in text and "could not be read" in text
    (gpu / "suite.json").write_text("[1, 2")
    assert "could not be read" in gen.gpu_section(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# time and failure handling (fast, in this process)
# ----------------------------------------------------------------------------------------------------------
def _record(tmp_path, seconds=100.0, tiny=False):
    budget = gpu_suite.Budget(seconds)
    return gpu_suite.Record("lookup", tmp_path, "cpu", tiny, budget)


def test_record_catches_a_failing_item_and_keeps_the_others(tmp_path):
    rec = _record(tmp_path)
    with rec.item("good"):
        rec.result("a", 1.0)
    with rec.item("bad"):
        raise RuntimeError("boom")
    rec.finish()
    d = json.loads((tmp_path / "lookup.json").read_text())
    assert d["status"] == "partial" and d["results"] == {"a": 1.0}
    assert d["errors"][0]["item"] == "bad" and "RuntimeError: boom" in d["errors"][0]["error"]


def test_record_failed_when_nothing_measured_and_ok_when_clean(tmp_path):
    rec = _record(tmp_path)
    with rec.item("bad"):
        raise ValueError("x")
    rec.finish()
    assert rec.data["status"] == "failed"
    (tmp_path / "b").mkdir()
    rec2 = _record(tmp_path / "b")
    rec2.result("x", [1, 2])
    rec2.finish()
    assert rec2.data["status"] == "ok"


def test_fits_records_a_time_skip(tmp_path):
    rec = _record(tmp_path, seconds=gpu_suite.RESERVE_S + 1.0)
    assert rec.fits("small", 0.0)
    assert not rec.fits("big", 60.0)
    assert rec.data["skipped"][0]["item"] == "big" and rec.data["skipped"][0]["reason"].startswith("time:")
    rec.finish()
    assert rec.data["status"] == "partial"


def test_goal_met_is_null_in_tiny_runs_and_when_unmeasured(tmp_path):
    rec = _record(tmp_path)
    rec.goal("g", 3.0, ">= 2", True)
    rec.goal("h", None, ">= 2", False)
    assert [g["met"] for g in rec.data["goals"]] == [True, None]
    tiny = _record(tmp_path, tiny=True)
    tiny.goal("g", 3.0, ">= 2", True)
    assert tiny.data["goals"][0]["met"] is None


def test_json_is_strict(tmp_path):
    rec = _record(tmp_path)
    rec.result("nan", [float("nan"), float("inf"), 1.5, np.float32(2.0), (1, 2)])
    text = (tmp_path / "lookup.json").read_text()
    assert json.loads(text)["results"]["nan"] == [None, None, 1.5, 2.0, [1, 2]]
    assert "NaN" not in text and "Infinity" not in text


def test_leftover_temporary_files_are_removed(tmp_path):
    names = [
        ".md.json.123.ab_cd123.tmp",
        ".train_checkpoint.pt.tmp",
        "md.json",
        "other.tmp",
        ".x.json.1.abcdefgh.tmp",
    ]
    for n in names:
        (tmp_path / n).write_text("")
    gpu_suite._remove_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.json.1.abcdefgh.tmp", "md.json", "other.tmp"]


def test_train_run_stops_after_a_failing_chunk(tmp_path, monkeypatch):
    calls = []

    def failing_train(cfg, resume=False):
        calls.append(resume)
        raise RuntimeError("boom")

    load_config, train_config, _ = gpu_suite._train_api()
    monkeypatch.setattr(gpu_suite, "_train_api", lambda: (load_config, train_config, failing_train))
    rec = _record(tmp_path, seconds=600.0, tiny=True)
    ctx = gpu_suite.Ctx("train", torch.device("cpu"), True, rec.budget, rec, tmp_path, tmp_path)
    gpu_suite._train_run(ctx)
    assert calls == [False]  # one attempt, not a retry loop until the time runs out
    assert [e["item"] for e in rec.data["errors"]] == ["run epochs 1..1"]
    assert rec.data["results"]["run"]["complete"] is False and rec.data["results"]["run"]["epochs_done"] == 0


def test_cuda_apis_the_suite_calls_exist():
    """The CUDA-only code paths cannot run here; at least every torch API they call must exist."""
    import torch.distributed as dist

    names = (
        "graph CUDAGraph Stream stream current_stream synchronize set_device reset_peak_memory_stats "
        "max_memory_allocated get_device_properties get_device_name empty_cache Event is_available"
    )
    for name in names.split():
        assert callable(getattr(torch.cuda, name, None)), f"torch.cuda.{name}"
    assert hasattr(torch.version, "cuda")
    assert callable(dist.is_nccl_available) and callable(torch.nn.parallel.DistributedDataParallel)
    assert torch.Generator(device="cpu").manual_seed(0).device.type == "cpu"  # the keyword the suite uses


def test_run_group_kills_a_hanging_process_group():
    cmd = [
        sys.executable,
        "-c",
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)",
    ]
    t0 = time.perf_counter()
    rc, _ = gpu_suite._run_group(cmd, env=dict(os.environ), cwd=ROOT, timeout=1.0)
    assert rc is None
    assert time.perf_counter() - t0 < 20


class _Mark:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Item:
    def __init__(self, nodeid, gpu=False, skipif=()):
        self.nodeid, self._gpu, self._skipif = nodeid, gpu, list(skipif)

    def get_closest_marker(self, name):
        return _Mark() if name == "gpu" and self._gpu else None

    def iter_markers(self, name):
        return iter(self._skipif if name == "skipif" else [])


@pytest.mark.parametrize(
    ("item", "selected"),
    [
        (_Item("tests/test_x.py::test_a", gpu=True), True),
        (_Item("tests/test_x.py::test_b", skipif=[_Mark(True, reason="needs CUDA")]), True),
        (_Item("tests/test_x.py::test_c", skipif=[_Mark("not torch.cuda.is_available()")]), True),
        (_Item("tests/test_x.py::test_d[cuda-float32]"), True),
        (_Item("tests/test_x.py::test_e", skipif=[_Mark(True, reason="needs xtb")]), False),
        (_Item("tests/test_gpu_suite.py::test_plain"), False),
        (_Item("tests/test_x.py::test_cuda_in_the_name_only[cpu]"), False),
        (_Item("tests/test_x.py::test_f[device-cuda-absent]"), True),
    ],
)
def test_selection_of_cuda_tests(item, selected):
    assert gpu_suite._needs_cuda(item) is selected


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert gpu_suite.main(["--out", str(tmp_path), "--stages", "lookup,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --stages") and "nope" in err[0]
    assert gpu_suite.main(["--out", str(tmp_path), "--device", "gpu"]) == 2
    assert capsys.readouterr().err.startswith("error: --device")
    assert gpu_suite.main(["--out", str(tmp_path), "--total-budget", "nan"]) == 2
    assert capsys.readouterr().err.startswith("error: --total-budget")
    for bad in ("train", "nope=5", "md=-1", "md=x"):
        assert gpu_suite.main(["--out", str(tmp_path), "--limit", bad]) == 2
        assert capsys.readouterr().err.startswith("error: --limit")
    f = tmp_path / "file"
    f.write_text("")
    assert gpu_suite.main(["--out", str(f)]) == 2
    assert not list(tmp_path.glob("*.json"))


def test_limit_overrides_a_stage_limit(tmp_path, monkeypatch):
    limits = {}

    def fake_child(stage, out, device, tiny, seconds):
        limits[stage] = seconds
        return {"status": "ok", "goals": [], "skipped": [], "errors": []}

    monkeypatch.setattr(gpu_suite, "_run_child", fake_child)
    argv = ["--out", str(tmp_path), "--stages", "md,train", "--device", "cpu", "--tiny", "--limit", "md=33"]
    assert gpu_suite.main(argv) == 0
    assert limits["md"] == 33.0 and limits["train"] > 33.0


def test_stages_left_without_time_are_recorded_not_run(tmp_path):
    rc = gpu_suite.main(
        [
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--tiny",
            "--stages",
            "md,train",
            "--total-budget",
            "5",
            "--in-process",
        ]
    )
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert rc == 1
    assert {s: d["status"] for s, d in suite["stages"].items()} == {"md": "not_run", "train": "not_run"}
    assert suite["stages"]["md"]["reason"].startswith("time:")


def test_out_is_resolved_before_the_stages_run(tmp_path, monkeypatch):
    seen = []

    def fake_child(stage, out, device, tiny, seconds):  # the stages run in the repository root
        seen.append(out)
        return {"status": "ok", "goals": [], "skipped": [], "errors": []}

    monkeypatch.setattr(gpu_suite, "_run_child", fake_child)
    monkeypatch.chdir(tmp_path)
    assert gpu_suite.main(["--out", "rel", "--stages", "md", "--device", "cpu", "--tiny"]) == 0
    assert seen == [(tmp_path / "rel").resolve()]
    assert json.loads((tmp_path / "rel" / "suite.json").read_text())["stages"]["md"]["status"] == "ok"


@pytest.mark.skipif(CUDA, reason="checks the failure path of a CPU-only machine")
def test_cuda_requested_without_cuda_is_a_user_error(tmp_path, capsys):
    assert gpu_suite.main(["--out", str(tmp_path / "out"), "--stages", "lookup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda") and "--device cpu --tiny" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(CUDA, reason="checks the failure path of a CPU-only machine")
def test_a_failing_stage_process_is_recorded_as_failed(tmp_path):
    # the stage process itself finds no CUDA: its JSON says why, the parent marks the stage failed
    d = gpu_suite._run_child("lookup", tmp_path, "cuda", False, 120.0)
    assert d["status"] == "failed"
    assert any("cuda" in e["error"].lower() for e in d["errors"]), d["errors"]
    assert any("exited with code 1" in e["error"] for e in d["errors"]), d["errors"]
    assert json.loads((tmp_path / "lookup.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------------------------------------
# on a GPU (the suite's tests stage selects these)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_lookup_stage_on_cuda_is_exact(tmp_path):
    d = gpu_suite.run_stage("lookup", tmp_path, "cuda", True, 120.0)
    assert d["status"] == "ok", d["errors"]
    for row in d["results"]["rows"]:
        assert row["index"]["exact"] and row["codebook_nearest"]["exact"], row
    assert d["device"]["name"] == torch.cuda.get_device_name()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_md_on_cuda_matches_cpu():
    from spherequant.models.checkpoints import load_model
    from spherequant.models.md import run_md

    _, _, z, pos = gpu_suite._md_inputs()
    res = {}
    for dev in ("cpu", "cuda"):
        model = load_model(gpu_suite.SHIPPED_FP32, device=dev, dtype=torch.float64)
        res[dev] = run_md(model, z, pos, n_steps=20, replicas=2, device=dev, dtype="float64", seed=0)
    err = np.abs(res["cuda"].positions - res["cpu"].positions).max()
    assert err < 1e-8, f"max position difference after 20 steps: {err:.3e} Angstrom"


_DDP_CHECK = """
import copy, sys
import torch
import torch.distributed as dist
from spherequant.models.data import collate, load_dataset
from spherequant.models.so3krates import So3krates

store, backend, device = sys.argv[1:4]
dist.init_process_group(backend, init_method="file://" + store, rank=0, world_size=1)
try:
    torch.manual_seed(0)
    model = So3krates(num_features=16, num_layers=1, num_heads=2, degrees=(1,), num_rbf=8).to(device).double()
    plain = copy.deepcopy(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
    b = collate(load_dataset("ethanol-gfn2-500K"), [0, 1, 2], device=device, dtype=torch.float64)
    for net in (ddp, plain):
        out = net(b.z, b.pos, b.batch, num_graphs=b.num_graphs)
        loss = ((out["energy"] - b.energy) ** 2).mean() + ((out["forces"] - b.forces) ** 2).mean()
        loss.backward()
    worst, where, n = 0.0, None, 0
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        n += 1
        rel = float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-300))
        if rel > worst:
            worst, where = rel, name
    print(f"{n} gradients compared; worst relative difference {worst:.3e} in {where}")
    assert n > 0 and worst <= 1e-10, (worst, where)
finally:
    dist.destroy_process_group()
"""


def _ddp_check(tmp_path, backend: str, device: str) -> None:
    # in its own process with a time limit: a hanging set-up must not stop the other GPU tests
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", _DDP_CHECK, str(tmp_path / "store"), backend, device]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "worst relative difference" in proc.stdout


def test_ddp_gloo_on_the_cpu_gives_the_plain_gradients(tmp_path):
    """The CPU twin of the NCCL check below (same script), so the GPU run cannot fail on the script."""
    _ddp_check(tmp_path, "gloo", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_ddp_nccl_on_one_gpu_gives_the_plain_gradients(tmp_path):
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("torch built without NCCL")
    _ddp_check(tmp_path, "nccl", "cuda")
