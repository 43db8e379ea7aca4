"""Quantization-aware training wired into training, checkpoints, the loader, the calculator and MD.

Tiny QAT runs (GAQ and each baseline) on the synthetic Morse data (``_helpers.morse_dataset``), finetuned
from a tiny FP32 checkpoint: finite losses, reload gives identical predictions (prepared and converted), the
ASE calculator and ``spherequant md`` load the quantized checkpoint, exact resume of a QAT run, config errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import CONFIG_DIR, GAQ_OPTIONS, qat_config, tiny_config
from ase import Atoms
from spherequant.models import checkpoints, gaq
from spherequant.models.calculator import SphereQuantCalculator
from spherequant.models.checkpoints import read_checkpoint
from spherequant.models.md_cli import load_md_model as md_load_model
from spherequant.models.md_cli import main as md_main
from spherequant.models.train import TrainConfig, export_model, load_config, train


@pytest.fixture(scope="module")
def fp32_checkpoint(tmp_path_factory, dataset):
    """A tiny FP32 model trained for 2 epochs (degrees [1, 2]) and exported like the shipped one."""
    tmp = tmp_path_factory.mktemp("fp32")
    cfg = tiny_config(tmp, epochs=2, evaluate_test=False)
    train(cfg, dataset=dataset)
    return export_model(Path(cfg.output_dir) / "best.pt", tmp / "fp32.pt")


def frame_inputs(dataset, i=0):
    f = dataset[i]
    return torch.as_tensor(f["numbers"]), torch.as_tensor(f["positions"])


def assert_same_predictions(m1, m2, dataset, frames=(0, 5, 11)):
    for i in frames:
        z, pos = frame_inputs(dataset, i)
        a, b = m1(z, pos), m2(z, pos)
        for key in ("energy", "forces"):
            err = (a[key] - b[key]).abs().max().item()
            assert err == 0.0, f"frame {i}: {key} differs by {err:.3e} after reload"


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("method", ["gaq", "svq_kmeans", "degree_quant", "lsq", "qdrop", "naive_int8"])
def test_tiny_qat_run_reload_and_calculator(tmp_path, dataset, fp32_checkpoint, method):
    cfg = qat_config(tmp_path, fp32_checkpoint, method)
    result = train(cfg, dataset=dataset)
    out = Path(cfg.output_dir)
    hist = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == ([0] if method == "naive_int8" else [1, 2])
    for h in hist:
        assert np.isfinite(h["val_loss"]) and np.isfinite(h["val_forces_mae"]), h
        if method != "naive_int8":
            assert np.isfinite(h["train_loss"]) and h["train_loss"] > 0, h
    if method == "gaq":  # staged warm-up: equivariant branch off in epoch 1, on in epoch 2; LEE term > 0
        assert [h["quant_equivariant"] for h in hist] == [False, True]
        assert all(h["train_lee"] > 0 for h in hist), hist
        best = read_checkpoint(out / "best.pt")
        assert best["epoch"] == 2 and best["best"]["quant_equivariant"], "a warm-up epoch was kept as best"
    ckpt = read_checkpoint(out / "last.pt")
    q = ckpt["quantization"]
    assert q["method"] == method and q["step"] == "prepared"
    assert ckpt["train_config"]["quantization"]["method"] == method
    if method == "gaq":
        assert ckpt["model_config"]["attention"] == "cosine" and q["config"]["codebook_size"] == 64
    assert json.loads((out / "test_metrics.json").read_text())["forces_mae"] == result["test"]["forces_mae"]

    # reload: the EMA model built by the loader predicts exactly what the training run validated with
    model = checkpoints.load_model(out / "last.pt")
    assert gaq.quantization_spec(model).method == method
    # the spec travelled unchanged: config section -> quantize_ -> checkpoint -> loader
    assert gaq.quantization_spec(model) == cfg.quantization_spec, (gaq.quantization_spec(model), cfg)
    assert gaq.quantization_spec(model).schedule.calibration_batches == 3
    assert not model.training
    val_idx = np.load(out / "split" / "val.npy")
    ref = read_checkpoint(out / "best.pt")["best"] if method == "naive_int8" else hist[-1]
    from spherequant.models.train import error_metrics

    again = error_metrics(model, dataset, val_idx, batch_size=8)
    assert again["forces_mae"] == pytest.approx(ref["val_forces_mae"], rel=1e-12), (again, ref)
    assert (
        checkpoints.load_model(out / "last.pt", use_ema=False).state_dict().keys()
        == model.state_dict().keys()
    )

    # exported prepared and converted checkpoints reload to the same predictions
    small = export_model(out / "last.pt", tmp_path / "q.pt")
    assert_same_predictions(model, checkpoints.load_model(small), dataset)
    conv = export_model(out / "last.pt", tmp_path / "qc.pt", convert=True)
    conv_model = checkpoints.load_model(conv)
    assert read_checkpoint(conv)["quantization"]["step"] == "converted"
    assert not any(n.endswith("weight") for n, _ in conv_model.named_parameters())
    gaq.quantize_(model, gaq.QuantizationSpec.from_checkpoint(ckpt["quantization"]), step="convert")
    assert_same_predictions(model, conv_model, dataset)
    assert gaq.model_size_bytes(conv_model) < gaq.model_size_bytes(checkpoints.load_model(fp32_checkpoint))

    # ASE calculator and MD loader use the same loader
    z, pos = frame_inputs(dataset, 3)
    atoms = Atoms(numbers=z.numpy(), positions=pos.numpy())
    atoms.calc = SphereQuantCalculator.from_checkpoint(conv)
    ref_out = conv_model(z, pos)
    assert atoms.get_potential_energy() == pytest.approx(ref_out["energy"].item(), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), ref_out["forces"].detach().numpy(), atol=1e-12)
    md_model = md_load_model(str(conv))
    assert gaq.quantization_state(md_model).force_mode == "smooth"


def test_smooth_forces_of_loaded_model_are_conservative(tmp_path, dataset, fp32_checkpoint):
    """The default MD force mode of a loaded GAQ model: forces equal central differences of its energy."""
    cfg = qat_config(tmp_path, fp32_checkpoint, "gaq", epochs=2)
    train(cfg, dataset=dataset)
    path = Path(cfg.output_dir) / "last.pt"
    model = md_load_model(str(path))
    ste = checkpoints.load_model(path)
    assert gaq.quantization_state(ste).force_mode == "ste"
    z, pos = frame_inputs(dataset, 2)
    forces = model(z, pos)["forces"].detach()
    h, errs = 1e-5, []
    for atom, axis in [(0, 0), (1, 2), (4, 1), (5, 0)]:
        p1, p2 = pos.clone(), pos.clone()
        p1[atom, axis] += h
        p2[atom, axis] -= h
        e1 = model(z, p1, compute_forces=False)["energy"].item()
        e2 = model(z, p2, compute_forces=False)["energy"].item()
        errs.append(abs(-(e1 - e2) / (2 * h) - forces[atom, axis].item()))
    assert max(errs) < 1e-6, f"max |F - F_fd| {max(errs):.3e}"
    assert forces.abs().max() > 1e-4


def test_md_cli_runs_quantized_checkpoint(tmp_path, dataset, fp32_checkpoint, capsys):
    from spherequant.models import data as data_mod

    cfg = qat_config(tmp_path, fp32_checkpoint, "gaq", epochs=1)
    train(cfg, dataset=dataset)
    npz = data_mod.save_npz(dataset, tmp_path / "morse.npz")
    argv = ["--model", str(Path(cfg.output_dir) / "last.pt"), "--dataset", str(npz), "--steps", "10",
            "--timestep", "0.2", "--save-every", "5", "--out", str(tmp_path / "md"), "--no-progress",
            "--device", "cpu"]  # fmt: skip
    assert md_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["force_mode"] == "smooth"
    assert (tmp_path / "md" / "summary.json").is_file()


# ------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("method", ["gaq", "qdrop"])
def test_qat_resume_continues_exactly(tmp_path, dataset, fp32_checkpoint, method):
    """Two epochs in one go equal one epoch + resume (warm-up boundary for GAQ; QDrop's random masks)."""
    kw = dict(evaluate_test=False)
    full = qat_config(tmp_path / "a", fp32_checkpoint, method, epochs=2, **kw)
    train(full, dataset=dataset)
    train(qat_config(tmp_path / "b", fp32_checkpoint, method, epochs=1, **kw), dataset=dataset)
    resumed = qat_config(tmp_path / "b", fp32_checkpoint, method, epochs=2, **kw)
    train(resumed, dataset=dataset, resume=True)
    a = read_checkpoint(Path(full.output_dir) / "last.pt")
    b = read_checkpoint(Path(resumed.output_dir) / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model_state", "ema_state"):
        for name, tensor in a[key].items():
            if not torch.is_tensor(tensor):
                continue
            other = b[key][name]
            diff = (tensor.double() - other.double()).abs().max().item() if tensor.numel() else 0.0
            assert diff == 0.0, f"{key}.{name} differs by {diff:.3e} after resume"
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    # the run did train: weights moved away from the init checkpoint
    init = read_checkpoint(fp32_checkpoint)["model_state"]
    moved = max((a["model_state"][k].double() - v.double()).abs().max().item() for k, v in init.items()
                if k in a["model_state"] and v.is_floating_point() and v.numel())  # fmt: skip
    assert moved > 0


@pytest.mark.slow
def test_qat_ddp_two_processes_gloo(tmp_path, dataset):
    """GAQ QAT (LEE term, warm-up) under torchrun-style DDP on CPU: the two replicas stay identical."""
    from _helpers import ddp_worker, free_port
    from spherequant.models import data as data_mod

    npz = data_mod.save_npz(dataset, tmp_path / "morse.npz")
    model = dict(num_features=8, num_layers=1, num_heads=2, degrees=[1], cutoff=4.0, num_rbf=6, max_z=10)
    quant = {"method": "gaq", "calibration_batches": 2, "options": GAQ_OPTIONS}
    cfg = tiny_config(
        tmp_path, dataset=str(npz), epochs=2, evaluate_test=False, model=model, quantization=quant
    )
    cfg = cfg.to_dict()
    out_file = str(tmp_path / "state")
    torch.multiprocessing.spawn(
        ddp_worker, args=(2, free_port(), cfg, str(npz), out_file), nprocs=2, join=True
    )
    s0, s1 = torch.load(f"{out_file}.0"), torch.load(f"{out_file}.1")
    for name in s0:
        assert torch.equal(s0[name], s1[name]), f"replicas differ in {name}"
    ckpt = read_checkpoint(Path(cfg["output_dir"]) / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["history"][-1]["train_lee"] > 0


# ------------------------------------------------------------------------------------------ config
def test_shipped_qat_configs_validate():
    """The study's configs: GAQ and every QAT baseline finetune the matching FP32 parent with one schedule
    (the paper's: 80 epochs, 10 of them GAQ's warm-up)."""
    gaq_cfg = load_config(CONFIG_DIR / "azobenzene_gaq_w4a8_keep.yaml")
    q = gaq_cfg.quantization
    assert q["method"] == "gaq" and q["init_checkpoint"] == "azobenzene-gfn2-fp32"
    assert q["options"]["warmup_epochs"] == 10 and q["options"]["attention"] == "keep"
    assert q["options"]["weight_bits_equivariant"] == 4 and q["options"]["activation_bits"] == 8
    schedule = ("epochs", "lr", "scheduler", "lr_factor", "batch_size", "energy_weight", "forces_weight")
    ref = {k: getattr(gaq_cfg, k) for k in schedule}
    assert ref["epochs"] == 80
    rows = {name: name for name in ("naive_int8", "svq_kmeans", "degree_quant", "lsq", "qdrop")}
    rows.update(gaq_24bit="gaq", per_axis_int8="gaq")  # the equal-bits pair
    for name, method in rows.items():
        cfg = load_config(CONFIG_DIR / f"azobenzene_{name}.yaml")
        assert cfg.quantization["method"] == method
        assert cfg.quantization["init_checkpoint"] == "azobenzene-gfn2-fp32"
        if method != "naive_int8":  # post-training: no schedule
            got = {k: getattr(cfg, k) for k in schedule}
            assert got == ref, (method, got, ref)
    control = load_config(CONFIG_DIR / "azobenzene_fp32_finetune.yaml")
    assert control.quantization is None and control.init_checkpoint == "azobenzene-gfn2-fp32"
    assert {k: getattr(control, k) for k in schedule} == ref
    cosine = load_config(CONFIG_DIR / "azobenzene_gaq_w4a8.yaml")
    assert cosine.quantization["options"]["attention"] == "cosine"
    assert cosine.quantization["init_checkpoint"] == "azobenzene-gfn2-fp32-cosine"  # the paper's recipe
    assert {k: getattr(cosine, k) for k in schedule} == ref
    assert load_config(CONFIG_DIR / "tiny_qat_test.yaml").quantization["method"] == "gaq"


@pytest.mark.parametrize(
    ("quant", "extra", "exc", "word"),
    [
        ([1], {}, TypeError, "quantization"),
        ({"method": "int4"}, {}, ValueError, "quantization.method"),
        ({"method": "gaq", "bits": 4}, {}, ValueError, "unknown key"),
        ({"method": "gaq", "calibration_batches": 0}, {}, ValueError, "calibration_batches"),
        ({"method": "gaq", "calibration_batches": 2.0}, {}, TypeError, "calibration_batches"),
        ({"method": "gaq", "init_checkpoint": 3}, {}, TypeError, "init_checkpoint"),
        ({"method": "gaq", "options": {"codebok": "x"}}, {}, ValueError, "codebok"),
        (
            {"method": "gaq", "options": {"weight_bits_equivariant": 1}},
            {},
            ValueError,
            "weight_bits_equivariant",
        ),
        ({"method": "qdrop", "options": {"p": 2.0}}, {}, ValueError, "quantization.options"),
        ({"method": "lsq", "options": {"lee_weight": 0.1}}, {}, ValueError, "lee_weight"),
        ({"method": "svq_kmeans", "options": {"codebook_size": 0}}, {}, ValueError, "codebook_size"),
        ({"method": "naive_int8"}, {"epochs": 3}, ValueError, "naive_int8"),
        ({"method": "gaq", "options": []}, {}, TypeError, "options"),
    ],
)
def test_quantization_config_errors(quant, extra, exc, word):
    with pytest.raises(exc, match=word):
        TrainConfig.from_dict({"quantization": quant, **extra})


def test_epochs_zero_only_with_quantization():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_dict({"epochs": 0})
    cfg = TrainConfig.from_dict({"epochs": 0, "quantization": {"method": "svq_kmeans"}})
    assert cfg.quantization == {
        "method": "svq_kmeans",
        "init_checkpoint": None,
        "calibration_batches": 16,
        "options": {},
    }


def test_init_checkpoint_errors(tmp_path, dataset, fp32_checkpoint):
    with pytest.raises(FileNotFoundError, match="init_checkpoint"):
        train(qat_config(tmp_path, tmp_path / "missing.pt", "gaq"), dataset=dataset)
    with pytest.raises(ValueError, match=r"model\.num_features"):
        train(qat_config(tmp_path, fp32_checkpoint, "gaq", model={"num_features": 16}), dataset=dataset)
    cfg = qat_config(tmp_path / "q", fp32_checkpoint, "lsq", epochs=1, evaluate_test=False)
    train(cfg, dataset=dataset)
    with pytest.raises(ValueError, match="FP32"):
        train(qat_config(tmp_path / "r", Path(cfg.output_dir) / "last.pt", "gaq"), dataset=dataset)
    with pytest.raises(ValueError, match="FP32"):
        export_model(fp32_checkpoint, tmp_path / "x.pt", convert=True)
    with pytest.raises(ValueError, match="quantized checkpoints only"):
        checkpoints.load_model(fp32_checkpoint, force_mode="smooth")
    with pytest.raises(FileNotFoundError, match="pretrained"):
        checkpoints.load_model(tmp_path / "nope.pt")


def test_fp32_checkpoint_loads_unchanged(dataset, fp32_checkpoint):
    """The single loader returns the plain FP32 model for an FP32 checkpoint (as model_from_checkpoint)."""
    from spherequant.models.so3krates import model_from_checkpoint

    a = checkpoints.load_model(fp32_checkpoint)
    b = model_from_checkpoint(fp32_checkpoint)
    assert gaq.quantization_state(a) is None and gaq.quantization_spec(a) is None
    assert_same_predictions(a, b, dataset)
    assert checkpoints.load_model(fp32_checkpoint, dtype=torch.float32).dtype == torch.float32


# ------------------------------------------------------------------------------------------ CLI
def test_cli_qat_init_checkpoint_and_export(tmp_path, dataset, fp32_checkpoint, capsys):
    from spherequant.models import data as data_mod
    from spherequant.models.train_cli import main as train_main

    npz = data_mod.save_npz(dataset, tmp_path / "morse.npz")
    values = qat_config(tmp_path, tmp_path / "not-used.pt", "gaq", epochs=2, dataset=str(npz)).to_dict()
    path = tmp_path / "qat.yaml"
    import yaml

    path.write_text(yaml.safe_dump(values))
    out = tmp_path / "exported.pt"
    argv = [str(path), "--init-checkpoint", str(fp32_checkpoint), "--export", str(out), "--convert"]
    assert train_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["exported"] == str(out)
    stored = read_checkpoint(out)
    assert stored["quantization"]["step"] == "converted"
    assert stored["train_config"]["quantization"]["init_checkpoint"] == str(fp32_checkpoint)
    assert type(checkpoints.load_model(out).layers[0].chi_quant).__name__ == "VectorFeatureQuantizer"
    # the shipped tiny QAT config runs as is (fresh tiny model, degree-1 features)
    tiny = ["--dataset", str(npz), "--output-dir", str(tmp_path / "tiny"), "--no-progress"]
    assert train_main([str(CONFIG_DIR / "tiny_qat_test.yaml"), *tiny]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["epoch"] == 2  # epoch 1 is the warm-up
    # usage errors exit with status 2 and name the option
    fp32_yaml = tmp_path / "fp32.yaml"
    fp32_yaml.write_text(yaml.safe_dump({k: v for k, v in values.items() if k != "quantization"}))
    assert train_main([str(fp32_yaml), "--init-checkpoint", "x"]) == 2
    assert "--init-checkpoint" in capsys.readouterr().err
    assert train_main([str(path), "--convert"]) == 2
    assert "--export" in capsys.readouterr().err
