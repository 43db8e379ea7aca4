"""Anchor row: MACE (PyPI ``mace-torch`` 0.3.16) trained on our parents' split, scored on our test frames.

MACE is trained here through its Python API (its ``ScaleShiftMACE`` model, ``AtomicData`` graphs, loss,
optimizer parameter groups and statistics helpers), in a small resumable loop, with the recipe of its
command line for the model ``MACE``: 64 channels, ``max_L = 1`` (hidden irreps ``64x0e + 64x1o``),
spherical harmonics up to l = 3, correlation order 3, two interactions (the first a
``RealAgnosticInteractionBlock``, then ``RealAgnosticResidualInteractionBlock``), 8 Bessel functions,
polynomial cutoff p = 5, radial MLP [64, 64, 64], readout MLP ``16x0e``, SiLU gates, cutoff 5 Angstrom;
isolated-atom energies E0 by least squares on the training frames ("average"), atomic energies scaled by
the RMS training force ("rms_forces_scaling"), messages normalised by the average neighbour count of the
training frames; batch 5, Adam with AMSGrad, lr 0.01, weight decay 5e-7 on the interaction linear and
product weights, ReduceLROnPlateau (factor 0.8, patience 50) on the validation loss, gradient clipping at
10, EMA of the weights with decay 0.99, loss ``1 * mean(((E - E_ref) / n_atoms)^2) + 100 *
mean((F - F_ref)^2)``; float64 (its default dtype).

Data and split are ours: the shipped ``azobenzene-gfn2-500K`` set, drawn by
:func:`spherequant.models.data.split` with ``n_train`` 950, ``n_val`` 50, ``split_seed`` 0, exactly as
``spherequant train`` draws it for ``benchmarks/runs/azobenzene_fp32_parent`` (when that folder's
``split/`` exists the indices are compared with it, read-only, and the result is recorded). The EMA
weights with the lowest validation loss are scored on the test frames (all 4000, or the first
``--n-test`` of the seeded test split, the frames :func:`spherequant.models.evaluation.accuracy_and_lee`
uses): energy MAE in meV and meV/atom, force MAE in meV/Angstrom per Cartesian component, validation and
test reported separately. When the parent's ``metrics.csv`` exists its best validation row (and its
``test_metrics.json`` when the run has finished) is recorded beside MACE's, and, with ``--equal-time cpu``
(default; ``wall`` or ``off``), its validation curve at MACE's cumulative process CPU time (the parent's
clock: the sum of its ``metrics.csv`` ``epoch_time_s``), so a short run still compares at equal budget. The
parts shared with the peer's anchor row (``anchor_peer.py``) live in ``benchmarks/_anchor.py``.

Budget: ``--epochs N`` and/or ``--cpu-hours H`` (process CPU time, summed over resumed sessions; no new
epoch starts once it is spent, so the last epoch may overrun it by one epoch's cost). Each epoch ends with
an atomic checkpoint (``last.pt``; the best EMA weights in ``best.pt``) in ``--run-dir``; ``--resume``
continues from it exactly (same batch order, optimizer, scheduler and EMA state).

MACE is *not* a dependency of spherequant. Install it into a separate environment that sees the
project's environment (torch, numpy, ase, spherequant) but whose own e3nn 0.4.4 (pinned by mace-torch
0.3.16) shadows the project's newer e3nn; from the repository root with the project's venv active::

    python -m venv /tmp/mace-venv
    SP=$(/tmp/mace-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    python -c "import site; print('import site; site.addsitedir(%r)' % site.getsitepackages()[0])" \\
        > "$SP/project.pth"
    /tmp/mace-venv/bin/pip install --no-deps -r benchmarks/mace_env/requirements.txt

(``--no-deps`` keeps pip from replacing torch; the ``.pth`` line puts the project's site-packages after
the new venv's own, which is why plain ``--system-site-packages`` is not used: the base interpreter has
no torch.)

Usage::

    # smoke test (minutes): one epoch on 20 training frames, 10 test frames, results outside the repo
    OMP_NUM_THREADS=1 nice -n 10 /tmp/mace-venv/bin/python benchmarks/anchor_mace.py --epochs 1 \\
        --n-train 20 --n-val 10 --n-test 10 --run-dir /tmp/anchor_mace_smoke \\
        --json /tmp/anchor_mace_smoke.json
    # the anchor row: the parent's CPU budget (kill and rerun with --resume at any time)
    OMP_NUM_THREADS=1 nice -n 10 /tmp/mace-venv/bin/python benchmarks/anchor_mace.py --cpu-hours H \\
        --run-dir benchmarks/runs/anchor_mace [--resume]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

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
    "error_metrics",
    "load_split",
    "main",
    "parent_figures",
    "parse_args",
]

MACE_VERSION = "0.3.16"
HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "anchor_mace.json"
INSTALL_HINT = (
    "install it into a separate virtual environment (see the docstring of benchmarks/anchor_mace.py):\n"
    "    python -m venv /tmp/mace-venv   # plus the project.pth line of the docstring\n"
    "    /tmp/mace-venv/bin/pip install --no-deps -r benchmarks/mace_env/requirements.txt\n"
    "then run this script with /tmp/mace-venv/bin/python"
)
# settings a resumed run must share with the checkpoint (the budget, paths and progress may change)
RECIPE_KEYS = (
    "n_train",
    "n_val",
    "split_seed",
    "channels",
    "max_L",
    "max_ell",
    "correlation",
    "interactions",
    "cutoff",
    "num_bessel",
    "num_poly_cutoff",
    "batch_size",
    "lr",
    "weight_decay",
    "amsgrad",
    "lr_factor",
    "patience",
    "ema_decay",
    "clip_grad",
    "energy_weight",
    "forces_weight",
    "dtype",
    "seed",
)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``--help``); a bad value exits with status 2 and one ``error:`` line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, run_dir="benchmarks/runs/anchor_mace", json_path=str(DEFAULT_JSON))
    ap.add_argument("--channels", type=positive(int), default=64)
    ap.add_argument("--max-L", type=int, choices=(0, 1, 2, 3), default=1, help="hidden irreps up to this L")
    ap.add_argument("--max-ell", type=positive(int), default=3, help="spherical harmonics of the edges")
    ap.add_argument("--correlation", type=positive(int), default=3)
    ap.add_argument("--interactions", type=positive(int), default=2)
    ap.add_argument("--cutoff", type=positive(float), default=5.0, help="Angstrom")
    ap.add_argument("--num-bessel", type=positive(int), default=8)
    ap.add_argument("--num-poly-cutoff", type=positive(int), default=5)
    ap.add_argument("--batch-size", type=positive(int), default=5)
    ap.add_argument("--val-batch-size", type=positive(int), default=25)
    ap.add_argument("--lr", type=positive(float), default=0.01)
    ap.add_argument("--weight-decay", type=float, default=5e-7)
    ap.add_argument("--no-amsgrad", dest="amsgrad", action="store_false")
    ap.add_argument("--lr-factor", type=positive(float), default=0.8)
    ap.add_argument("--patience", type=positive(int), default=50)
    ap.add_argument("--ema-decay", type=float, default=0.99)
    ap.add_argument("--clip-grad", type=positive(float), default=10.0)
    ap.add_argument("--energy-weight", type=float, default=1.0)
    ap.add_argument("--forces-weight", type=float, default=100.0)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    args = ap.parse_args(argv)
    check_common_args(ap, args)
    if not 0.0 <= args.ema_decay < 1.0:
        ap.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.weight_decay < 0 or args.energy_weight < 0 or args.forces_weight < 0:
        ap.error("--weight-decay, --energy-weight and --forces-weight must be >= 0")
    if args.lr_factor >= 1:
        ap.error(f"--lr-factor must be < 1, got {args.lr_factor}")
    return args


def _recipe(args) -> dict:
    return {k: getattr(args, k) for k in RECIPE_KEYS}


# ----------------------------------------------------------------------------------------------------------
# MACE
# ----------------------------------------------------------------------------------------------------------
def _import_mace() -> dict:
    """MACE's modules, or exit with status 2 and the install instructions."""
    # e3nn 0.4.4 torch.load()s its constants (which pickle a ``slice``) with torch's default weights_only
    torch.serialization.add_safe_globals([slice])
    # MACE scripts some blocks at import time; TorchScript's notes on annotations are noise here
    warnings.filterwarnings("ignore", message="The TorchScript type system", category=UserWarning)
    try:
        import e3nn
        from e3nn import o3
        from mace import data as mace_data
        from mace import modules
        from mace.tools import torch_geometric
        from mace.tools.scripts_utils import get_params_options
        from mace.tools.utils import AtomicNumberTable
        from torch_ema import ExponentialMovingAverage
    except ImportError as err:
        fail(f"mace-torch=={MACE_VERSION} is not importable ({err}); {INSTALL_HINT}")
    from importlib.metadata import version

    ver = version("mace-torch")
    if ver != MACE_VERSION:
        print(f"warning: mace-torch {ver} found; this benchmark was written against {MACE_VERSION}")
    return SimpleNamespace(
        version=ver,
        e3nn_version=e3nn.__version__,
        o3=o3,
        data=mace_data,
        modules=modules,
        Batch=torch_geometric.Batch,
        get_params_options=get_params_options,
        AtomicNumberTable=AtomicNumberTable,
        EMA=ExponentialMovingAverage,
    )


def _configs(mace, ds, indices) -> list:
    """MACE ``Configuration`` objects (eV, Angstrom) of frames ``indices`` of our data set."""
    out = []
    for i in indices:
        fr = ds[int(i)]
        out.append(
            mace.data.Configuration(
                atomic_numbers=np.asarray(fr["numbers"], dtype=np.int64),
                positions=np.asarray(fr["positions"], dtype=np.float64),
                properties={"energy": float(fr["energy"]), "forces": np.asarray(fr["forces"], np.float64)},
                property_weights={"energy": 1.0, "forces": 1.0},
                pbc=(False, False, False),
                cell=np.zeros((3, 3)),
            )
        )
    return out


def _graphs(mace, configs, z_table, cutoff) -> list:
    return [
        mace.data.AtomicData.from_config(c, z_table=z_table, cutoff=cutoff, heads=["Default"])
        for c in configs
    ]


def build_model(mace, args, train_graphs, train_configs, z_table):
    """``ScaleShiftMACE`` as MACE's command line builds its model ``MACE``, with its training statistics."""
    o3, modules = mace.o3, mace.modules
    e0 = mace.data.compute_average_E0s(train_configs, z_table)
    atomic_energies = np.array([e0[z] for z in z_table.zs])
    loader = [mace.Batch.from_data_list(train_graphs[k : k + 50]) for k in range(0, len(train_graphs), 50)]
    avg_nb = float(modules.compute_avg_num_neighbors(loader))
    _, rms = modules.scaling_classes["rms_forces_scaling"](loader, atomic_energies)
    scale = float(np.asarray(rms).reshape(-1)[0])
    hidden = (o3.Irreps.spherical_harmonics(args.max_L) * args.channels).sort().irreps.simplify()
    torch.manual_seed(args.seed)
    model = modules.ScaleShiftMACE(
        r_max=args.cutoff,
        num_bessel=args.num_bessel,
        num_polynomial_cutoff=args.num_poly_cutoff,
        max_ell=args.max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=args.interactions,
        num_elements=len(z_table),
        hidden_irreps=hidden,
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=atomic_energies,
        avg_num_neighbors=avg_nb,
        atomic_numbers=z_table.zs,
        correlation=args.correlation,
        gate=modules.gate_dict["silu"],
        use_reduced_cg=False,
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        heads=["Default"],
        atomic_inter_scale=scale,
        atomic_inter_shift=0.0,
    )
    info = {
        "hidden_irreps": str(hidden),
        "E0_eV": {int(z): float(e) for z, e in e0.items()},
        "avg_num_neighbors": avg_nb,
        "atomic_inter_scale": scale,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return model, info


def predict(model, mace, graphs, batch_size, device):
    """Energies (n_frames,) and forces (n_atoms, 3) of ``model`` on ``graphs`` (float64 numpy, eV, eV/A)."""
    es, fs = [], []
    for k in range(0, len(graphs), batch_size):
        b = mace.Batch.from_data_list(graphs[k : k + batch_size]).to(device)
        out = model(b.to_dict(), training=False, compute_force=True)
        es.append(out["energy"].detach().double().cpu().numpy())
        fs.append(out["forces"].detach().double().cpu().numpy())
    return np.concatenate(es), np.concatenate(fs)


def score(model, mace, graphs, ds, indices, args, device) -> dict:
    e, f = predict(model, mace, graphs, args.val_batch_size, device)
    idx = np.asarray(indices)
    f_ref = np.concatenate([ds[int(i)]["forces"] for i in idx])
    return error_metrics(
        e, ds.energies[idx], ds.n_atoms[idx], f, f_ref, args.energy_weight, args.forces_weight
    )


#: buffers the model's constructor rebuilds from the recipe (MACE's symmetric-contraction coupling matrices,
#: about three quarters of its state): checkpoints keep their SHA-256 instead of their values
REBUILT_BUFFER = ".U_matrix_"


def _digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def stored_state(model) -> dict:
    """The model's state for a checkpoint: every tensor (copied) except the rebuilt buffers, whose SHA-256
    digests are kept so :func:`load_stored_state` can check the rebuilt ones equal them bit for bit."""
    tensors, rebuilt = {}, {}
    for name, value in model.state_dict().items():
        if REBUILT_BUFFER in name:
            rebuilt[name] = _digest(value)
        else:
            tensors[name] = value.detach().clone()
    return {"tensors": tensors, "rebuilt": rebuilt}


def load_stored_state(model, stored: dict) -> None:
    """Load :func:`stored_state`'s dict (or a full ``state_dict`` of older checkpoints) into a model built
    from the same recipe; a rebuilt buffer that differs from the stored digest exits 2 naming it."""
    if "tensors" not in stored:
        model.load_state_dict(stored)
        return
    keys = model.load_state_dict(stored["tensors"], strict=False)
    # names the checkpoint and the model disagree on: absent from both, or rebuilt by one only
    mismatch = sorted(set(keys.missing_keys) ^ set(stored["rebuilt"]))
    if mismatch or keys.unexpected_keys:
        fail(f"checkpoint does not fit the model: {mismatch} not matched, unexpected {keys.unexpected_keys}")
    state = model.state_dict()
    for name, digest in stored["rebuilt"].items():
        if _digest(state[name]) != digest:
            fail(f"the rebuilt buffer {name} differs from the checkpoint's (another MACE or e3nn version?)")


def train(args, mace, ds, sp, device) -> dict:
    """The resumable epoch loop; returns the run's record (history, best row, budget used)."""
    last_path, best_path = claim_run_dir(args.run_dir, args.resume)
    z_table = mace.AtomicNumberTable(sorted({int(z) for i in sp.train for z in ds[int(i)]["numbers"]}))
    train_configs = _configs(mace, ds, sp.train)
    train_graphs = _graphs(mace, train_configs, z_table, args.cutoff)
    val_graphs = _graphs(mace, _configs(mace, ds, sp.val), z_table, args.cutoff)
    graph_of = dict(zip((int(i) for i in sp.train), train_graphs))
    model, info = build_model(mace, args, train_graphs, train_configs, z_table)
    model = model.to(device)
    opt_args = SimpleNamespace(
        lr=args.lr,
        weight_decay=args.weight_decay,
        amsgrad=args.amsgrad,
        beta=0.9,
        lr_params_factors="{}",
        freeze=None,
    )
    opt = torch.optim.Adam(**mace.get_params_options(opt_args, model))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=args.lr_factor, patience=args.patience)
    ema = mace.EMA(model.parameters(), decay=args.ema_decay)
    loss_fn = mace.modules.WeightedEnergyForcesLoss(
        energy_weight=args.energy_weight, forces_weight=args.forces_weight
    )
    state = new_state()
    ck = resume_checkpoint(last_path, _recipe(args), args.resume, map_location=device)
    if ck is not None:
        load_stored_state(model, ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        ema.load_state_dict(ck["ema"])
        state = ck["state"]
    print(
        f"MACE {info['hidden_irreps']}, {info['parameters']} parameters, avg neighbours "
        f"{info['avg_num_neighbors']:.3f}, scale {info['atomic_inter_scale']:.4g} eV/A",
        flush=True,
    )
    train_idx = np.asarray(sp.train)
    stop = budget_state(state["epoch"], state["cpu_s"], args.epochs, args.cpu_hours)
    while stop is None:
        epoch = state["epoch"] + 1
        c0, w0 = time.process_time(), time.perf_counter()
        model.train()
        order = np.random.default_rng([args.seed, epoch]).permutation(train_idx)
        n_batches = math.ceil(len(order) / args.batch_size)
        loss_sum = 0.0
        for k in range(n_batches):
            b = mace.Batch.from_data_list(
                [graph_of[int(i)] for i in order[k * args.batch_size :][: args.batch_size]]
            )
            b = b.to(device)
            opt.zero_grad(set_to_none=True)
            out = model(b.to_dict(), training=True, compute_force=True)
            loss = loss_fn(pred=out, ref=b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=args.clip_grad)
            opt.step()
            ema.update()
            loss_sum += float(loss.detach())
            if (k + 1) % args.log_every == 0 or k + 1 == n_batches:
                print(
                    f"  epoch {epoch} batch {k + 1}/{n_batches} train loss {loss_sum / (k + 1):.4g} "
                    f"({time.perf_counter() - w0:.0f} s)",
                    flush=True,
                )
        with ema.average_parameters():
            val = score(model, mace, val_graphs, ds, sp.val, args, device)
            if state["best"] is None or val["loss"] < state["best"]["val_loss"]:
                best_state = stored_state(model)
                is_best = True
            else:
                is_best = False
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
            save_torch(best_path, {"model": best_state, "row": row, "info": info, "recipe": _recipe(args)})
        save_torch(
            last_path,
            {
                "model": stored_state(model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                # collected_params: the weights put aside while validating with the EMA ones, stale here
                "ema": {**ema.state_dict(), "collected_params": None},
                "state": state,
                "info": info,
                "recipe": _recipe(args),
            },
        )
        print(
            f"epoch {epoch}: val force MAE {row['val_forces_mae']:.3f} meV/A, energy MAE "
            f"{row['val_energy_mae']:.3f} meV, lr {row['lr']:.3g}, CPU {state['cpu_s'] / 3600:.3f} h"
            + (" *best*" if is_best else ""),
            flush=True,
        )
        stop = budget_state(state["epoch"], state["cpu_s"], args.epochs, args.cpu_hours)
    best = torch.load(best_path, map_location=device, weights_only=False)
    load_stored_state(model, best["model"])
    return {"model": model, "z_table": z_table, "info": info, "state": state, "stop_reason": stop}


def main(argv=None) -> dict:
    args = parse_args(argv)
    mace = _import_mace()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # MACE builds its buffers and AtomicData in the default dtype
    device = torch.device("cpu")

    from spherequant.models import data as data_mod

    ds = data_mod.load_dataset(DATASET)
    if args.n_train + args.n_val >= len(ds):
        fail(f"--n-train + --n-val must leave test frames (< {len(ds)})")
    parent_dir = Path(args.parent_run)
    sp, same = load_split(len(ds), args.n_train, args.n_val, args.split_seed, parent_dir / "split")
    test_idx = sp.test if args.n_test is None else sp.test[: args.n_test]

    run = train(args, mace, ds, sp, device)
    model, z_table, state = run["model"], run["z_table"], run["state"]
    val_graphs = _graphs(mace, _configs(mace, ds, sp.val), z_table, args.cutoff)
    val = score(model, mace, val_graphs, ds, sp.val, args, device)
    print(
        f"scoring the best EMA model (epoch {state['best']['epoch']}) on {len(test_idx)} test frames ...",
        flush=True,
    )
    test_graphs = _graphs(mace, _configs(mace, ds, test_idx), z_table, args.cutoff)
    test = score(model, mace, test_graphs, ds, test_idx, args, device)
    parent = parent_figures(parent_dir)
    n_atoms = int(ds.n_atoms[0]) if (ds.n_atoms == ds.n_atoms[0]).all() else None
    at_time = equal_time_block(parent_dir, args.equal_time, state["history"]) if parent else None
    results = {
        "benchmark": "anchor_mace",
        "command": command_line("benchmarks/anchor_mace.py", argv),
        "env": env_info(mace_torch=mace.version, e3nn=mace.e3nn_version),
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
        "model": run["info"],
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
        "units": "energy meV and meV/atom, forces meV/Angstrom per Cartesian component, loss eV^2 (/A^2)",
    }
    rows = comparison_rows("MACE", val, test, parent, n_atoms, at_time)
    print_comparison(
        f"# MACE {mace.version} ({run['info']['hidden_irreps']}, {run['info']['parameters']} parameters), "
        f"{state['epoch']} epochs, {state['cpu_s'] / 3600:.3f} CPU h ({run['stop_reason']}); "
        f"split {args.n_train}/{args.n_val} seed {args.split_seed} (equals parent's: {same})",
        rows,
    )
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
