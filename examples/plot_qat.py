"""
Quantization-aware training of a small force field
==================================================

Post-training quantization (PTQ) rounds the weights and activations of a trained network and hopes for the
best. Quantization-aware training (QAT) instead finetunes the network *with* the quantizers in the forward
pass, so that it learns to live with them. This tutorial trains a small FP32 So3krates force field on the
shipped ethanol data, then compares

* a naive INT8 PTQ of it: every weight and activation per-tensor min-max INT8, the three components of each
  equivariant feature vector quantized as independent scalars, no training;
* GAQ quantization-aware finetuning of the same FP32 model (4-bit weights in the equivariant branch, 8-bit
  elsewhere, 8-bit activations, magnitude-direction quantization of the vector features);

by energy and force errors and by the local equivariance error (LEE) of the forces. Everything runs on a CPU
in a few minutes, so the models are tiny and trained briefly: the numbers illustrate the mechanics and the
qualitative differences, not the accuracy the paper reports for fully trained models.
"""

# %%
# Data and the FP32 model
# -----------------------
# :func:`spherequant.models.train.train` takes a plain dict (or a YAML file) of
# :class:`~spherequant.models.train.TrainConfig` fields and writes checkpoints and metrics into
# ``output_dir``; here a temporary folder. The model has degree-1 equivariant features only (the paper's GAQ
# model) and uses *cosine attention* (Eq. 10) from the start: GAQ switches attention to cosine when it
# prepares a model, so training the FP32 model that way keeps one architecture for all the models compared
# below.
import os
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from spherequant.models import data
from spherequant.models.baselines import prepare_baseline
from spherequant.models.checkpoints import load_model
from spherequant.models.evaluation import force_lee
from spherequant.models.gaq import set_force_mode
from spherequant.models.train import error_metrics, train

torch.set_num_threads(1)
QUICK = os.environ.get("SPHEREQUANT_DOCS_QUICK", "0") == "1"
N_TRAIN = 80 if QUICK else 300
N_VAL = 25 if QUICK else 50
EPOCHS_FP32 = 6 if QUICK else 30
EPOCHS_QAT = 3 if QUICK else 8
WARMUP = 1 if QUICK else 2
N_TEST = 40 if QUICK else 200  # test frames for the error table
N_LEE = 16 if QUICK else 50  # test frames for the LEE (4 Haar rotations each)

t_start = time.perf_counter()
ds = data.load_dataset("ethanol-gfn2-500K")
split = data.split(ds, n_train=N_TRAIN, n_val=N_VAL, seed=0)  # the split train() draws from these settings
test = split.test[:N_TEST]
workdir = Path(tempfile.mkdtemp(prefix="spherequant_qat_"))

common = {
    "dataset": "ethanol-gfn2-500K",
    "n_train": N_TRAIN,
    "n_val": N_VAL,
    "dtype": "float32",
    "batch_size": 10,
    "val_batch_size": 50,
    "ema_decay": 0.95,
    "device": "cpu",
    "progress": False,
    "plot": False,
    "evaluate_test": False,
}
fp32_run = train(
    {
        **common,
        "output_dir": str(workdir / "fp32"),
        "model": {
            "num_features": 32,
            "num_layers": 2,
            "num_heads": 2,
            "degrees": [1],
            "cutoff": 5.0,
            "num_rbf": 16,
            "max_z": 10,
            "attention": "cosine",
        },
        "epochs": EPOCHS_FP32,
        "lr": 3e-3,
        "scheduler": "exponential",
        "lr_factor": 0.95,
    },
    dataset=ds,
)
seconds = sum(h["epoch_time_s"] for h in fp32_run["history"])
print(f"FP32: {EPOCHS_FP32} epochs in {seconds:.0f} s")
print(f"best validation force MAE {fp32_run['best']['val_forces_mae']:.1f} meV/A")

# %%
# GAQ quantization-aware finetuning
# ---------------------------------
# A ``quantization`` section turns the same :func:`~spherequant.models.train.train` call into QAT: the FP32
# checkpoint named in ``init_checkpoint`` is loaded, prepared with
# :func:`~spherequant.models.gaq.quantize_` (fake-quantized weights and activations), its activation ranges
# are calibrated on a few training batches (:func:`~spherequant.models.gaq.calibrate_`), and training
# continues. What GAQ does differently from a generic QAT recipe:
#
# **Branch separation.** The network has an *equivariant branch* (the geometric blocks that write the vector
# features :math:`\chi`, and the quantizers of :math:`\chi`) and an *invariant branch* (embedding, feature
# and exchange blocks, energy readout). They get different bit widths (4-bit and 8-bit weights by default)
# and, crucially, different quantizers for their activations: scalars get an ordinary 8-bit quantizer, the
# degree-1 vectors of :math:`\chi` get MDDQ, :math:`Q(v) = Q_m(\|v\|)\, Q_d(v / \|v\|)`, whose magnitude
# code is rotation invariant and whose direction codebook has a known covering radius.
#
# **Staged warm-up.** For the first ``warmup_epochs`` epochs :class:`~spherequant.models.gaq.GAQScheduler`
# leaves the equivariant branch in floating point, so the invariant branch adapts to its quantization first;
# then the equivariant branch is switched on too. Warm-up epochs are never kept as the best checkpoint.
#
# **Geometric straight-through estimator.** Rounding has no useful gradient, so QAT passes gradients
# "straight through" the quantizer. For a direction, GAQ keeps only the tangent part of the gradient
# (Eq. 8: :math:`P_{\hat v}\, \partial L / \partial v_q` with :math:`P_u = I - u u^T`): the direction
# pathway never pushes on a vector's length, which MDDQ quantizes and trains separately.
#
# **LEE penalty.** Quantization breaks exact equivariance, so the loss adds ``lee_weight`` times
# :func:`~spherequant.models.gaq.lee_penalty`, the mean squared difference
# :math:`\|F(Rx) - R F(x)\|^2` for one Haar-random rotation per molecule (one extra forward and backward
# pass per batch; the column ``train_lee`` of the metrics).
qat_run = train(
    {
        **common,
        "output_dir": str(workdir / "gaq"),
        "epochs": EPOCHS_QAT,
        "lr": 5e-4,
        "scheduler": "none",
        "quantization": {
            "method": "gaq",
            "init_checkpoint": str(workdir / "fp32" / "best.pt"),
            "calibration_batches": 8,
            "options": {"warmup_epochs": WARMUP, "lee_weight": 0.1, "codebook_size": 4096},
        },
    },
    dataset=ds,
)
best, seconds = qat_run["best"], sum(h["epoch_time_s"] for h in qat_run["history"])
print(f"GAQ QAT: {EPOCHS_QAT} epochs in {seconds:.0f} s")
print(f"best validation force MAE {best['val_forces_mae']:.1f} meV/A (epoch {best['epoch']})")

# %%
# Naive INT8 post-training quantization
# -------------------------------------
# The baseline uses the Python API instead of a config: load the FP32 checkpoint, prepare it with
# :func:`~spherequant.models.baselines.prepare_baseline` and calibrate its min-max ranges on training
# frames. No weight changes.
ptq = load_model(workdir / "fp32" / "best.pt")
calibration = list(data.iterate_batches(ds, split.train[:100], 25, dtype=torch.float32))
prepare_baseline(ptq, "naive_int8", calibration_batches=calibration)
ptq.eval()

# %%
# Which forces does a quantized model report?
# -------------------------------------------
# With quantized activations the energy is a step function of the atomic positions, so its true gradient is
# zero almost everywhere. In ``force_mode="ste"`` (what QAT trains and the naive INT8 model uses) the forces
# are autograd through the fake-quantized network with straight-through derivatives: accurate, but not the
# gradient of the reported energy. In ``force_mode="smooth"``
# (:func:`~spherequant.models.gaq.set_force_mode`) the weights stay quantized and each activation quantizer
# keeps its clipping but not its rounding (a clamp; for MDDQ a magnitude clip), so the forces are the exact
# gradient of a continuous, piecewise smooth energy (conservative, the choice for molecular dynamics) and,
# since the clamps act on invariants and magnitudes, exactly equivariant. We evaluate the GAQ model both ways.
fp32 = load_model(workdir / "fp32" / "best.pt")
gaq_ste = load_model(workdir / "gaq" / "best.pt")
gaq_smooth = load_model(workdir / "gaq" / "best.pt")
set_force_mode(gaq_smooth, "smooth")

models = {"FP32": fp32, "naive INT8 PTQ": ptq, "GAQ QAT (ste)": gaq_ste, "GAQ QAT (smooth)": gaq_smooth}
results = {}
for name, model in models.items():
    err = error_metrics(model, ds, test)
    lee = force_lee(model, ds, test[:N_LEE], n_rotations=4, seed=0)
    results[name] = (err["energy_mae"], err["forces_mae"], lee["lee_mean"], lee["lee_max"])

print(f"{len(test)} test frames; LEE over {N_LEE} frames x 4 rotations")
print(f"{'model':<18} {'E MAE (meV)':>12} {'F MAE (meV/A)':>14} {'LEE mean':>10} {'LEE max':>10}")
for name, (e, f, lm, lx) in results.items():
    print(f"{name:<18} {e:>12.1f} {f:>14.1f} {lm:>10.2e} {lx:>10.2e}")
print(f"total run time {time.perf_counter() - t_start:.0f} s")

# %%
# Reading the table. The FP32 model is equivariant by construction: its LEE is float32 round-off. Naive
# INT8 rounds each Cartesian component of :math:`\chi` on a grid fixed to the coordinate axes, so rotating
# the molecule changes the rounding and the forces no longer rotate with the molecule: its LEE is many orders
# of magnitude above round-off, and its errors grow because nothing adapted the network to the rounding.
# GAQ's STE forces still carry an equivariance error, since rounded activations (MDDQ's direction codebook
# included, whose covering radius bounds the vector part) do not commute with rotations exactly; in this run
# it is smaller than naive INT8's, and the LEE penalty is the term of the QAT loss that pushes it down. The
# smooth forces of the same GAQ model are back at round-off, at the price of evaluating a network without
# the activation rounding the model was finetuned with (and its energy reference refit on): the further
# finetuning has adapted to the rounding, the more its energy and forces can differ from the STE ones
# (compare the two GAQ rows). At this size and training length all the errors are dominated by the short
# training: the differences are illustrative, not the paper's results.
#
# The training LEE penalty (mean squared force difference per atom, in (eV/Angstrom)^2) shows
# the staged warm-up: during the warm-up epochs only the invariant features are rounded, and rotating the
# molecule leaves them unchanged up to round-off, so the penalty is near zero; it jumps when the equivariant
# branch is quantized.
lee_per_epoch = ", ".join(f"{h['train_lee']:.1e}" for h in qat_run["history"])
print(f"training LEE penalty per QAT epoch: {lee_per_epoch}")
for name in ("FP32", "GAQ QAT (smooth)"):  # exactly equivariant models: LEE at float32 round-off
    assert results[name][3] < 0.1, f"{name}: max LEE {results[name][3]:.3e} meV/A, expected round-off"
assert results["naive INT8 PTQ"][2] > 100 * results["FP32"][2], "naive INT8 should break equivariance"
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
ax = axes[0]
h32, hq = fp32_run["history"], qat_run["history"]
ax.semilogy([h["epoch"] for h in h32], [h["val_forces_mae"] for h in h32], "o-", ms=3, label="FP32")
qat_epochs = [EPOCHS_FP32 + h["epoch"] for h in hq]
ax.semilogy(qat_epochs, [h["val_forces_mae"] for h in hq], "s-", ms=3, label="GAQ QAT (from FP32 best)")
ax.axvspan(EPOCHS_FP32 + 0.5, EPOCHS_FP32 + WARMUP + 0.5, color="0.85", label="warm-up (equivariant FP32)")
ax.set_xlabel("epoch")
ax.set_ylabel("validation force MAE (meV/A)")
ax.legend(fontsize=8)
ax.grid(True, which="both", alpha=0.3)

ax = axes[1]
names = list(results)
x = np.arange(len(names))
ax.bar(x - 0.2, [results[n][1] for n in names], 0.4, label="force MAE (meV/A)")
ax.bar(x + 0.2, [results[n][2] for n in names], 0.4, label="mean LEE (meV/A)")
ax.set_yscale("log")
ax.set_xticks(x, [n.replace(" (", "\n(") for n in names], fontsize=8)
ax.legend(fontsize=8)
ax.grid(True, axis="y", which="both", alpha=0.3)
fig.tight_layout()
shutil.rmtree(workdir)  # checkpoints and metrics of both runs
plt.show()
