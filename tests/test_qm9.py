"""Tests of energy-only data (MolecularDataset without forces, training on energies alone) and of the QM9
loader spherequant.models.qm9.

The energy-only tests and the loader tests on a synthetic qm9pack-format table always run; the tests on
qm9pack's real tables skip when qm9pack (or its files) is absent, and the full-set test is slow.
"""

from __future__ import annotations

import ast
import json
import math
import re

import numpy as np
import pytest
import torch
from _helpers import morse_dataset, qat_config, tiny_config
from _scripts import load_script
from spherequant.models import checkpoints, qm9
from spherequant.models import data as D
from spherequant.models import train as T

#: CODATA 2018 Hartree energy in eV, typed in (the module derives its constant from J and e).
HARTREE_EV_CODATA = 27.211386245988
#: QM9 atomref U0 (Hartree), typed in from the figshare table, keyed by element symbol.
ATOMREF_U0 = {"H": -0.500273, "C": -37.846772, "N": -54.583861, "O": -75.064579, "F": -99.718730}


def _energy_only(ds: D.MolecularDataset) -> D.MolecularDataset:
    z = [ds.numbers[ds.ptr[i] : ds.ptr[i + 1]] for i in range(len(ds))]
    r = [ds.positions[ds.ptr[i] : ds.ptr[i + 1]] for i in range(len(ds))]
    return D.MolecularDataset(z, r, ds.energies, None, metadata={"source": "morse, forces dropped"})


# ------------------------------------------------------------------------------------ energy-only data
def test_energy_only_dataset_protocol(tmp_path):
    ds = _energy_only(morse_dataset(n_frames=6))
    assert not ds.has_forces and ds.forces is None
    assert ds[2]["forces"] is None and ds[2]["energy"] == pytest.approx(float(ds.energies[2]))
    sub = ds.subset([4, 1])
    assert sub.forces is None and np.array_equal(sub.energies, ds.energies[[4, 1]])
    both = D.MolecularDataset.concatenate([ds, sub])
    assert len(both) == 8 and both.forces is None
    with pytest.raises(ValueError, match="either all or none of the data sets must have forces"):
        D.MolecularDataset.concatenate([ds, morse_dataset(n_frames=2)])
    b = D.collate(ds, [0, 3])
    assert b.forces is None and b.to(dtype=torch.float32).forces is None
    assert torch.equal(b.energy, torch.as_tensor(ds.energies[[0, 3]]))
    assert ds.stacked()[3] is None
    with pytest.raises(ValueError, match="no forces"):
        D.save_npz(ds, tmp_path / "x.npz")
    text = D.write_extxyz(ds, tmp_path / "e.extxyz").read_text()
    assert "forces" not in text and f"{ds.energies[0]:.6f}"[:8] in text


def test_energy_only_forces_shape_still_checked():
    with pytest.raises(ValueError, match="forces of frame 0"):
        D.MolecularDataset([1, 1], np.zeros((1, 2, 3)), [0.0], np.zeros((1, 3, 3)))


def test_energy_statistics_energy_only_against_direct_formula():
    rng = np.random.default_rng(3)
    z = [rng.choice([1, 6, 8], size=rng.integers(3, 9)) for _ in range(30)]
    r = [rng.normal(size=(len(zi), 3)) for zi in z]
    e = np.array([sum({1: -13.6, 6: -1029.0, 8: -2041.0}[int(a)] for a in zi) for zi in z])
    e = e + rng.normal(scale=0.3, size=e.size)
    st = D.energy_statistics(D.MolecularDataset(z, r, e))
    assert st.force_rms is None
    # independent: least squares on element counts by the normal equations, then the per-atom RMS
    counts = np.array([[np.sum(zi == el) for el in (1, 6, 8)] for zi in z], dtype=float)
    coef = np.linalg.solve(counts.T @ counts, counts.T @ e)
    resid = e - counts @ coef
    n = np.array([len(zi) for zi in z], dtype=float)
    want = math.sqrt(np.mean(resid**2 / n))
    assert st.atom_energy_rms == pytest.approx(want, rel=1e-9), (st.atom_energy_rms, want)
    assert st.scale == st.atom_energy_rms
    for el, c in zip((1, 6, 8), coef):
        assert st.shifts[el] == pytest.approx(c, abs=1e-8)
    # with forces the scale stays the force RMS
    f = [np.full((len(zi), 3), 0.5) for zi in z]
    st_f = D.energy_statistics(D.MolecularDataset(z, r, e, f))
    assert st_f.scale == st_f.force_rms == pytest.approx(0.5)
    # a perfectly fitted energy-only set still gives a positive scale (floored at 1 meV)
    exact = D.energy_statistics(D.MolecularDataset(z, r, counts @ coef))
    assert exact.scale == pytest.approx(1e-3)


def test_loss_terms_energy_only_equal_energy_part():
    ds = morse_dataset(n_frames=5)
    b_full, b_e = D.collate(ds), D.collate(_energy_only(ds))
    out = {"energy": b_full.energy + 0.1 * torch.arange(5.0, dtype=torch.float64), "forces": b_full.forces}
    le_full, lf_full = T._loss_terms(out, b_full)
    le, lf = T._loss_terms({"energy": out["energy"]}, b_e)
    assert float(lf) == 0.0 and float(lf_full) == 0.0
    want = np.mean((0.1 * np.arange(5.0) / 6) ** 2)
    assert float(le) == pytest.approx(want, rel=1e-12) and float(le_full) == pytest.approx(want, rel=1e-12)


def test_train_energy_only_fp32_and_evaluate(tmp_path):
    ds = _energy_only(morse_dataset(n_frames=40))
    cfg = tiny_config(tmp_path, energy_weight=1.0, forces_weight=0.0, model=dict(
        num_features=8, num_layers=1, num_heads=2, degrees=[1], cutoff=4.0, num_rbf=6, max_z=10))  # fmt: skip
    res = T.train(cfg, dataset=ds)
    hist = res["history"]
    assert len(hist) == 2 and all(h["val_forces_mae"] is None for h in hist)
    assert all(math.isfinite(h["val_energy_mae"]) and math.isfinite(h["train_loss"]) for h in hist)
    test = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert test["forces_mae"] is None and test["loss_forces"] == 0.0
    # independent evaluation of the test MAE: the best EMA model's energies, frame by frame
    model = checkpoints.load_model(tmp_path / "run" / "best.pt", use_ema=True)
    sp = D.split(ds, 24, 8, seed=0, index_dir=tmp_path / "run" / "split")
    errs = []
    for i in sp.test:
        fr = ds[int(i)]
        z = torch.as_tensor(fr["numbers"])
        pos = torch.as_tensor(fr["positions"], dtype=torch.float64)
        e = model(z, pos, torch.zeros(len(z), dtype=torch.long), num_graphs=1, compute_forces=False)["energy"]
        errs.append(abs(float(e.detach()[0]) - fr["energy"]))
    assert test["energy_mae"] == pytest.approx(1000 * np.mean(errs), rel=1e-9, abs=1e-9)
    assert test["n_frames"] == len(sp.test) == 8


def test_train_energy_only_gaq_qat(tmp_path):
    ds = _energy_only(morse_dataset(n_frames=40))
    model = dict(num_features=8, num_layers=1, num_heads=2, degrees=[1], cutoff=4.0, num_rbf=6, max_z=10)
    T.train(tiny_config(tmp_path / "fp", energy_weight=1.0, forces_weight=0.0, model=model), dataset=ds)
    cfg = qat_config(tmp_path / "q", tmp_path / "fp" / "run" / "best.pt", "gaq", energy_weight=1.0,
                     forces_weight=0.0)  # fmt: skip
    res = T.train(cfg, dataset=ds)
    assert [h["val_forces_mae"] for h in res["history"]] == [None, None]
    assert all(math.isfinite(h["val_energy_mae"]) for h in res["history"])
    # the LEE penalty needs no reference forces: the model's own forces are compared under rotation
    assert all(math.isfinite(h["train_lee"]) for h in res["history"])
    assert res["test"]["forces_mae"] is None and math.isfinite(res["test"]["energy_mae"])


# ------------------------------------------------------------------------ loader on a synthetic table
_HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,"
    "RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,"
    "ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,"
    "Heatcapacity_Cv_cal_mol_K"
)


def _row(index, symbols, xyz, u0, stoich=None):
    counts = stoich or [symbols.count(s) for s in ("H", "C", "N", "O", "F")]
    el = "[" + ",".join(f"'{s}'" for s in symbols) + "]"
    coords = "[" + ",".join("[" + ",".join(repr(float(v)) for v in p) + "]" for p in xyz) + "]"
    props = [1.0, 2.0, 3.0, 0.5, 10.0, -0.3, 0.1, 0.4, 30.0, 0.04, u0, u0 + 0.003, u0 + 0.004, u0 - 0.02, 6.0]
    return (
        f'"dsgdb9nsd_{index:06d}.xyz",{index},"X","InChI=X",{len(symbols)},"{counts}","{el}","{coords}",'
        f'"[0]","[1]",' + ",".join(repr(p) for p in props)
    )


def _synthetic_source(tmp_path, rows_per_part, bad=None):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    index, mols = 1, []
    for part, n in zip(qm9._PARTS, rows_per_part):
        lines = [_HEADER]
        for _ in range(n):
            symbols = list(rng.choice(["C", "N", "O", "F"], size=rng.integers(1, 4))) + ["H"] * int(
                rng.integers(1, 5)
            )
            xyz = rng.normal(size=(len(symbols), 3))
            u0 = -40.0 * len(symbols) + rng.normal()
            lines.append(_row(index, symbols, xyz, u0))
            mols.append((index, symbols, xyz, u0))
            index += 2  # QM9 indices have gaps
        if bad is not None and part == qm9._PARTS[bad[0]]:
            lines.append(bad[1])
        (src / part).write_text("\n".join(lines) + "\n")
    return src, mols


def test_loader_on_synthetic_table(tmp_path):
    src, mols = _synthetic_source(tmp_path, (3, 2, 4))
    path = qm9.build_cache(tmp_path / "cache", source_dir=src, progress=False)
    assert path.is_file() and qm9.build_cache(tmp_path / "cache", source_dir=src, progress=False) == path
    for ref in (True, False):
        ds = qm9.load_qm9("U0", cache_dir=tmp_path / "cache", atom_reference=ref)
        assert len(ds) == len(mols) and not ds.has_forces
        for k, (index, symbols, xyz, u0) in enumerate(mols):
            assert ds.extra["qm9_index"][k] == index
            z = [{"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}[s] for s in symbols]
            assert ds[k]["numbers"].tolist() == z
            np.testing.assert_array_equal(ds[k]["positions"], xyz)  # repr round-trips exactly
            e_ha = u0 - (sum(ATOMREF_U0[s] for s in symbols) if ref else 0.0)
            assert ds[k]["energy"] == pytest.approx(e_ha * HARTREE_EV_CODATA, rel=1e-13, abs=1e-10)
    g = qm9.load_qm9("G", cache_dir=tmp_path / "cache", atom_reference=False)
    assert g.energies[0] == pytest.approx((mols[0][3] - 0.02) * HARTREE_EV_CODATA, rel=1e-13)
    sub = qm9.load_qm9(n_molecules=4, cache_dir=tmp_path / "cache")
    sub6 = qm9.load_qm9(n_molecules=6, cache_dir=tmp_path / "cache")
    assert len(sub) == 4 and set(sub.extra["qm9_index"]) <= set(sub6.extra["qm9_index"])  # nested
    assert np.all(np.diff(sub.extra["qm9_index"]) > 0)
    with pytest.raises(ValueError, match="exceeds the 9 molecules"):
        qm9.load_qm9(n_molecules=10, cache_dir=tmp_path / "cache")


def test_load_dataset_registration(tmp_path, monkeypatch):
    src, _ = _synthetic_source(tmp_path, (2, 2, 2))
    qm9.build_cache(tmp_path / "cache", source_dir=src, progress=False)
    monkeypatch.setenv("SPHEREQUANT_CACHE_DIR", str(tmp_path / "cache"))
    ds = D.load_dataset("qm9-4")
    assert len(ds) == 4 and ds.metadata["target"] == "U0" and ds.metadata["name"] == "qm9-4"
    assert len(D.load_dataset("qm9")) == 6
    with pytest.raises(ValueError, match="unknown data set name 'qm9-x'"):
        D.load_dataset("qm9-x")
    assert T.load_training_data("qm9-3").metadata["name"] == "qm9-3"
    from spherequant.models.data_cli import _open  # `spherequant data info qm9-<n>` opens subsets too

    assert len(_open("qm9-4")) == 4 and len(_open("qm9")) == 6


def _bad_row(stoich, elements, coords):
    return f'"x",99,"X","I",2,"{stoich}","{elements}","{coords}","[0]","[1]"' + ",1" * 15


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (_bad_row("[1,1,0,0,0]", "['C','H']", "[[0,0,0]]"), "N_atoms 2"),
        (_bad_row("[2,0,0,0,0]", "['C','H']", "[[0,0,0],[1,0,0]]"), "stoichiometry"),
        (_bad_row("[1,1,0,0,0]", "['C','Xe']", "[[0,0,0],[1,0,0]]"), "unknown element 'Xe'"),
        (_bad_row("[1,1,0,0,0]", "['C','H']", "[[0,0,a],[1,0,0]]"), "non-number"),
    ],
)
def test_loader_refuses_inconsistent_rows(tmp_path, bad, match):
    src, _ = _synthetic_source(tmp_path, (1, 1, 1), bad=(1, bad))
    with pytest.raises(ValueError, match=rf"qm9_part2.csv line 3: .*{match}"):
        qm9.build_cache(tmp_path / "cache", source_dir=src, progress=False)
    assert not qm9.cache_path(tmp_path / "cache").exists()  # nothing half-written


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="target must be one of"):
        qm9.load_qm9("mu")
    with pytest.raises(TypeError, match="n_molecules must be an int"):
        qm9.load_qm9(n_molecules=3.0)
    with pytest.raises(ValueError, match=r"n_molecules must be in 1\.\.130831"):
        qm9.load_qm9(n_molecules=0)
    with pytest.raises(TypeError, match="atom_reference must be a bool"):
        qm9.load_qm9(atom_reference=1)
    with pytest.raises(FileNotFoundError, match="lacks the QM9 table"):
        qm9.build_cache(tmp_path / "c", source_dir=tmp_path)
    (tmp_path / "c2").mkdir()
    qm9.cache_path(tmp_path / "c2").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"unreadable.*delete it to rebuild"):
        qm9.load_qm9(cache_dir=tmp_path / "c2")
    assert [qm9.parse_name(n) for n in ("qm9", "qm9-12", "qm9x", "ethanol")] == [None, 12, False, False]


def test_standard_split_sizes():
    sp = qm9.standard_split(qm9.N_MOLECULES, seed=0)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (110_000, 10_000, 10_831)
    assert np.unique(np.concatenate(sp)).size == qm9.N_MOLECULES


def test_hartree_constant():
    assert qm9.HARTREE_EV == pytest.approx(HARTREE_EV_CODATA, rel=1e-12)


# --------------------------------------------------------------------------- qm9pack's real tables
needs_qm9pack = pytest.mark.skipif(qm9.qm9pack_data_dir() is None, reason="qm9pack (or its CSV files) absent")


def _independent_rows(path, n):
    """The first ``n`` rows of a qm9pack CSV read by pandas, parsed with ast and a regex (not the loader)."""
    import pandas as pd
    from ase.data import atomic_numbers

    df = pd.read_csv(path, nrows=n)
    out = []
    for _, row in df.iterrows():
        symbols = ast.literal_eval(row["Elements"])
        nums = [float(x) for x in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", row["XYZ_Ang"])]
        out.append(
            {
                "index": int(row["Index"]),
                "z": [atomic_numbers[s] for s in symbols],
                "symbols": symbols,
                "xyz": np.array(nums).reshape(-1, 3),
                "n_atoms": int(row["N_atoms"]),
                "u0_ha": float(row["InternalEnergy_0K_au"]),
                "h_ha": float(row["Enthalphy_298K_au"]),
            }
        )
    return out


@needs_qm9pack
def test_qm9pack_rows_against_independent_parse(tmp_path):
    real = qm9.qm9pack_data_dir()
    src = tmp_path / "src"
    src.mkdir()
    n = 40
    for part in qm9._PARTS:  # the first rows of each real table, as a small source folder
        with open(real / part, newline="") as fh:
            rows = [line for _, line in zip(range(n + 1), fh)]
        (src / part).write_text("".join(rows))
    qm9.build_cache(tmp_path / "cache", source_dir=src, progress=False)
    ds = qm9.load_qm9("U0", cache_dir=tmp_path / "cache")
    ds_h = qm9.load_qm9("H", cache_dir=tmp_path / "cache", atom_reference=False)
    ref = [r for part in qm9._PARTS for r in _independent_rows(real / part, n)]
    assert len(ds) == len(ref) == 3 * n
    worst = 0.0
    for k, r in enumerate(ref):
        fr = ds[k]
        assert ds.extra["qm9_index"][k] == r["index"]
        assert fr["numbers"].tolist() == r["z"] and len(r["z"]) == r["n_atoms"]  # counts and atom order
        np.testing.assert_allclose(fr["positions"], r["xyz"], rtol=0, atol=1e-12)
        want = (r["u0_ha"] - sum(ATOMREF_U0[s] for s in r["symbols"])) * HARTREE_EV_CODATA
        worst = max(worst, abs(fr["energy"] - want))
        assert ds_h[k]["energy"] == pytest.approx(r["h_ha"] * HARTREE_EV_CODATA, rel=1e-13)
    assert worst < 1e-9, f"worst U0 difference {worst} eV"
    # methane (QM9 index 1): U0 = -40.47893 Ha in the table; atomization energy -0.631066 Ha = -17.172 eV
    assert ds.extra["qm9_index"][0] == 1 and ds[0]["numbers"].tolist() == [6, 1, 1, 1, 1]
    assert ds[0]["energy"] == pytest.approx(-0.631066 * HARTREE_EV_CODATA, abs=1e-9)
    # the C-H bond lengths of methane are ~1.09 Angstrom (positions really are in Angstrom)
    d = np.linalg.norm(ds[0]["positions"][1:] - ds[0]["positions"][0], axis=1)
    assert np.all(np.abs(d - 1.092) < 0.01), d


@needs_qm9pack
def test_qm9pack_table_row_counts():
    real = qm9.qm9pack_data_dir()
    total = 0
    for part in qm9._PARTS:  # one molecule per line (no field holds a newline), less the header
        with open(real / part, "rb") as fh:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda fh=fh: fh.read(1 << 24), b"")) - 1
    assert total == qm9.N_MOLECULES


@pytest.mark.slow
@needs_qm9pack
def test_full_qm9_cache(tmp_path):
    qm9.build_cache(tmp_path, progress=False)
    ds = qm9.load_qm9(cache_dir=tmp_path)
    idx = ds.extra["qm9_index"]
    assert len(ds) == qm9.N_MOLECULES and idx[0] == 1 and idx[-1] == 133885 and np.all(np.diff(idx) > 0)
    assert set(np.unique(ds.numbers).tolist()) == {1, 6, 7, 8, 9}
    heavy = np.add.reduceat((ds.numbers > 1).astype(int), ds.ptr[:-1])
    assert heavy.max() == 9 and ds.n_atoms.max() == 29
    # atomization energies are negative and of molecular size (water -9.2 eV .. about -113 eV)
    assert np.all(ds.energies < -5) and ds.energies.min() > -150
    sub = qm9.load_qm9(n_molecules=5000, cache_dir=tmp_path)
    pos = np.searchsorted(idx, sub.extra["qm9_index"])
    np.testing.assert_array_equal(sub.energies, ds.energies[pos])


# ------------------------------------------------------------------------------ the study's evaluation
def _study_module():
    return load_script("benchmarks/qm9_study.py", name="qm9_study")


def test_study_evaluation_end_to_end(tmp_path, monkeypatch):
    """evaluate_runs on two tiny runs (FP32 and its naive INT8 PTQ) of a synthetic qm9 cache: its MAEs are
    the runs' own test metrics, its paired differences match a direct computation, the table renders."""
    import yaml

    study = _study_module()
    src, _ = _synthetic_source(tmp_path, (10, 10, 10))
    qm9.build_cache(tmp_path / "cache", source_dir=src, progress=False)
    monkeypatch.setenv("SPHEREQUANT_CACHE_DIR", str(tmp_path / "cache"))
    model = dict(num_features=8, num_layers=1, num_heads=2, degrees=[1], cutoff=4.0, num_rbf=6, max_z=10)
    common = dict(dataset="qm9-30", n_train=16, n_val=6, energy_weight=1.0, forces_weight=0.0, batch_size=8,
                  val_batch_size=8, device="cpu", progress=False, plot=False, dtype="float64")  # fmt: skip
    ptq = {
        "method": "naive_int8",
        "init_checkpoint": str(tmp_path / "fp" / "best.pt"),
        "calibration_batches": 2,
    }
    cfgs = {
        "fp.yaml": dict(common, output_dir=str(tmp_path / "fp"), epochs=2, lr=3e-3, model=model),
        "int8.yaml": dict(common, output_dir=str(tmp_path / "int8"), epochs=0, quantization=ptq),
    }
    for name, values in cfgs.items():
        (tmp_path / name).write_text(yaml.safe_dump(values))
        T.train(T.TrainConfig.from_dict(values))
    monkeypatch.setattr(study, "ROOT", tmp_path)
    monkeypatch.setattr(study, "CONFIGS", tmp_path)
    monkeypatch.setattr(study, "RUNS", [("FP32", "fp.yaml"), ("naive INT8", "int8.yaml"), ("x", "fp.yaml")])
    (tmp_path / "missing").mkdir()
    result = study.evaluate_runs()
    rows = result["rows"]
    for row, run in zip(rows, ("fp", "int8")):
        test = json.loads((tmp_path / run / "test_metrics.json").read_text())
        assert row["test_mae_meV"] == pytest.approx(test["energy_mae"], rel=1e-12)
        assert row["n_test"] == 30 - 16 - 6
    assert rows[0]["test_vs_fp32_meV"] == {"mean": 0.0, "se": 0.0}
    # paired difference, directly: per-molecule |error| of both models on the test molecules
    sp = D.split(30, 16, 6, seed=0)
    ds = D.load_dataset("qm9-30")
    abs_err = []
    for run in ("fp", "int8"):
        m = checkpoints.load_model(tmp_path / run / "best.pt", use_ema=True)
        e = [
            float(m(torch.as_tensor(ds[int(i)]["numbers"]), torch.as_tensor(ds[int(i)]["positions"]),
                    torch.zeros(int(ds.n_atoms[i]), dtype=torch.long), num_graphs=1,
                    compute_forces=False)["energy"].detach()[0])
            for i in sp.test
        ]  # fmt: skip
        abs_err.append(1000 * np.abs(np.array(e) - ds.energies[sp.test]))
    d = abs_err[1] - abs_err[0]
    got = rows[1]["test_vs_fp32_meV"]
    assert got["mean"] == pytest.approx(d.mean(), abs=1e-9)
    assert got["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(d.size), rel=1e-9)
    table = study.format_table(result)
    assert "| FP32 |" in table and f"{rows[1]['test_mae_meV']:.1f}" in table
