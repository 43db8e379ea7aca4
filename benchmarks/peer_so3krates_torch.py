"""Peer benchmark: our So3krates against the PyPI package ``so3krates-torch`` 0.2.1, same size, same run.

The peer (``so3krates_torch.modules.models.So3krates``, a PyTorch port of the JAX mlff So3krates) and our
:class:`spherequant.models.so3krates.So3krates` are built at the same size (features, layers, heads,
degrees, cutoff, 32 radial functions, dtype) and measured in one process:

(a) parameter counts (total and trainable) of both;
(b) inference of energy **and** forces (``-dE/dR`` by autograd in both) on real azobenzene frames of the
    shipped ``azobenzene-gfn2-500K`` set: latency of one molecule (median of ``--repeats`` timed calls after
    ``--warmup`` calls) and throughput in molecules/s at batch 64 and ``--large-batch`` (default 256), on
    the CPU and, when available, on CUDA (CUDA events, synchronised). Neighbour lists are built once,
    outside the timed region, by each library's own code (ours :func:`~spherequant.models.neighbors.
    radius_graph`, the peer's ``AtomicData.from_config``), so only the model call is timed;
(c) with ``--train-epochs E``: both trained from scratch on the same 950 / 50 split (seed 0) with the same
    epochs, batch size 5, Adam, learning rate, loss ``w_E mean(((E - E_ref) / n_atoms)^2) +
    w_F mean((F - F_ref)^2)``, EMA of the weights, gradient clipping and reduce-on-plateau schedule (the
    defaults of :class:`spherequant.models.train.TrainConfig`); per-element energy shift and scale from the
    training frames given to both. Ours runs through :func:`spherequant.models.train.train`, the peer
    through a small loop here; the best-validation EMA weights of each are scored on the same test frames
    (energy MAE in meV, force MAE in meV/Angstrom per component).

Ratios are ours / peer: for times a ratio below 1 means ours is faster, for throughput above 1 means ours
is faster; for errors below 1 means ours is more accurate. A quick check that both are rotation-equivariant
(force LEE under one Haar rotation) guards against comparing a broken configuration.

Differences the peer's API imposes (also in the JSON under ``"notes"``): the peer has no PhysNet radial
basis (it offers gaussian / bernstein / bessel; gaussian, its default, is used); it normalises messages by
an average neighbour count (computed here from the frames, as its own training script does); it needs
``features`` divisible by the number of degrees (one geometric head per degree) as well as by ``heads``.
At equal width the peer has fewer parameters by design (per-head block-diagonal query/key/value maps and a
single linear exchange layer, where ours uses full F x F maps and a two-layer exchange MLP), and its atomic
energies have no isolated-atom reference (ours subtracts the network's output for a lone atom of each
element), so its untrained energy offset is larger.

The peer is *not* a dependency of spherequant. Install it into a separate environment that sees the
project's packages (torch, spherequant) through a ``.pth`` line (plain ``--system-site-packages`` would see
the base interpreter's, which has no torch); from the repository root with the project's venv active::

    python -m venv /tmp/peer-venv
    SP=$(/tmp/peer-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    python -c "import site; print('import site; site.addsitedir(%r)' % site.getsitepackages()[0])" \\
        > "$SP/project.pth"
    /tmp/peer-venv/bin/pip install --no-deps -r benchmarks/peer_env/requirements.txt

Usage::

    OMP_NUM_THREADS=1 /tmp/peer-venv/bin/python benchmarks/peer_so3krates_torch.py          # default size
    OMP_NUM_THREADS=1 /tmp/peer-venv/bin/python benchmarks/peer_so3krates_torch.py \\
        --features 36 --layers 1 --repeats 5 --large-batch 64 --json /tmp/peer.json        # smoke run
    /tmp/peer-venv/bin/python benchmarks/peer_so3krates_torch.py --train-epochs 100        # + training
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

import spherequant
from spherequant._report import format_table, write_json

__all__ = ["main"]

PEER_VERSION = "0.2.1"
INSTALL_HINT = (
    "install it into a separate virtual environment (it must not become a dependency of spherequant):\n"
    "    python -m venv /tmp/peer-venv   # plus the project.pth line of the docstring\n"
    "    /tmp/peer-venv/bin/pip install --no-deps -r benchmarks/peer_env/requirements.txt\n"
    "then run this script with /tmp/peer-venv/bin/python"
)
DATASET = "azobenzene-gfn2-500K"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "peer_so3krates_torch.json"


def _import_peer():
    """The peer's modules, or exit with status 2 and the install instructions."""
    try:
        import so3krates_torch
        from so3krates_torch.data.atomic_data import AtomicData
        from so3krates_torch.data.utils import KeySpecification, config_from_atoms
        from so3krates_torch.modules.models import So3krates as PeerSo3krates
        from so3krates_torch.tools import torch_geometric
        from so3krates_torch.tools.utils import AtomicNumberTable
    except ImportError as err:
        sys.exit(
            f"error: the peer package so3krates-torch=={PEER_VERSION} is not importable ({err});\n"
            f"{INSTALL_HINT}"
        )
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("so3krates-torch")
    except PackageNotFoundError:
        ver = getattr(so3krates_torch, "__version__", "unknown")
    if ver != PEER_VERSION:
        print(f"warning: so3krates-torch {ver} found; this benchmark was written against {PEER_VERSION}")
    return {
        "version": ver,
        "So3krates": PeerSo3krates,
        "AtomicData": AtomicData,
        "KeySpecification": KeySpecification,
        "config_from_atoms": config_from_atoms,
        "Batch": torch_geometric.Batch,
        "z_table": AtomicNumberTable(list(range(1, 119))),
    }


@contextlib.contextmanager
def _default_dtype(dtype):
    """The peer reads (and its constructor *sets*) torch's global default dtype; restore it afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ----------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------
def build_ours(args, dtype, device):
    from spherequant.models.so3krates import So3krates

    torch.manual_seed(args.seed)
    m = So3krates(
        num_features=args.features,
        num_layers=args.layers,
        num_heads=args.heads,
        degrees=tuple(args.degrees),
        cutoff=args.cutoff,
        num_rbf=args.num_rbf,
    )
    m.validate_inputs = False  # no per-call input checks (a device sync) inside the timed region
    return m.to(device=device, dtype=dtype)


def build_peer(peer, args, dtype, device, avg_num_neighbors):
    torch.manual_seed(args.seed)
    with _default_dtype(dtype):
        m = peer["So3krates"](
            r_max=args.cutoff,
            num_radial_basis_fn=args.num_rbf,
            degrees=list(args.degrees),
            num_features=args.features,
            num_heads=args.heads,
            num_layers=args.layers,
            num_elements=118,
            avg_num_neighbors=avg_num_neighbors,
            final_mlp_layers=2,
            radial_basis_fn="gaussian",
            cutoff_fn="cosine",
            seed=args.seed,
            dtype=dtype,
            device=str(device),
        )
    return m.to(device=device, dtype=dtype)


def param_counts(model) -> dict:
    return {
        "total": int(sum(p.numel() for p in model.parameters())),
        "trainable": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
    }


def set_peer_energy_statistics(model, shifts: dict, scale: float) -> None:
    """Give the peer the same per-element energy shift (eV) and atomic-energy scale as ours gets."""
    head = model.atomic_energy_output_block
    with torch.no_grad():
        for z, s in shifts.items():
            head.energy_shifts[int(z) - 1] = s  # one-hot column k is element k + 1
        head.energy_scales.weight.fill_(scale)


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------
def peer_frames(peer, ds, indices, cutoff, dtype) -> list:
    """The peer's ``AtomicData`` (its own neighbour list) for frames ``indices`` of ``ds``."""
    import ase

    out = []
    with _default_dtype(dtype):
        for i in indices:
            fr = ds[int(i)]
            atoms = ase.Atoms(numbers=fr["numbers"], positions=fr["positions"])
            cfg = peer["config_from_atoms"](atoms, key_specification=peer["KeySpecification"]())
            out.append(
                peer["AtomicData"].from_config(cfg, z_table=peer["z_table"], cutoff=cutoff, cutoff_lr=None)
            )
    return out


def peer_batch(peer, frames, device, dtype) -> dict:
    b = peer["Batch"].from_data_list(frames).to(device)
    d = b.to_dict()
    for k, v in d.items():
        if torch.is_tensor(v) and v.is_floating_point():
            d[k] = v.to(dtype)
    return d


def our_batch(ds, indices, cutoff, device, dtype) -> dict:
    from spherequant.models import data as data_mod
    from spherequant.models.neighbors import radius_graph

    b = data_mod.collate(ds, indices, device=device, dtype=dtype)
    multi = b.num_graphs > 1
    return {
        "z": b.z,
        "pos": b.pos,
        "batch": b.batch,
        "num_graphs": b.num_graphs,
        "edge_index": radius_graph(b.pos, cutoff, b.batch if multi else None),
    }


def call_ours(model, b, training=False):
    return model(b["z"], b["pos"], b["batch"], edge_index=b["edge_index"], num_graphs=b["num_graphs"])


def call_peer(model, d, training=False):
    if not training:  # the peer mutates positions (requires_grad_) in place; keep the caller's tensor clean
        d = dict(d)
        d["positions"] = d["positions"].detach()
    return model(d, training=training, compute_force=True)


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device) -> tuple[float, float]:
    """(wall ms, process CPU ms) of one call; on CUDA the wall time comes from CUDA events."""
    c0 = time.process_time()
    if device.type == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize(device)
        wall = float(s.elapsed_time(e))
    else:
        t0 = time.perf_counter()
        fn()
        wall = 1e3 * (time.perf_counter() - t0)
    return wall, 1e3 * (time.process_time() - c0)


def time_pair(fns: dict, device, repeats: int, warmup: int) -> dict:
    """Median wall and CPU times (ms) of each callable; calls alternate so background load hits both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    wall: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for r in range(repeats):
        names = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in names:
            w, c = _time_once(fns[k], device)
            wall[k].append(w)
            cpu[k].append(c)
    return {
        k: {"ms_median": statistics.median(wall[k]), "ms_min": min(wall[k]),
            "cpu_ms_median": statistics.median(cpu[k])}
        for k in fns
    }  # fmt: skip


def lee_forces(fn_forces, pos, R) -> float:
    """max over atoms of ||F(R x) - R F(x)|| in meV/Angstrom, for one rotation R (float64 reference)."""
    f0 = fn_forces(pos)
    f1 = fn_forces(pos @ R.T)
    return float(1000 * (f1.double() - f0.double() @ R.double().T).norm(dim=-1).max())


def benchmark_device(args, peer, ds, device, dtype, results, rows, avg_nb):
    ours = build_ours(args, dtype, device).eval()
    theirs = build_peer(peer, args, dtype, device, avg_nb).eval()
    sizes = [1, 64, args.large_batch] if args.large_batch != 64 else [1, 64]
    for n_mol in sizes:
        idx = np.arange(n_mol)
        ob = our_batch(ds, idx, args.cutoff, device, dtype)
        pb = peer_batch(peer, peer_frames(peer, ds, idx, args.cutoff, dtype), device, dtype)
        reps = args.repeats if n_mol == 1 else args.batch_repeats
        warm = args.warmup if n_mol == 1 else 1
        t = time_pair(
            {"ours": lambda ob=ob: call_ours(ours, ob), "peer": lambda pb=pb: call_peer(theirs, pb)},
            device, reps, warm,
        )  # fmt: skip
        mo, mp = t["ours"]["ms_median"], t["peer"]["ms_median"]
        co, cp = t["ours"]["cpu_ms_median"], t["peer"]["cpu_ms_median"]
        case = {
            "device": device.type,
            "molecules": n_mol,
            "atoms": int(ob["z"].shape[0]),
            "edges_ours": int(ob["edge_index"].shape[1]),
            "edges_peer": int(pb["edge_index"].shape[1]),
            "repeats": reps,
            "warmup": warm,
            "ours_ms_median": mo,
            "peer_ms_median": mp,
            "ours_ms_min": t["ours"]["ms_min"],
            "peer_ms_min": t["peer"]["ms_min"],
            "ours_process_cpu_ms_median": co,
            "peer_process_cpu_ms_median": cp,
            "ours_mol_per_s": 1e3 * n_mol / mo,
            "peer_mol_per_s": 1e3 * n_mol / mp,
            "time_ratio_ours_over_peer": mo / mp,
            "cpu_time_ratio_ours_over_peer": co / cp,
            "throughput_ratio_ours_over_peer": mp / mo,
        }
        results["inference"].append(case)
        kind = "latency" if n_mol == 1 else "throughput"
        rows.append(
            [
                device.type,
                kind,
                n_mol,
                mo,
                mp,
                mo / mp,
                co / cp,
                case["ours_mol_per_s"],
                case["peer_mol_per_s"],
                mp / mo,
            ]
        )
        print(f"  {device.type} batch {n_mol}: ours {mo:.3g} ms, peer {mp:.3g} ms", flush=True)

    # sanity: both finite and rotation-equivariant on one molecule (guards the comparison, not a test)
    from spherequant.so3 import random_rotation

    R = torch.as_tensor(random_rotation(seed=args.seed), dtype=dtype, device=device)
    ob = our_batch(ds, [0], args.cutoff, device, dtype)
    pb = peer_batch(peer, peer_frames(peer, ds, [0], args.cutoff, dtype), device, dtype)

    def f_ours(p):
        return call_ours(ours, {**ob, "pos": p})["forces"].detach()

    def f_peer(p):
        return call_peer(theirs, {**pb, "positions": p})["forces"].detach()

    out_o, out_p = call_ours(ours, ob), call_peer(theirs, pb)
    e_o, e_p = float(out_o["energy"][0].detach()), float(out_p["energy"][0].detach())
    results["sanity"][device.type] = {
        "ours_energy_eV_untrained": e_o,
        "peer_energy_eV_untrained": e_p,
        "ours_force_max_meV_per_A_untrained": float(1000 * out_o["forces"].detach().norm(dim=-1).max()),
        "peer_force_max_meV_per_A_untrained": float(1000 * out_p["forces"].detach().norm(dim=-1).max()),
        "ours_force_lee_max_meV_per_A": lee_forces(f_ours, ob["pos"], R),
        "peer_force_lee_max_meV_per_A": lee_forces(f_peer, pb["positions"], R),
    }
    if not (math.isfinite(e_o) and math.isfinite(e_p)):
        raise RuntimeError(f"non-finite energy on {device}: ours {e_o}, peer {e_p}")


def avg_num_neighbors(peer, ds, indices, cutoff, dtype) -> float:
    frames = peer_frames(peer, ds, indices, cutoff, dtype)
    edges = sum(int(f.edge_index.shape[1]) for f in frames)
    atoms = sum(int(f.positions.shape[0]) for f in frames)
    return edges / atoms


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def _loss(e, e_ref, n_atoms, f, f_ref, ew, fw):
    de = (e - e_ref) / n_atoms
    df = f - f_ref
    return ew * (de * de).mean() + fw * (df * df).mean(), (de * de).mean(), (df * df).mean()


def evaluate_peer(model, peer, frames_of, ds, indices, batch_size, device, dtype) -> dict:
    """The same metrics as :func:`spherequant.models.train.error_metrics` for the peer."""
    was = model.training
    model.eval()
    e_abs = f_abs = le = lf = 0.0
    n_frames = n_comp = 0
    for s in range(0, len(indices), batch_size):
        idx = indices[s : s + batch_size]
        d = peer_batch(peer, [frames_of[int(i)] for i in idx], device, dtype)
        out = call_peer(model, d)
        e_ref = torch.as_tensor(ds.energies[idx], dtype=torch.float64, device=device)
        f_ref = torch.as_tensor(
            np.concatenate([ds[int(i)]["forces"] for i in idx]), dtype=torch.float64, device=device
        )
        n = torch.as_tensor(ds.n_atoms[idx], dtype=torch.float64, device=device)
        de = out["energy"].detach().double() - e_ref
        df = out["forces"].detach().double() - f_ref
        e_abs += float(de.abs().sum())
        f_abs += float(df.abs().sum())
        le += float(((de / n) ** 2).sum())
        lf += float((df * df).sum())
        n_frames += len(idx)
        n_comp += df.numel()
    model.train(was)
    return {
        "energy_mae": 1000 * e_abs / n_frames,
        "forces_mae": 1000 * f_abs / n_comp,
        "loss_energy": le / n_frames,
        "loss_forces": lf / n_comp,
        "n_frames": n_frames,
    }


def train_peer(args, peer, ds, split, cfg, device, dtype, avg_nb, stats) -> dict:
    """The peer trained with the same recipe as :func:`spherequant.models.train.train` (see module doc)."""
    needed = np.concatenate([split.train, split.val, split.test_used])
    frames = peer_frames(peer, ds, needed, args.cutoff, dtype)
    frames_of = {int(i): f for i, f in zip(needed, frames)}
    model = build_peer(peer, args, dtype, device, avg_nb)
    set_peer_energy_statistics(model, stats.shifts, stats.force_rms)
    ema = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=cfg.lr_factor, patience=cfg.patience, min_lr=cfg.min_lr
    )
    best, best_state, history = None, None, []
    train_idx = np.asarray(split.train)
    t_start = time.perf_counter()
    for epoch in range(1, args.train_epochs + 1):
        model.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(train_idx)  # same order as ours
        loss_sum, n_b = 0.0, 0
        for k in range(0, len(order), cfg.batch_size):
            idx = order[k : k + cfg.batch_size]
            d = peer_batch(peer, [frames_of[int(i)] for i in idx], device, dtype)
            out = call_peer(model, d, training=True)
            e_ref = torch.as_tensor(ds.energies[idx], dtype=dtype, device=device)
            f_ref = torch.as_tensor(
                np.concatenate([ds[int(i)]["forces"] for i in idx]), dtype=dtype, device=device
            )
            n = torch.as_tensor(ds.n_atoms[idx], dtype=dtype, device=device)
            loss, _, _ = _loss(
                out["energy"], e_ref, n, out["forces"], f_ref, cfg.energy_weight, cfg.forces_weight
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            with torch.no_grad():  # EMA of the trainable weights (as ours), other state copied
                ema_params = dict(ema.named_parameters())
                for name, p in model.named_parameters():
                    q = ema_params[name]
                    if p.requires_grad:
                        q.mul_(cfg.ema_decay).add_(p.detach(), alpha=1 - cfg.ema_decay)
                    else:
                        q.copy_(p)
            loss_sum += float(loss.detach())
            n_b += 1
        val = evaluate_peer(ema, peer, frames_of, ds, split.val, cfg.val_batch_size, device, dtype)
        val_loss = cfg.energy_weight * val["loss_energy"] + cfg.forces_weight * val["loss_forces"]
        sched.step(val_loss)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(n_b, 1),
            "val_loss": val_loss,
            "val_energy_mae": val["energy_mae"],
            "val_forces_mae": val["forces_mae"],
        }
        history.append(row)
        if best is None or val_loss < best["val_loss"]:
            best, best_state = dict(row), copy.deepcopy(ema.state_dict())
    train_s = time.perf_counter() - t_start
    ema.load_state_dict(best_state)
    test = evaluate_peer(ema, peer, frames_of, ds, split.test_used, cfg.val_batch_size, device, dtype)
    return {"best": best, "test": test, "history": history, "train_s": train_s}


def train_ours(args, ds, split, cfg_dict, device, out_dir) -> dict:
    from spherequant.models import checkpoints as ckpt_mod
    from spherequant.models.train import evaluate, train

    t0 = time.perf_counter()
    res = train(cfg_dict, dataset=ds)
    train_s = time.perf_counter() - t0
    best = ckpt_mod.load_model(Path(out_dir) / "best.pt", use_ema=True, device=device)
    test = evaluate(best, ds, split.test_used, cfg_dict["val_batch_size"], device)
    hist = [
        {k: r[k] for k in ("epoch", "train_loss", "val_loss", "val_energy_mae", "val_forces_mae")}
        for r in res["history"]
    ]
    return {"best": {k: res["best"][k] for k in hist[0]}, "test": test, "history": hist, "train_s": train_s}


def run_training(args, peer, ds, device, dtype, results):
    from spherequant.models import data as data_mod
    from spherequant.models.train import TrainConfig

    sp = data_mod.split(ds, args.n_train, args.n_val, seed=args.split_seed)
    test_used = sp.test if args.n_test is None else sp.test[: args.n_test]

    parts = SimpleNamespace(train=sp.train, val=sp.val, test=sp.test, test_used=test_used)
    out_dir = args.train_dir or tempfile.mkdtemp(prefix="peer_bench_ours_")
    model_kw = {
        "num_features": args.features,
        "num_layers": args.layers,
        "num_heads": args.heads,
        "degrees": list(args.degrees),
        "cutoff": args.cutoff,
        "num_rbf": args.num_rbf,
    }
    cfg = TrainConfig.from_dict(
        {
            "dataset": DATASET,
            "output_dir": str(out_dir),
            "n_train": args.n_train,
            "n_val": args.n_val,
            "split_seed": args.split_seed,
            "model": model_kw,
            "dtype": args.dtype,
            "epochs": args.train_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "energy_weight": args.energy_weight,
            "forces_weight": args.forces_weight,
            "seed": args.seed,
            "device": str(device),
            "progress": False,
            "plot": False,
            "evaluate_test": False,
            "refit_energy_shift": False,
        }
    )
    stats = data_mod.energy_statistics(ds, sp.train)
    avg_nb = avg_num_neighbors(peer, ds, sp.train, args.cutoff, dtype)
    print(f"training ours ({args.train_epochs} epochs) ...", flush=True)
    ours = train_ours(args, ds, parts, cfg.to_dict(), device, out_dir)
    print(f"training peer ({args.train_epochs} epochs) ...", flush=True)
    theirs = train_peer(args, peer, ds, parts, cfg, device, dtype, avg_nb, stats)
    results["training"] = {
        "device": device.type,
        "dataset": DATASET,
        "n_train": args.n_train,
        "n_val": args.n_val,
        "split_seed": args.split_seed,
        "n_test_scored": len(test_used),
        "epochs": args.train_epochs,
        "recipe": {
            k: v
            for k, v in cfg.to_dict().items()
            if k
            in (
                "batch_size",
                "val_batch_size",
                "lr",
                "weight_decay",
                "scheduler",
                "lr_factor",
                "patience",
                "min_lr",
                "energy_weight",
                "forces_weight",
                "ema_decay",
                "grad_clip",
                "seed",
            )
        },
        "energy_statistics": {"shifts_eV": stats.shifts, "scale": stats.force_rms, "method": stats.method},
        "peer_avg_num_neighbors": avg_nb,
        "ours": ours,
        "peer": theirs,
        "our_output_dir": str(out_dir),
    }
    rows = []
    for key, label in (("energy_mae", "test energy MAE (meV)"), ("forces_mae", "test force MAE (meV/A)")):
        o, p = ours["test"][key], theirs["test"][key]
        rows.append([label, o, p, o / p])
    rows.append(
        ["training time (s)", ours["train_s"], theirs["train_s"], ours["train_s"] / theirs["train_s"]]
    )
    return rows


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------
def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=132)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--degrees", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--cutoff", type=float, default=5.0, help="Angstrom")
    ap.add_argument("--num-rbf", type=int, default=32)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument(
        "--devices",
        default=None,
        help="comma-separated, e.g. 'cpu,cuda' (default: cpu, plus cuda when available)",
    )
    ap.add_argument("--repeats", type=int, default=20, help="timed calls for the one-molecule latency")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-repeats", type=int, default=5, help="timed calls per throughput batch")
    ap.add_argument("--large-batch", type=int, default=256, help="second throughput batch (molecules)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-epochs", type=int, default=0, help="also train both for this many epochs")
    ap.add_argument("--train-device", default=None, help="device for training (default: the first device)")
    ap.add_argument("--n-train", type=int, default=950)
    ap.add_argument("--n-val", type=int, default=50)
    ap.add_argument("--n-test", type=int, default=None, help="score only the first N test frames (all)")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--energy-weight", type=float, default=0.01)
    ap.add_argument("--forces-weight", type=float, default=0.99)
    ap.add_argument("--train-dir", default=None, help="output folder of our training run (default: temp)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="write the results here ('' to skip)")
    args = ap.parse_args(argv)
    for name in (
        "features",
        "layers",
        "heads",
        "num_rbf",
        "repeats",
        "batch_repeats",
        "large_batch",
        "threads",
        "n_train",
        "n_val",
        "batch_size",
    ):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.train_epochs < 0:
        ap.error("--warmup and --train-epochs must be >= 0")
    if args.features % args.heads:
        ap.error(f"--features ({args.features}) must be divisible by --heads ({args.heads})")
    if args.features % len(args.degrees):
        ap.error(
            f"--features ({args.features}) must be divisible by the number of degrees ({len(args.degrees)}): "
            "the peer splits the features into one geometric attention head per degree"
        )
    if args.n_test is not None and args.n_test < 1:
        ap.error(f"--n-test must be >= 1, got {args.n_test}")
    return args


def main(argv=None) -> dict:
    args = _parse(argv)
    peer = _import_peer()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # the peer creates some tensors at call time in the default dtype
    if args.devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    for d in devices:
        if torch.device(d).type == "cuda" and not torch.cuda.is_available():
            sys.exit(f"error: --devices names {d!r} but CUDA is not available")

    from spherequant.models import data as data_mod

    ds = data_mod.load_dataset(DATASET)
    avg_nb = avg_num_neighbors(peer, ds, np.arange(64), args.cutoff, dtype)
    counts = {
        "ours": param_counts(build_ours(args, dtype, "cpu")),
        "peer": param_counts(build_peer(peer, args, dtype, "cpu", avg_nb)),
    }
    cmd = (
        " ".join(shlex.quote(a) for a in ["python", *sys.argv])
        if argv is None
        else " ".join(shlex.quote(a) for a in ["python", sys.argv[0], *argv])
    )
    results = {
        "benchmark": "peer_so3krates_torch",
        "command": cmd,
        "env": {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "spherequant": getattr(spherequant, "__version__", "unknown"),
            "so3krates_torch": peer["version"],
        },
        "config": {
            "features": args.features,
            "layers": args.layers,
            "heads": args.heads,
            "degrees": list(args.degrees),
            "cutoff": args.cutoff,
            "num_rbf": args.num_rbf,
            "dtype": args.dtype,
            "dataset": DATASET,
            "atoms_per_molecule": int(ds.n_atoms[0]),
        },
        "parameters": counts,
        "notes": [
            "Only the model call (energy + autograd forces) is timed; neighbour lists are built beforehand "
            "by each library's own code.",
            "Peer radial basis: gaussian (the peer has no PhysNet basis); ours: PhysNet. Both: cosine "
            "cutoff.",
            f"Peer message normalisation uses avg_num_neighbors = {avg_nb:.3f} (mean over the frames used).",
            "Peer: per-head block-diagonal q/k/v maps and a one-layer exchange (fewer parameters at equal "
            "width); no isolated-atom energy reference. Both get the same per-element energy shift and scale "
            "from the training frames in --train-epochs runs.",
            "Ratios are ours / peer (time < 1, throughput > 1 and error < 1 favour ours).",
        ],
        "inference": [],
        "sanity": {},
        "training": None,
    }
    print(
        f"# peer benchmark: spherequant So3krates vs so3krates-torch {peer['version']} "
        f"(F={args.features}, {args.layers} layers, {args.heads} heads, degrees {list(args.degrees)}, "
        f"cutoff {args.cutoff}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} thread(s))"
    )
    print(
        format_table(
            [
                ["ours (spherequant)", counts["ours"]["total"], counts["ours"]["trainable"]],
                ["peer (so3krates-torch)", counts["peer"]["total"], counts["peer"]["trainable"]],
            ],
            ["model", "parameters", "trainable"],
        )
    )
    rows: list = []
    for d in devices:
        benchmark_device(args, peer, ds, torch.device(d), dtype, results, rows, avg_nb)
    print()
    print(
        "# energy + forces of azobenzene (24 atoms); median of alternating timed calls (wall clock; "
        "CUDA events on a GPU); CPU-time ratio from process CPU time; ratios ours / peer"
    )
    print(
        format_table(
            rows,
            [
                "device",
                "case",
                "molecules",
                "ours ms",
                "peer ms",
                "time ratio",
                "CPU-time ratio",
                "ours mol/s",
                "peer mol/s",
                "throughput ratio",
            ],
            floatfmt=".4g",
        )
    )
    for dev, s in results["sanity"].items():
        print(
            f"# sanity ({dev}, untrained): max force LEE under one Haar rotation / max |F|: ours "
            f"{s['ours_force_lee_max_meV_per_A']:.2g} / {s['ours_force_max_meV_per_A_untrained']:.3g}, peer "
            f"{s['peer_force_lee_max_meV_per_A']:.2g} / {s['peer_force_max_meV_per_A_untrained']:.3g} meV/A"
        )
    if args.train_epochs:
        tdev = torch.device(args.train_device or devices[0])
        trows = run_training(args, peer, ds, tdev, dtype, results)
        print()
        print(
            f"# training from scratch: {args.train_epochs} epochs, {args.n_train}/{args.n_val} split "
            f"(seed {args.split_seed}), batch {args.batch_size}, Adam lr {args.lr}, loss weights "
            f"{args.energy_weight}:{args.forces_weight}; test frames {results['training']['n_test_scored']}"
        )
        print(format_table(trows, ["metric", "ours", "peer", "ratio ours/peer"], floatfmt=".4g"))
    if args.json:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
