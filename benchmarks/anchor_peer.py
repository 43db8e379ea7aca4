"""Anchor row: the peer ``so3krates-torch`` 0.2.1 trained on our parent's split, size and recipe.

The peer (``so3krates_torch.modules.models.So3krates``, a PyTorch port of the JAX mlff So3krates) is built
at the size of our FP32 parent (``--parent-config``, default ``models/configs/azobenzene_fp32_parent.yaml``:
128 features, 3 layers, 4 heads, degree-1 equivariant features, cutoff 5 Angstrom, 32 radial functions) by
:func:`size_mapping`, which records each choice and what the peer cannot match (its radial basis is
gaussian where ours is PhysNet's, it normalises messages by the average neighbour count of the training
frames, it has no cosine attention); the parameter counts of both models are recorded. It is trained with
the parent's recipe where the peer allows it: Adam, lr 1e-3, no weight decay, batch 5 in the parent's batch
order (``default_rng([seed, epoch])``), loss ``0.01 mean(((E - E_ref) / n)^2) + 0.99 mean((F - F_ref)^2)``,
gradient clipping at 10, an EMA of the weights (decay 0.99) validated every epoch, ReduceLROnPlateau on the
validation loss (factor 0.5, patience 25, floor 1e-5, stop once at the floor for ``patience`` epochs),
per-element energy shifts (least squares on the training frames) and the RMS training force as the
atomic-energy scale, and after training the per-element shift correction on the training frames' residuals
(the parent's ``refit_energy_shift``); float32, one thread.

Data and split are ours: the shipped ``azobenzene-gfn2-500K`` set, drawn by
:func:`spherequant.models.data.split` with ``n_train`` 950, ``n_val`` 50, ``split_seed`` 0, exactly as
``spherequant train`` draws it for ``benchmarks/runs/azobenzene_fp32_parent`` (compared with that folder's
``split/`` when present, read-only). The EMA weights with the lowest validation loss are scored on the test
frames (all 4000, or the first ``--n-test``): energy MAE in meV and meV/atom, force MAE in meV/Angstrom per
Cartesian component, validation and test reported separately. Beside them: our parent's best validation
row and test figures, and (``--equal-time cpu``, default) its validation curve at the peer's cumulative
process CPU time, the parent's clock being the sum of its ``metrics.csv`` ``epoch_time_s``.

Budget: ``--epochs N`` and/or ``--cpu-hours H`` (process CPU time summed over resumed sessions; no epoch
starts once it is spent). Each epoch ends with an atomic checkpoint (``last.pt``; the best EMA weights in
``best.pt``) in ``--run-dir``; ``--resume`` continues exactly (same batch order, optimizer, scheduler, EMA
and RNG state). The parts shared with ``anchor_mace.py`` live in ``benchmarks/_anchor.py``; the peer's model
construction and inputs are those of ``benchmarks/peer_so3krates_torch.py``.

The peer is *not* a dependency of spherequant: install it as in the docstring of
``benchmarks/peer_so3krates_torch.py`` (``/tmp/peer-venv`` seeing the project's packages through a ``.pth``
line, ``pip install --no-deps -r benchmarks/peer_env/requirements.txt``) and run this script with that
interpreter.

Usage::

    # smoke test (minutes): one epoch on 20 training frames, 10 test frames, results outside the repo
    OMP_NUM_THREADS=1 nice -n 15 /tmp/peer-venv/bin/python benchmarks/anchor_peer.py --epochs 1 \\
        --n-train 20 --n-val 10 --n-test 10 --run-dir /tmp/peer_anchor_smoke --out /tmp/peer_anchor_smoke.json
    # the anchor row at the parent's budget (kill and rerun with --resume at any time)
    OMP_NUM_THREADS=1 nice -n 15 /tmp/peer-venv/bin/python benchmarks/anchor_peer.py --cpu-hours H \\
        --run-dir benchmarks/runs/anchor_peer [--resume]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import yaml

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared module next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _anchor import (
    DATASET,
    add_common_args,
    budget_state,
    check_common_args,
    check_resume_config,
    claim_run_dir,
    command_line,
    comparison_rows,
    env_info,
    equal_time_block,
    error_metrics,
    fail,
    load_split,
    new_state,
    parent_figures,
    positive,
    print_comparison,
    resume_checkpoint,
    save_torch,
    write_results,
)

__all__ = [
    "RECIPE_KEYS",
    "budget_state",
    "check_resume_config",
    "energy_shift_correction",
    "error_metrics",
    "load_split",
    "main",
    "our_parameter_count",
    "parent_figures",
    "parse_args",
    "size_mapping",
]

PEER_VERSION = "0.2.1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_JSON = HERE / "results" / "anchor_peer.json"
DEFAULT_PARENT_CONFIG = ROOT / "models" / "configs" / "azobenzene_fp32_parent.yaml"
# settings a resumed run must share with the checkpoint (the budget, paths and progress may change)
RECIPE_KEYS = (
    "n_train",
    "n_val",
    "split_seed",
    "peer_model",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_factor",
    "patience",
    "min_lr",
    "stop_at_min_lr",
    "ema_decay",
    "clip_grad",
    "energy_weight",
    "forces_weight",
    "dtype",
    "seed",
)


# ----------------------------------------------------------------------------------------------------------
# pieces that need no peer (tested in tests/test_anchor_peer.py)
# ----------------------------------------------------------------------------------------------------------
def read_parent_config(path) -> dict:
    """Our parent's training config (YAML mapping with a ``model`` section), read as plain data."""
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ValueError("must be a YAML mapping with a 'model' mapping (a spherequant training config)")
    return cfg


def size_mapping(model: dict, features=None, layers=None, heads=None) -> dict:
    """The peer's constructor options closest to our model section ``model`` (the parent's size).

    Parameters
    ----------
    model : dict
        Our ``So3krates`` options (the ``model`` section of a training config): ``num_features``,
        ``num_layers``, ``num_heads``, ``degrees``, ``cutoff``, ``num_rbf`` and optionally ``max_z``,
        ``attention``.
    features, layers, heads : int, optional
        Override the size (smoke tests); the result then records ``equal_size: False``.

    Returns
    -------
    dict
        ``peer``: the options of :func:`peer_so3krates_torch.build_peer` (``features``, ``layers``,
        ``heads``, ``degrees``, ``cutoff`` in Angstrom, ``num_rbf``); ``ours``: the model section the peer
        is matched to (with any override applied); ``equal_size``; ``notes``: what differs.

    Raises
    ------
    ValueError
        When the peer cannot be built at that size: features not divisible by the heads or by the number of
        degrees (the peer has one geometric head per degree), degrees not positive integers, or an attention
        other than So3krates' (the peer has no cosine attention).
    """
    need = ("num_features", "num_layers", "num_heads", "degrees", "cutoff", "num_rbf")
    missing = [k for k in need if k not in model]
    if missing:
        raise ValueError(f"model must name {', '.join(missing)} (our So3krates options), got {sorted(model)}")
    attention = model.get("attention", "so3krates")
    if attention != "so3krates":
        raise ValueError(f"model attention must be 'so3krates' (the peer has no {attention!r} attention)")
    ours = dict(model)
    for key, value in (("num_features", features), ("num_layers", layers), ("num_heads", heads)):
        if value is not None:
            ours[key] = int(value)
    degrees = [int(d) for d in ours["degrees"]]
    if not degrees or min(degrees) < 1 or len(set(degrees)) != len(degrees):
        raise ValueError(f"model degrees must be distinct integers >= 1, got {ours['degrees']!r}")
    f, h = int(ours["num_features"]), int(ours["num_heads"])
    if min(f, h, int(ours["num_layers"]), int(ours["num_rbf"])) < 1:
        raise ValueError(f"model sizes must be >= 1, got {ours}")
    if f % h:
        raise ValueError(f"num_features ({f}) must be divisible by num_heads ({h}) for the peer")
    if f % len(degrees):
        raise ValueError(
            f"num_features ({f}) must be divisible by the number of degrees ({len(degrees)}): the peer "
            "splits the features into one geometric attention head per degree"
        )
    peer = {
        "features": f,
        "layers": int(ours["num_layers"]),
        "heads": h,
        "degrees": degrees,
        "cutoff": float(ours["cutoff"]),
        "num_rbf": int(ours["num_rbf"]),
    }
    notes = [
        "radial basis: peer 'gaussian' (its default; it has no PhysNet basis), ours PhysNet; both with a "
        "cosine cutoff",
        "message normalisation: peer divides by the average neighbour count of the training frames, ours "
        "does not need one",
        f"elements: peer embeds 118, ours max_z {ours.get('max_z', 'default')}",
        "peer: per-head block-diagonal q/k/v maps and a one-layer exchange (fewer parameters at equal "
        "width); final energy MLP 2 layers",
        "peer: energy_shifts per element set from our training frames (least squares) and energy scale the "
        "RMS training force, as ours; both not trained",
    ]
    equal = all(v is None for v in (features, layers, heads)) or (
        (f, peer["layers"], h) == (model["num_features"], model["num_layers"], model["num_heads"])
    )
    return {"peer": peer, "ours": ours, "equal_size": bool(equal), "notes": notes}


def our_parameter_count(model: dict) -> int:
    """Parameters of our ``So3krates`` built with the model section ``model``."""
    from spherequant.models.so3krates import So3krates

    kwargs = dict(model)
    kwargs["degrees"] = tuple(kwargs["degrees"])
    return int(sum(p.numel() for p in So3krates(**kwargs).parameters()))


def energy_shift_correction(numbers, residuals) -> dict:
    """Per-element shift correction (eV) minimising ``||C d - r||`` (minimum norm), as our parent's refit.

    Parameters
    ----------
    numbers : sequence of int arrays
        Atomic numbers of each frame.
    residuals : array_like, shape (n_frames,)
        ``E_ref - E_model`` per frame, eV.

    Returns
    -------
    dict
        ``{Z: d_Z}`` over the elements present; ``C`` is the frames x elements count matrix. With a single
        composition only the sum ``sum_Z n_Z d_Z`` is determined and the minimum-norm solution is returned.
    """
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or r.size != len(numbers):
        raise ValueError(f"residuals must be 1-D with one value per frame ({len(numbers)}), got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("residuals hold non-finite values")
    elements = np.unique(np.concatenate([np.asarray(z, dtype=np.int64) for z in numbers]))
    counts = np.zeros((r.size, elements.size))
    for k, z in enumerate(numbers):
        np.add.at(counts[k], np.searchsorted(elements, np.asarray(z, dtype=np.int64)), 1.0)
    d = np.linalg.lstsq(counts, r, rcond=None)[0]
    return {int(z): float(v) for z, v in zip(elements, d)}


def converged(lrs, num_bad_epochs: int, min_lr: float, patience: int) -> bool:
    """The parent's ``stop_at_min_lr`` rule: every learning rate at the floor and ``patience`` bad epochs."""
    return all(lr <= min_lr * (1 + 1e-9) for lr in lrs) and num_bad_epochs >= patience


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``); a bad value exits with status 2 and one ``error:`` line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, run_dir="benchmarks/runs/anchor_peer", json_path=str(DEFAULT_JSON))
    ap.add_argument(
        "--parent-config", default=str(DEFAULT_PARENT_CONFIG), help="our parent's training config (size)"
    )
    ap.add_argument("--features", type=positive(int), default=None, help="override the parent's width")
    ap.add_argument("--layers", type=positive(int), default=None, help="override the parent's depth")
    ap.add_argument("--heads", type=positive(int), default=None, help="override the parent's heads")
    ap.add_argument("--batch-size", type=positive(int), default=5)
    ap.add_argument("--val-batch-size", type=positive(int), default=50)
    ap.add_argument("--lr", type=positive(float), default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--lr-factor", type=positive(float), default=0.5)
    ap.add_argument("--patience", type=positive(int), default=25)
    ap.add_argument("--min-lr", type=positive(float), default=1e-5)
    ap.add_argument(
        "--no-stop-at-min-lr",
        dest="stop_at_min_lr",
        action="store_false",
        help="go on at the floor (default: stop as the parent does)",
    )
    ap.add_argument("--ema-decay", type=float, default=0.99)
    ap.add_argument("--clip-grad", type=positive(float), default=10.0)
    ap.add_argument("--energy-weight", type=float, default=0.01)
    ap.add_argument("--forces-weight", type=float, default=0.99)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument(
        "--no-refit-energy-shift",
        dest="refit_energy_shift",
        action="store_false",
        help="skip the per-element shift correction on the training frames before scoring",
    )
    args = ap.parse_args(argv)
    check_common_args(ap, args)
    if not 0.0 <= args.ema_decay < 1.0:
        ap.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.weight_decay < 0 or args.energy_weight < 0 or args.forces_weight < 0:
        ap.error("--weight-decay, --energy-weight and --forces-weight must be >= 0")
    if args.energy_weight + args.forces_weight == 0:
        ap.error("--energy-weight and --forces-weight must not both be 0")
    if args.lr_factor >= 1:
        ap.error(f"--lr-factor must be < 1, got {args.lr_factor}")
    if args.min_lr > args.lr:
        ap.error(f"--min-lr must be <= --lr ({args.lr}), got {args.min_lr}")
    try:
        cfg = read_parent_config(args.parent_config)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as err:
        ap.error(f"--parent-config {args.parent_config!r}: {err}".replace("\n", " "))
    try:
        args.size = size_mapping(cfg["model"], args.features, args.layers, args.heads)
    except ValueError as err:
        ap.error(f"--features/--layers/--heads or --parent-config: {err}")
    args.parent_recipe = {
        k: cfg.get(k)
        for k in ("batch_size", "lr", "weight_decay", "scheduler", "lr_factor", "patience", "min_lr",
                  "stop_at_min_lr", "ema_decay", "grad_clip", "energy_weight", "forces_weight", "dtype",
                  "seed", "n_train", "n_val", "split_seed", "refit_energy_shift")
    }  # fmt: skip
    args.peer_model = args.size["peer"]
    return args


def _recipe(args) -> dict:
    return {k: getattr(args, k) for k in RECIPE_KEYS}


# ----------------------------------------------------------------------------------------------------------
# the peer
# ----------------------------------------------------------------------------------------------------------
def _peer_bench():
    """``benchmarks/peer_so3krates_torch.py`` (the peer's model construction and inputs)."""
    spec = importlib.util.spec_from_file_location("_peer_bench", HERE / "peer_so3krates_torch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _import_peer():
    """The peer benchmark module and the peer's modules, or exit with status 2 and the install hint."""
    pb = _peer_bench()
    if importlib.util.find_spec("so3krates_torch") is None:
        fail(f"the peer package so3krates-torch=={PEER_VERSION} is not importable; {pb.INSTALL_HINT}")
    return pb, pb._import_peer()


def predict(model, pb, peer, frames_of, indices, batch_size, device, dtype):
    """Energies (n_frames,) and forces (n_atoms, 3) of the peer ``model`` on frames ``indices`` (eV, eV/A)."""
    was = model.training
    model.eval()
    es, fs = [], []
    for k in range(0, len(indices), batch_size):
        idx = indices[k : k + batch_size]
        out = pb.call_peer(model, pb.peer_batch(peer, [frames_of[int(i)] for i in idx], device, dtype))
        es.append(out["energy"].detach().double().cpu().numpy())
        fs.append(out["forces"].detach().double().cpu().numpy())
    model.train(was)
    return np.concatenate(es), np.concatenate(fs)


def score(model, pb, peer, frames_of, ds, indices, args, device, dtype) -> dict:
    idx = np.asarray(indices)
    e, f = predict(model, pb, peer, frames_of, idx, args.val_batch_size, device, dtype)
    f_ref = np.concatenate([ds[int(i)]["forces"] for i in idx])
    return error_metrics(
        e, ds.energies[idx], ds.n_atoms[idx], f, f_ref, args.energy_weight, args.forces_weight
    )


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    """EMA of the trainable weights (as our training's), every other tensor of the state copied."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    shadow = ema.state_dict()
    for k, v in model.state_dict().items():
        if k in trainable and v.is_floating_point():
            shadow[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            shadow[k].copy_(v)


def train(args, pb, peer, ds, sp, frames_of, device, dtype) -> dict:
    """The resumable epoch loop; returns the run's record (best EMA model, history, budget used)."""
    last_path, best_path = claim_run_dir(args.run_dir, args.resume)
    from spherequant.models import data as data_mod

    stats = data_mod.energy_statistics(ds, sp.train)
    train_frames = [frames_of[int(i)] for i in sp.train]
    avg_nb = sum(int(f.edge_index.shape[1]) for f in train_frames) / sum(
        int(f.positions.shape[0]) for f in train_frames
    )
    size = SimpleNamespace(**args.peer_model, seed=args.seed)
    model = pb.build_peer(peer, size, dtype, device, avg_nb)
    pb.set_peer_energy_statistics(model, stats.shifts, stats.scale)
    model.train()
    ema = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=args.lr_factor, patience=args.patience, min_lr=args.min_lr
    )
    info = {
        "avg_num_neighbors": avg_nb,
        "energy_statistics": {"shifts_eV": stats.shifts, "scale": stats.scale, "method": stats.method},
        "parameters": pb.param_counts(model),
    }
    state = new_state()
    ck = resume_checkpoint(last_path, _recipe(args), args.resume)
    if ck is not None:
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
    print(
        f"peer so3krates-torch {peer['version']}: {args.peer_model}, {info['parameters']['total']} "
        f"parameters, avg neighbours {avg_nb:.3f}",
        flush=True,
    )

    def stop_reason():
        why = budget_state(state["epoch"], state["cpu_s"], args.epochs, args.cpu_hours)
        if why is None and args.stop_at_min_lr and state["epoch"] > 0:
            lrs = [g["lr"] for g in opt.param_groups]
            if converged(lrs, sched.num_bad_epochs, args.min_lr, args.patience):
                why = "min_lr"
        return why

    train_idx = np.asarray(sp.train)
    n_batches = math.ceil(len(train_idx) / args.batch_size)
    stop = stop_reason()
    while stop is None:
        epoch = state["epoch"] + 1
        c0, w0 = time.process_time(), time.perf_counter()
        model.train()
        order = np.random.default_rng([args.seed, epoch]).permutation(train_idx)  # the parent's order
        loss_sum = 0.0
        for k in range(n_batches):
            idx = order[k * args.batch_size : (k + 1) * args.batch_size]
            d = pb.peer_batch(peer, [frames_of[int(i)] for i in idx], device, dtype)
            out = pb.call_peer(model, d, training=True)
            e_ref = torch.as_tensor(ds.energies[idx], dtype=dtype, device=device)
            f_ref = torch.as_tensor(np.concatenate([ds[int(i)]["forces"] for i in idx]), dtype=dtype)
            n = torch.as_tensor(ds.n_atoms[idx], dtype=dtype, device=device)
            de = (out["energy"] - e_ref) / n
            df = out["forces"] - f_ref.to(device)
            loss = args.energy_weight * (de * de).mean() + args.forces_weight * (df * df).mean()
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite training loss {float(loss)} at epoch {epoch}, batch {k + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm=args.clip_grad)
            opt.step()
            _ema_update(ema, model, args.ema_decay)
            loss_sum += float(loss.detach())
            if (k + 1) % args.log_every == 0 or k + 1 == n_batches:
                print(
                    f"  epoch {epoch} batch {k + 1}/{n_batches} train loss {loss_sum / (k + 1):.4g} "
                    f"({time.perf_counter() - w0:.0f} s)",
                    flush=True,
                )
        val = score(ema, pb, peer, frames_of, ds, sp.val, args, device, dtype)
        is_best = state["best"] is None or val["loss"] < state["best"]["val_loss"]
        sched.step(val["loss"])
        state["cpu_s"] += time.process_time() - c0
        state["wall_s"] += time.perf_counter() - w0
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / n_batches,
            "val_loss": val["loss"],
            "val_energy_mae": val["energy_mae"],
            "val_energy_mae_per_atom": val["energy_mae_per_atom"],
            "val_forces_mae": val["forces_mae"],
            "lr": float(opt.param_groups[0]["lr"]),
            "cpu_s_total": state["cpu_s"],
            "wall_s_total": state["wall_s"],
        }
        state["history"].append(row)
        state["epoch"] = epoch
        if is_best:
            state["best"] = dict(row)
            save_torch(
                best_path, {"ema": ema.state_dict(), "row": row, "info": info, "recipe": _recipe(args)}
            )
        save_torch(
            last_path,
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
                "info": info,
                "recipe": _recipe(args),
            },
        )
        print(
            f"epoch {epoch}: val force MAE {row['val_forces_mae']:.3f} meV/A, energy MAE "
            f"{row['val_energy_mae']:.3f} meV, lr {row['lr']:.3g}, CPU {state['cpu_s']:.1f} s "
            f"({state['cpu_s'] / 3600:.3f} h)" + (" *best*" if is_best else ""),
            flush=True,
        )
        stop = stop_reason()
    best = torch.load(best_path, map_location=device, weights_only=False)
    ema.load_state_dict(best["ema"])
    return {"model": ema, "info": info, "state": state, "stop_reason": stop}


def refit_shifts(model, pb, peer, frames_of, ds, indices, args, device, dtype) -> dict:
    """Add :func:`energy_shift_correction` of the training residuals to the peer's per-element shifts."""
    idx = np.asarray(indices)
    e, _ = predict(model, pb, peer, frames_of, idx, args.val_batch_size, device, dtype)
    r = ds.energies[idx] - e
    d = energy_shift_correction([ds[int(i)]["numbers"] for i in idx], r)
    shifts = model.atomic_energy_output_block.energy_shifts
    with torch.no_grad():
        for z, v in d.items():
            shifts[z - 1] += v  # one-hot column k is element k + 1
    after = ds.energies[idx] - predict(model, pb, peer, frames_of, idx, args.val_batch_size, device, dtype)[0]
    return {
        "delta_ev": d,
        "residual_mean_mev_before": 1000 * float(r.mean()),
        "residual_mean_mev_after": 1000 * float(after.mean()),
        "n_frames": int(idx.size),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    pb, peer = _import_peer()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # the peer creates tensors at call time in the default dtype
    device = torch.device("cpu")

    from spherequant.models import data as data_mod

    ds = data_mod.load_dataset(DATASET)
    if args.n_train + args.n_val >= len(ds):
        fail(f"--n-train + --n-val must leave test frames (< {len(ds)})")
    parent_dir = Path(args.parent_run)
    sp, same = load_split(len(ds), args.n_train, args.n_val, args.split_seed, parent_dir / "split")
    test_idx = sp.test if args.n_test is None else sp.test[: args.n_test]
    cutoff = args.peer_model["cutoff"]
    print(f"building the peer's inputs ({len(sp.train) + len(sp.val)} frames) ...", flush=True)
    needed = np.concatenate([sp.train, sp.val])
    frames_of = dict(zip((int(i) for i in needed), pb.peer_frames(peer, ds, needed, cutoff, dtype)))

    run = train(args, pb, peer, ds, sp, frames_of, device, dtype)
    model, state = run["model"], run["state"]
    refit = None
    if args.refit_energy_shift:
        refit = refit_shifts(model, pb, peer, frames_of, ds, sp.train, args, device, dtype)
    val = score(model, pb, peer, frames_of, ds, sp.val, args, device, dtype)
    print(
        f"scoring the best EMA model (epoch {state['best']['epoch']}) on {len(test_idx)} test frames ...",
        flush=True,
    )
    frames_of.update(zip((int(i) for i in test_idx), pb.peer_frames(peer, ds, test_idx, cutoff, dtype)))
    test = score(model, pb, peer, frames_of, ds, test_idx, args, device, dtype)
    parent = parent_figures(parent_dir)
    at_time = equal_time_block(parent_dir, args.equal_time, state["history"]) if parent else None
    n_atoms = int(ds.n_atoms[0]) if (ds.n_atoms == ds.n_atoms[0]).all() else None
    size = dict(args.size)
    size["parameters"] = {
        "ours": our_parameter_count(size["ours"]),
        "peer": run["info"]["parameters"]["total"],
    }
    results = {
        "benchmark": "anchor_peer",
        "command": command_line("benchmarks/anchor_peer.py", argv),
        "env": env_info(so3krates_torch=peer["version"]),
        "data": {
            "dataset": DATASET,
            "n_train": args.n_train,
            "n_val": args.n_val,
            "split_seed": args.split_seed,
            "n_test_scored": len(test_idx),
            "n_test_available": len(sp.test),
            "split_equals_parent": same,
        },
        "recipe": _recipe(args),
        "parent_recipe": args.parent_recipe,
        "size": size,
        "model": run["info"],
        "energy_shift_refit": refit,
        "training": {
            "epochs": state["epoch"],
            "stop_reason": run["stop_reason"],
            "cpu_s": state["cpu_s"],
            "wall_s": state["wall_s"],
            "budget_epochs": args.epochs,
            "budget_cpu_hours": args.cpu_hours,
            "best": state["best"],
        },
        "history": state["history"],
        "validation": val,
        "test": test,
        "parent": parent,
        "parent_at_equal_time": at_time,
        "units": "energy meV and meV/atom, forces meV/Angstrom per Cartesian component, loss eV^2 (/A^2), "
        "times s; history rows are the EMA model before the energy-shift refit, 'validation' and 'test' "
        "after it",
    }
    p = size["parameters"]
    print_comparison(
        f"# peer so3krates-torch {peer['version']} ({args.peer_model['features']} features, "
        f"{args.peer_model['layers']} layers, {p['peer']} parameters; ours {p['ours']}), {state['epoch']} "
        f"epochs, {state['cpu_s'] / 3600:.3f} CPU h ({run['stop_reason']}); split "
        f"{args.n_train}/{args.n_val} seed {args.split_seed} (equals parent's: {same})",
        comparison_rows("peer", val, test, parent, n_atoms, at_time),
    )
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
