"""Helpers shared by the models-layer tests: data sets, configs, small models, molecules, bad files.

Test modules import what they need from here (``from _helpers import morse_dataset``; pytest puts ``tests/``
on ``sys.path``); fixtures built from these helpers live in ``conftest.py``. Test modules never import each
other. This module imports the models layer at the top, so ``conftest.py`` imports it only inside fixtures:
the core tests run without the ``models`` extra.
"""

from __future__ import annotations

import os
import pickle
import socket
import zipfile
from pathlib import Path

import numpy as np
import torch
from spherequant.models import data as data_mod
from spherequant.models.so3krates import So3krates
from spherequant.models.train import TrainConfig, export_model, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "models" / "configs"

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
DTYPES = [torch.float64, torch.float32]
# relative tolerance of an optimised path (fast, compiled) against the eager reference
REFERENCE_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# ------------------------------------------------------------------------------------- synthetic data
# a methanol-like molecule (C, O, 4 H; Angstrom): the frame of the Morse data and of the bad-input files
METHANOL_Z = np.array([6, 8, 1, 1, 1, 1])
METHANOL_POS = np.array(
    [
        [0.0, 0.0, 0.0],
        [1.42, 0.0, 0.0],
        [-0.36, 1.03, 0.0],
        [-0.36, -0.51, 0.89],
        [-0.36, -0.51, -0.89],
        [1.74, 0.9, 0.0],
    ]
)


def morse_dataset(n_frames=40, seed=0) -> data_mod.MolecularDataset:
    """Random perturbations of a small molecule (CH3OH-like, 6 atoms) labelled by a Morse pair potential."""
    rng = np.random.default_rng(seed)
    pos = torch.tensor(METHANOL_POS[None] + 0.08 * rng.normal(size=(n_frames, 6, 3)), requires_grad=True)
    r = (pos[:, :, None, :] - pos[:, None, :, :]).norm(dim=-1)
    iu = torch.triu_indices(6, 6, offset=1)
    d = r[:, iu[0], iu[1]]
    energy = (0.2 * (1 - torch.exp(-1.5 * (d - 1.2))) ** 2 - 0.2).sum(-1) - 10.0
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    return data_mod.MolecularDataset(
        METHANOL_Z, pos.detach().numpy(), energy.detach().numpy(), -grad.numpy(), metadata={"source": "morse"}
    )


# ------------------------------------------------------------------------------------- training configs
TINY_MODEL = dict(num_features=8, num_layers=1, num_heads=2, degrees=[1, 2], cutoff=4.0, num_rbf=6, max_z=10)
GAQ_OPTIONS = {"codebook_size": 64, "warmup_epochs": 1, "lee_weight": 0.1}
METHOD_OPTIONS = {
    "gaq": GAQ_OPTIONS,
    "svq_kmeans": {"codebook_size": 8},
    "degree_quant": {"p_max": 0.2},
    "lsq": {},
    "qdrop": {"p": 0.5},
    "naive_int8": {},
}


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    """A float64 CPU training config of :data:`TINY_MODEL` (24 training, 8 validation frames, batches of 4,
    2 epochs) writing to ``tmp_path / "run"``; ``overrides`` replace any key."""
    values = dict(
        dataset="unused",
        output_dir=str(tmp_path / "run"),
        n_train=24,
        n_val=8,
        model=dict(TINY_MODEL),
        dtype="float64",
        epochs=2,
        batch_size=4,
        val_batch_size=8,
        lr=3e-3,
        scheduler="exponential",
        lr_factor=0.9,
        ema_decay=0.9,
        device="cpu",
        progress=False,
        plot=False,
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


def qat_config(tmp_path, init, method, epochs=2, **overrides) -> TrainConfig:
    """:func:`tiny_config` finetuning checkpoint ``init`` with quantization ``method`` (options
    :data:`METHOD_OPTIONS`, 3 calibration batches; ``naive_int8`` is PTQ: 0 epochs)."""
    q = {"method": method, "init_checkpoint": str(init), "calibration_batches": 3}
    q["options"] = dict(METHOD_OPTIONS[method])
    values = dict(quantization=q, epochs=0 if method == "naive_int8" else epochs, model={})
    values.update(overrides)
    return tiny_config(tmp_path, **values)


def tiny_gaq_run(
    tmp: Path, n_frames: int = 40, fp32_epochs: int = 1
) -> tuple[Path, Path, data_mod.MolecularDataset]:
    """A tiny FP32 run on a Morse data set written to ``tmp / "morse.npz"``, exported, and a 2-epoch GAQ
    finetune of it: ``(fp32 checkpoint, GAQ best.pt, the data set)``."""
    torch.set_num_threads(1)
    path = tmp / "morse.npz"
    ds = morse_dataset(n_frames=n_frames)
    data_mod.save_npz(ds, path)
    cfg = tiny_config(tmp / "fp32", dataset=str(path), epochs=fp32_epochs, evaluate_test=False)
    train(cfg)
    fp32 = export_model(Path(cfg.output_dir) / "best.pt", tmp / "fp32.pt")
    qcfg = qat_config(tmp / "gaq", fp32, "gaq", epochs=2, dataset=str(path), evaluate_test=False)
    train(qcfg)
    return fp32, Path(qcfg.output_dir) / "best.pt", ds


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a DDP rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank, world, port, cfg_dict, npz, out_file):
    """One torchrun-style DDP process (``torch.multiprocessing.spawn`` target): trains ``cfg_dict`` and saves
    its model's tensors to ``{out_file}.{rank}``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    result = train(cfg_dict)
    state = result["model"].state_dict()  # quantized models also hold non-tensor extra state
    torch.save({k: v.detach().cpu() for k, v in state.items() if torch.is_tensor(v)}, f"{out_file}.{rank}")


# ------------------------------------------------------------------------------------- small models
def small_model(dtype=torch.float64, degrees=(1,), seed=0, **kw) -> So3krates:
    """The small So3krates the GAQ, baseline and deploy tests quantize (16 features, 2 layers, 2 heads, 8
    radial functions, elements up to Z = 10, default cutoff), initialised with ``torch.manual_seed(seed)``;
    ``kw`` replace any of these."""
    torch.manual_seed(seed)
    cfg = dict(num_features=16, num_layers=2, num_heads=2, degrees=degrees, num_rbf=8, max_z=10)
    cfg.update(kw)
    return So3krates(**cfg).to(dtype)


def shifted_model(dtype=torch.float64, seed=0, **kw) -> So3krates:
    """Like :func:`small_model` with a 4 Angstrom cutoff and random per-element energy shifts (scale 0.7), so
    energies are not zero-centred (the fast-path and compiled-training tests)."""
    torch.manual_seed(seed)
    cfg = dict(num_features=16, num_layers=2, num_heads=2, degrees=(1,), num_rbf=8, max_z=10, cutoff=4.0)
    cfg.update(kw)
    model = So3krates(**cfg).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    model.set_energy_statistics(torch.randn(cfg["max_z"] + 1, generator=g, dtype=torch.float64) * 3, 0.7)
    return model


# ------------------------------------------------------------------------------------- random molecules
MOLECULE_Z = (6, 8, 1, 1, 6, 1, 7, 1, 8, 6, 1, 1)


def random_molecule(n, seed, dtype=torch.float64, spread=1.3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, pos)`` of ``n`` atoms (elements ``MOLECULE_Z[:n]``): Gaussian positions of standard deviation
    ``spread`` (Angstrom) drawn in float64 from ``seed`` until all atoms are more than 0.7 Angstrom apart."""
    g = torch.Generator().manual_seed(seed)
    z = torch.tensor(MOLECULE_Z[:n])
    while True:
        pos = torch.randn(n, 3, generator=g, dtype=torch.float64) * spread
        if n < 2 or torch.pdist(pos).min() > 0.7:
            return z, pos.to(dtype)


def molecule(seed, dtype=torch.float64, n=6, spread=1.2) -> dict[str, torch.Tensor]:
    """:func:`random_molecule` as ``{"z", "pos"}`` (the format of ``gaq.calibrate_``), spread 1.2 Angstrom."""
    z, pos = random_molecule(n, seed, dtype, spread)
    return {"z": z, "pos": pos}


def calibration_molecules(dtype=torch.float64, k=4, spread=1.2) -> list[dict[str, torch.Tensor]]:
    """The ``k`` calibration molecules ``molecule(100 + s)``, ``s < k``."""
    return [molecule(100 + s, dtype, spread=spread) for s in range(k)]


def batch_of(sizes, seed=0, dtype=torch.float64):
    """``(z, pos, batch)`` of molecules of the given sizes (:func:`random_molecule`, seeds ``seed + k``)."""
    mols = [random_molecule(n, seed + k, dtype) for k, n in enumerate(sizes)]
    z = torch.cat([m[0] for m in mols])
    pos = torch.cat([m[1] for m in mols])
    b = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)])
    return z, pos, b


# ------------------------------------------------------------------------------------- comparisons
def rel_err(a, b):
    """Largest ``|a - b|`` relative to the largest ``|b|`` (0 for empty tensors)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / max(scale, 1e-300) if a.numel() else 0.0


def assert_close(name, a, b, tol):
    """Assert ``rel_err(a, b) <= tol``; the message shows the relative error and the worst difference."""
    err = rel_err(a, b)
    assert err <= tol, (
        f"{name}: relative error {err:.3e} > {tol:.0e} (worst |diff| {(a - b).abs().max():.3e})"
    )


def force_loss_grads(model, z, pos, b, reference: bool, seed=0):
    """Energy, forces and the parameter gradients of an energy + force loss (training mode)."""
    model.train()
    torch.manual_seed(seed)  # random quantizer masks (QDrop, Degree-Quant) draw the same numbers
    run = model.reference_forward if reference else model
    out = run(z, pos, b, num_graphs=int(b[-1]) + 1)
    target_f = torch.sin(torch.arange(pos.numel(), dtype=pos.dtype, device=pos.device)).reshape(pos.shape)
    loss = (out["energy"] ** 2).mean() * 1e-3 + ((out["forces"] - target_f) ** 2).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return out["energy"].detach(), out["forces"].detach(), grads


# ------------------------------------------------------------------------------------- bad-input files
BAD_INPUT_MODEL = dict(
    num_features=8, num_layers=1, num_heads=2, degrees=[1], cutoff=4.0, num_rbf=4, max_z=10
)


def noisy_dataset(n_frames: int = 12, seed: int = 0) -> data_mod.MolecularDataset:
    """The methanol-like frame perturbed by 0.05 Angstrom noise, with random (unphysical) labels."""
    rng = np.random.default_rng(seed)
    pos = METHANOL_POS[None] + 0.05 * rng.normal(size=(n_frames, 6, 3))
    return data_mod.MolecularDataset(
        METHANOL_Z, pos, rng.normal(size=n_frames) - 10.0, rng.normal(size=(n_frames, 6, 3))
    )


def bad_input_model() -> So3krates:
    """An untrained float64 :data:`BAD_INPUT_MODEL` (seed 0) with energy shifts for H, C and O."""
    torch.manual_seed(0)
    m = So3krates(**BAD_INPUT_MODEL).double()
    m.set_energy_statistics({1: -13.6, 6: -1000.0, 8: -2000.0}, 0.5)
    return m


class Payload:
    """Pickles to ``open(marker, "w")``: unpickling it with ``weights_only=False`` creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_input_files(d: Path) -> dict[str, Path]:
    """Write a good data file and checkpoint, and every kind of bad file, into folder ``d``; their paths
    by kind (``"dir"`` is ``d``)."""
    ds = noisy_dataset()
    good_npz = data_mod.save_npz(ds, d / "good.npz")
    model = bad_input_model()
    ckpt = {
        "model_config": model.config,
        "model_state": model.state_dict(),
        "normalisation": {"shifts": {1: -13.6, 6: -1000.0, 8: -2000.0}, "scale": 0.5},
        "train_config": {"dataset": str(good_npz), "n_train": 6, "n_val": 2, "split_seed": 0},
    }
    good_pt = d / "good.pt"
    torch.save(ckpt, good_pt)
    f = {"dir": d, "good_npz": good_npz, "good_pt": good_pt}
    raw = good_pt.read_bytes()
    f["empty_pt"] = d / "empty.pt"
    f["empty_pt"].write_bytes(b"")
    f["garbage_pt"] = d / "garbage.pt"
    f["garbage_pt"].write_bytes(b"\x00not a checkpoint\xff" * 50)
    f["truncated_pt"] = d / "truncated.pt"
    f["truncated_pt"].write_bytes(raw[: len(raw) // 2])
    f["malicious_pt"] = d / "malicious.pt"
    torch.save({**ckpt, "extra": Payload(d / "MARKER_torch")}, f["malicious_pt"])
    f["malicious_pickle"] = d / "malicious_legacy.pt"
    f["malicious_pickle"].write_bytes(pickle.dumps(Payload(d / "MARKER_pickle")))
    f["list_pt"] = d / "list.pt"
    torch.save([1, 2, 3], f["list_pt"])
    bad_state = dict(ckpt["model_state"])
    key = "embedding.weight"
    bad_state[key] = bad_state[key].clone()
    bad_state[key][0] = float("nan")
    f["nan_pt"] = d / "nan_weights.pt"
    torch.save({**ckpt, "model_state": bad_state}, f["nan_pt"])
    inf_state = dict(ckpt["model_state"])
    inf_state[key] = inf_state[key].clone()
    inf_state[key][-1] = float("inf")
    f["inf_pt"] = d / "inf_weights.pt"
    torch.save({**ckpt, "model_state": inf_state}, f["inf_pt"])
    f["mismatch_pt"] = d / "mismatch.pt"
    torch.save({**ckpt, "model_config": {**BAD_INPUT_MODEL, "num_features": 16}}, f["mismatch_pt"])
    f["nokey_pt"] = d / "nokey.pt"
    torch.save({"model_config": model.config}, f["nokey_pt"])
    f["half_pt"] = d / "half.pt"
    torch.save({**ckpt, "model_state": {k: v.half() for k, v in ckpt["model_state"].items()}}, f["half_pt"])

    # data files
    f["crc_npz"] = d / "crc.npz"
    buf = bytearray(good_npz.read_bytes())
    info = next(i for i in zipfile.ZipFile(good_npz).infolist() if i.filename == "coords.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    buf[start + info.compress_size // 2] ^= 0xFF
    f["crc_npz"].write_bytes(bytes(buf))
    f["truncated_npz"] = d / "truncated.npz"
    f["truncated_npz"].write_bytes(good_npz.read_bytes()[:400])
    f["garbage_npz"] = d / "garbage.npz"
    f["garbage_npz"].write_bytes(b"PK\x03\x04 garbage" * 20)
    f["empty_npz"] = d / "empty.npz"
    f["empty_npz"].write_bytes(b"")
    zero = {
        "nuclear_charges": METHANOL_Z,
        "coords": np.zeros((0, 6, 3)),
        "energies": np.zeros(0),
        "forces": np.zeros((0, 6, 3)),
    }
    f["zero_npz"] = d / "zero_frames.npz"
    np.savez(f["zero_npz"], **zero)
    f["pickled_npz"] = d / "pickled.npz"
    good = {
        "nuclear_charges": METHANOL_Z,
        "coords": METHANOL_POS[None],
        "energies": np.zeros(1),
        "forces": np.zeros((1, 6, 3)),
    }
    np.savez(f["pickled_npz"], **{**good, "provenance": np.array([Payload(d / "MARKER_npz")], dtype=object)})
    f["npy_as_npz"] = d / "array.npz"
    with open(f["npy_as_npz"], "wb") as fh:
        np.save(fh, np.zeros(3))
    f["empty_xyz"] = d / "empty.extxyz"
    f["empty_xyz"].write_text("")
    f["malformed_xyz"] = d / "malformed.extxyz"
    f["malformed_xyz"].write_text("3\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0\nH 0 0 0.7 1\n")
    f["text_xyz"] = d / "notxyz.extxyz"
    f["text_xyz"].write_text("this is not an xyz file\nat all\n")
    return f
