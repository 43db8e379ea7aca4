"""Command-line user errors (issue 13): exit status 2, exactly one ``error:`` line on stderr, no traceback.

Most rows call :func:`spherequant.models.cli.main` in process (each real start of the CLI costs 1-2 s of
imports); a few real subprocesses, started together, prove the exit status reaches the shell. Rows cover the
``data``, ``evaluate``, ``md`` and ``demo`` subcommands with missing, corrupt, malicious, zero-frame and
non-finite files, unknown names, bad numbers and unavailable devices. The ``train`` command has its own
table (tests of ``train_cli``).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from spherequant.models.cli import main

HAS_CUDA = torch.cuda.is_available()


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of ``spherequant ARGV`` run in process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as err:  # argparse usage errors
        code = err.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code, out, err, word, usage=False):
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert code == 2, f"exit status {code}, stderr {err!r}"
    assert "Traceback" not in err, err
    assert len(errors) == 1, f"expected one error: line, got {lines}"
    if usage:  # argparse: usage lines, then "spherequant ...: error: ..." last
        assert lines[-1] == errors[0] and lines[0].startswith("usage:"), lines
    else:
        assert lines == errors and lines[0].startswith("error: "), lines
    assert re.search(word, errors[0]), f"{word!r} not in {errors[0]!r}"
    assert "error:" not in out, out


def _rows(f, tmp):
    """(argv, pattern the error line must match, argparse usage error?)."""
    good, npz = f["good_pt"], f["good_npz"]
    nocfg = tmp / "nocfg.pt"
    raw = torch.load(good, weights_only=True)
    raw.pop("train_config")
    torch.save(raw, nocfg)
    no_gpu = ["--device", "cuda:99" if HAS_CUDA else "cuda"]
    md = ["md", "--out", tmp / "md"]
    rows = [
        # evaluate
        (["evaluate", tmp / "missing.pt"], "missing.pt.*does not exist", False),
        (["evaluate", f["garbage_pt"]], "garbage.pt", False),
        (["evaluate", f["truncated_pt"]], "truncated.pt.*not a readable PyTorch checkpoint", False),
        (["evaluate", f["empty_pt"]], "empty.pt.*empty file", False),
        (["evaluate", f["malicious_pt"]], "malicious.pt.*cannot be loaded safely", False),
        (["evaluate", f["malicious_pickle"]], "malicious_legacy.pt.*cannot be loaded safely", False),
        (["evaluate", f["nan_pt"]], "nan_weights.pt.*non-finite", False),
        (["evaluate", f["inf_pt"]], "inf_weights.pt.*non-finite", False),
        (["evaluate", f["list_pt"]], "list.pt.*not a checkpoint dict", False),
        (["evaluate", nocfg], "no training configuration", False),
        (["evaluate", good, "--rotations", "0"], "--rotations must be >= 1", False),
        (["evaluate", good, "--lee-frames", "0"], "--lee-frames must be >= 1", False),
        (["evaluate", good, "--max-test-frames", "-1"], "--max-test-frames must be >= 1", False),
        (["evaluate", good, "--device", "tpu"], "--device", False),
        (["evaluate", good, *no_gpu], "--device", False),
        (["evaluate"], "give either a checkpoint or --table", False),
        (["evaluate", good, "--table", "quantization"], "exactly one", False),
        (["evaluate", "--table", "quantization", "--naive-int8"], "--naive-int8", False),
        (
            ["evaluate", "--table", "quantization", "--row", "nameonly"],
            "--row must be NAME=CHECKPOINT",
            False,
        ),
        (["evaluate", "--table", "ablations", "--md-steps", "-1"], "--md-steps", False),
        (["evaluate", good, "--rotations", "abc"], "--rotations.*invalid int", True),
        (["evaluate", "--table", "bogus"], "--table.*invalid choice", True),
        # md
        ([*md, "--model", tmp / "missing.pt", "--dataset", npz], "neither a checkpoint file nor", False),
        ([*md, "--model", f["garbage_pt"], "--dataset", npz], "garbage.pt", False),
        ([*md, "--model", f["malicious_pt"], "--dataset", npz], "cannot be loaded safely", False),
        ([*md, "--model", f["nan_pt"], "--dataset", npz], "non-finite", False),
        ([*md, "--model", good, "--dataset", "no-such-set"], "unknown data set name 'no-such-set'", False),
        ([*md, "--model", good, "--dataset", f["crc_npz"]], "crc.npz: key 'coords' is corrupt", False),
        ([*md, "--model", good, "--dataset", f["zero_npz"]], "zero_frames.npz: holds zero frames", False),
        ([*md, "--model", good, "--dataset", npz, "--frame", "99"], "frame 99 out of range", False),
        ([*md, "--model", good, "--dataset", npz, "--device", "tpu"], "--device", False),
        ([*md, "--model", good, "--dataset", npz, *no_gpu], "--device", False),
        (
            [*md, "--model", "azobenzene-gfn2-fp32", "--dataset", "ethanol-gfn2-500K"],
            r"O \(Z=8\).*not trained",
            False,
        ),
        ([*md, "--model", good, "--dataset", npz, "--steps", "-1"], "--steps must be >= 0", False),
        ([*md, "--model", good, "--dataset", npz, "--timestep", "nan"], "--timestep", False),
        ([*md, "--model", good, "--dataset", npz, "--timestep", "0"], "--timestep", False),
        ([*md, "--model", good, "--dataset", npz, "--temperature", "inf"], "--temperature", False),
        ([*md, "--model", good, "--dataset", npz, "--replicas", "0"], "--replicas must be >= 1", False),
        ([*md, "--model", good, "--dataset", npz, "--save-every", "0"], "--save-every", False),
        ([*md, "--model", good, "--dataset", npz, "--ensemble", "npt"], "--ensemble.*invalid choice", True),
        (["md", "--model", good, "--dataset", npz], "--out", True),
        # data
        (["data"], "give a subcommand", False),
        (["data", "info", tmp / "missing.npz"], "neither an existing file nor a shipped data set", False),
        (["data", "info", f["garbage_npz"]], "garbage.npz.*not a readable .npz", False),
        (["data", "info", f["crc_npz"]], "crc.npz: key 'coords' is corrupt", False),
        (["data", "info", f["zero_npz"]], "zero frames", False),
        (["data", "info", f["pickled_npz"]], "pickled", False),
        (["data", "info", f["npy_as_npz"]], "not an .npz archive", False),
        (["data", "info", f["malformed_xyz"]], "malformed.extxyz.*could not be read", False),
        (["data", "info", f["empty_xyz"]], "empty.extxyz.*empty", False),
        (["data", "info", tmp], "is not a file", False),
        (["data", "bogus"], "invalid choice", True),
        (["data", "xtb-md", "--molecule", "not a molecule ((("], "molecule", False),
        (["data", "xtb-md", "--molecule", "ethanol", "--frames", "0"], "--frames must be >= 1", False),
        (["data", "xtb-md", "--molecule", "ethanol", "--temperature", "nan"], "--temperature", False),
        (["data", "xtb-md", "--molecule", "ethanol", "--timestep", "-0.5"], "--timestep", False),
        (["data", "xtb-md", "--molecule", "ethanol", "--workers", "9", "--frames", "2"], "--workers", False),
        (["data", "xtb-md", "--molecule", "ethanol", "--out", tmp], "--out.*is a folder", False),
        (["evaluate", good, "--json", tmp], "--json.*is a folder", False),
        (["evaluate", "--table", "ablations", "--out-dir", f["good_npz"]], "--out-dir.*not a folder", False),
        ([*md, "--model", good, "--dataset", npz, "--out", f["good_npz"]], "--out.*not a folder", False),
        # demo (argument checks run before any work)
        (["demo", "--out", tmp / "demo", "--vectors", "0"], "--vectors must be >= 1", False),
        (["demo", "--out", tmp / "demo", "--test-frames", "0"], "--test-frames must be >= 1", False),
        (["demo", "--out", tmp / "demo", "--lee-frames", "-5"], "--lee-frames must be >= 1", False),
        (["demo", "--out", tmp / "demo", "--voronoi", "bogus:2"], "--voronoi must be KIND", False),
        (["demo", "--out", tmp / "demo", "--voronoi", "icosahedral:x"], "--voronoi", False),
        (["demo", "--out", f["good_npz"]], "--out.*not a folder", False),
        (["demo", "--vectors", "1e5"], "--vectors.*invalid int", True),
        # top level
        (["bogus"], "invalid choice", True),
    ]
    return rows


def test_cli_error_table(files, tmp_path, capsys):
    rows = _rows(files, tmp_path)
    for argv, word, usage in rows:
        code, out, err = run_cli(argv, capsys)
        try:
            assert_one_error(code, out, err, word, usage)
        except AssertionError as exc:
            raise AssertionError(f"spherequant {' '.join(map(str, argv))}: {exc}") from None
    assert not (files["dir"] / "MARKER_torch").exists() and not (files["dir"] / "MARKER_pickle").exists()
    assert not (tmp_path / "demo").exists(), "demo must not start work on bad arguments"
    assert len(rows) >= 65


def _subprocess_rows(cases):
    """Run ``spherequant ARGV`` for every case as real processes started together; check each."""
    cmd = [sys.executable, "-m", "spherequant.models.cli"]
    procs = [
        subprocess.Popen(cmd + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv, _, _ in cases
    ]
    for proc, (argv, word, usage) in zip(procs, cases):
        out, err = proc.communicate(timeout=300)
        try:
            assert_one_error(proc.returncode, out, err, word, usage)
        except AssertionError as exc:
            raise AssertionError(f"spherequant {' '.join(argv)}: {exc}") from None


def test_cli_subprocess_exit_status(files):
    """Real processes: status 2 and one line reach the shell, for our errors and for argparse's."""
    _subprocess_rows(
        [
            (["evaluate", str(files["malicious_pt"])], "cannot be loaded safely", False),
            (["evaluate", "x.pt", "--rotations", "abc"], "invalid int", True),
        ]
    )
    assert not (files["dir"] / "MARKER_torch").exists()


@pytest.mark.slow
def test_cli_subprocess_exit_status_every_command(files, tmp_path):
    md = ["md", "--model", str(files["good_pt"]), "--dataset", str(files["good_npz"]), "--out"]
    _subprocess_rows(
        [
            ([*md, str(tmp_path / "md"), "--device", "tpu"], "--device", False),
            (["data", "info", str(files["crc_npz"])], "corrupt", False),
            (["demo", "--vectors", "0", "--out", str(tmp_path / "demo")], "--vectors", False),
        ]
    )


def test_success_still_exits_zero(capsys):
    code, out, err = run_cli(["data", "list"], capsys)
    assert code == 0 and "azobenzene-gfn2-500K" in out and "error" not in err
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip()
