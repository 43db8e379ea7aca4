"""Tests of spherequant.models.data: units, rMD17/npz/extxyz I/O, validation, splits, statistics, batching,
and the shipped GFN2-xTB data sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from spherequant.models import data as D
from spherequant.models.data import (
    KCAL_PER_MOL,
    MolecularDataset,
    collate,
    energy_statistics,
    iterate_batches,
    load_dataset,
    load_npz,
    load_rmd17,
    read_ase,
    save_npz,
    split,
    write_extxyz,
)


def _toy(rng, n_frames=7, numbers=(6, 6, 8, 1, 1, 1, 1, 1, 1)):
    n = len(numbers)
    r = rng.normal(size=(n_frames, n, 3)) * 1.5
    e = -300.0 + rng.normal(size=n_frames)
    f = rng.normal(size=(n_frames, n, 3))
    return MolecularDataset(np.array(numbers), r, e, f, metadata={"method": "toy", "seed": 1})


def _write_rmd17(path, z, r_kcal_frames, e_kcal, f_kcal, **extra):
    """Mimic the layout of a real rMD17 file (including its extra keys)."""
    np.savez(
        path,
        nuclear_charges=np.asarray(z, dtype=np.int64),
        coords=np.asarray(r_kcal_frames, dtype=np.float64),
        energies=np.asarray(e_kcal, dtype=np.float64),
        forces=np.asarray(f_kcal, dtype=np.float64),
        old_indices=np.arange(len(e_kcal)),
        old_energies=np.asarray(e_kcal) + 0.1,
        old_forces=np.asarray(f_kcal) * 0,
        **extra,
    )


# --------------------------------------------------------------------------------------------- units
def test_kcal_per_mol_constant():
    # independent route: kJ/mol per eV from the CODATA 2018 Faraday constant (96 485.332 12 C/mol)
    faraday = 96485.33212
    rel = abs(KCAL_PER_MOL / (4184.0 / faraday) - 1)
    assert rel < 1e-10, f"{KCAL_PER_MOL!r}: rel err {rel:.2e}"  # the Faraday value is rounded at 1e-11
    assert abs(KCAL_PER_MOL * 1000 - 43.364) < 5e-4  # meV
    assert abs(1 / KCAL_PER_MOL - 23.0605) < 1e-4  # kcal/mol per eV
    import ase.units

    # ASE uses CODATA 2014 by default: agreement to about 1e-8 relative
    rel = abs(KCAL_PER_MOL / (ase.units.kcal / ase.units.mol) - 1)
    assert rel < 1e-6, rel


def test_rmd17_real_format_roundtrip_units(tmp_path, rng):
    z = [6, 6, 8, 1, 1, 1, 1, 1, 1]
    r = rng.normal(size=(5, 9, 3))
    e_kcal = -97000.0 + rng.normal(size=5)
    f_kcal = rng.normal(size=(5, 9, 3)) * 30
    p = tmp_path / "rmd17_ethanol.npz"
    _write_rmd17(p, z, r, e_kcal, f_kcal)
    ds = load_rmd17(p)
    assert len(ds) == 5 and ds.fixed_composition and ds.formula == "C2H6O"
    ev_per_kcal = 4.184 / 96.48533212331  # independent: kJ per kcal over kJ/mol per eV
    err_e = np.abs(ds.energies - e_kcal * ev_per_kcal)
    assert err_e.max() < 1e-9, f"max err {err_e.max():.3e} at frame {err_e.argmax()}"
    _, rr, _, ff = ds.stacked()
    np.testing.assert_array_equal(rr, r)
    err_f = np.abs(ff - f_kcal * ev_per_kcal)
    assert err_f.max() < 1e-12, f"max err {err_f.max():.3e}"
    # energies of shape (F, 1) as in the original MD17 files are accepted too
    _write_rmd17(tmp_path / "e2d.npz", z, r, e_kcal[:, None], f_kcal)
    np.testing.assert_array_equal(load_rmd17(tmp_path / "e2d.npz").energies, ds.energies)


@pytest.mark.parametrize("float32", [False, True])
def test_npz_roundtrip(tmp_path, rng, float32):
    ds = _toy(rng)
    p = save_npz(ds, tmp_path / "x.npz", float32=float32, trajectory=np.arange(len(ds)) % 2)
    back = load_npz(p)
    tol = 1e-6 if float32 else 1e-12
    for name in ("positions", "forces"):
        err = np.abs(getattr(back, name) - getattr(ds, name))
        assert err.max() <= tol * max(1, np.abs(getattr(ds, name)).max()), f"{name}: max err {err.max():.3e}"
    rel = np.abs(back.energies / ds.energies - 1)
    assert rel.max() < 4e-16, f"energies stay float64: rel err {rel.max():.3e}"
    np.testing.assert_array_equal(back.numbers, ds.numbers)
    assert back.metadata["method"] == "toy" and back.metadata["seed"] == 1
    np.testing.assert_array_equal(back.extra["trajectory"], np.arange(len(ds)) % 2)
    with np.load(p) as raw:
        assert raw["energies"].dtype == np.float64
        assert raw["coords"].dtype == (np.float32 if float32 else np.float64)
        json.loads(str(raw["provenance"]))
        # what is on disk is kcal/mol
        err = np.abs(raw["energies"] * (4.184 / 96.48533212331) - ds.energies)
        assert err.max() < 1e-9
    # a file we write is also a plain rMD17 file
    assert len(load_rmd17(p)) == len(ds)
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_save_npz_rejects_variable_composition(tmp_path):
    ds = MolecularDataset([np.array([1, 1]), np.array([8])], [np.zeros((2, 3)), np.zeros((1, 3))], [0, 1],
                          [np.zeros((2, 3)), np.zeros((1, 3))])  # fmt: skip
    with pytest.raises(ValueError, match="variable composition"):
        save_npz(ds, tmp_path / "v.npz")


def test_extxyz_roundtrip_variable_composition_and_cell(tmp_path, rng):
    z = [np.array([8, 1, 1]), np.array([6, 1, 1, 1, 1]), np.array([1, 1])]
    r = [rng.normal(size=(len(a), 3)) for a in z]
    f = [rng.normal(size=(len(a), 3)) for a in z]
    e = [-14.2, -24.1, -4.5]
    ds = MolecularDataset(z, r, e, f)
    back = read_ase(write_extxyz(ds, tmp_path / "m.extxyz"))
    assert not back.fixed_composition and back.n_atoms.tolist() == [3, 5, 2]
    np.testing.assert_array_equal(back.numbers, ds.numbers)
    for name in ("positions", "forces", "energies"):
        err = np.abs(getattr(back, name) - getattr(ds, name))
        assert err.max() < 1e-7, f"{name}: max err {err.max():.3e}"
    assert back.cell is None
    cell = np.diag([5.0, 6.0, 7.0])
    pds = MolecularDataset(z[:1], r[:1], e[:1], f[:1], cell=cell, pbc=[True, True, False])
    pback = read_ase(write_extxyz(pds, tmp_path / "p.extxyz"))
    np.testing.assert_allclose(pback.cell[0], cell)
    assert pback.pbc[0].tolist() == [True, True, False]


def test_read_ase_missing_labels(tmp_path):
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    ase.io.write(tmp_path / "noe.xyz", [a], format="extxyz")
    with pytest.raises(ValueError, match="frame 0 has no energy"):
        read_ase(tmp_path / "noe.xyz")
    b = a.copy()
    b.calc = SinglePointCalculator(b, energy=-1.0)
    ase.io.write(tmp_path / "nof.xyz", [a.copy(), b][1:], format="extxyz")
    with pytest.raises(ValueError, match="no forces"):
        read_ase(tmp_path / "nof.xyz")


# --------------------------------------------------------------------------------------------- bad files
@pytest.fixture
def good_arrays(rng):
    return {
        "nuclear_charges": np.array([8, 1, 1]),
        "coords": rng.normal(size=(4, 3, 3)),
        "energies": rng.normal(size=4),
        "forces": rng.normal(size=(4, 3, 3)),
    }


@pytest.mark.parametrize("key", ["nuclear_charges", "coords", "energies", "forces"])
def test_bad_file_missing_key(tmp_path, good_arrays, key):
    del good_arrays[key]
    np.savez(tmp_path / "bad.npz", **good_arrays)
    with pytest.raises(ValueError, match=rf"missing key\(s\) \['{key}'\]"):
        load_rmd17(tmp_path / "bad.npz")


@pytest.mark.parametrize("key", ["coords", "energies", "forces"])
def test_bad_file_nan(tmp_path, good_arrays, key):
    good_arrays[key].flat[5 % good_arrays[key].size] = np.nan
    np.savez(tmp_path / "bad.npz", **good_arrays)
    with pytest.raises(ValueError, match=rf"key '{key}' contains 1 NaN"):
        load_rmd17(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    ("key", "shape"),
    [("coords", (4, 2, 3)), ("energies", (3,)), ("forces", (4, 3, 2)), ("nuclear_charges", (3, 1))],
)
def test_bad_file_shapes(tmp_path, good_arrays, rng, key, shape):
    good_arrays[key] = rng.integers(1, 9, size=shape) if key == "nuclear_charges" else rng.normal(size=shape)
    np.savez(tmp_path / "bad.npz", **good_arrays)
    with pytest.raises(ValueError, match=f"key '{key}'"):
        load_rmd17(tmp_path / "bad.npz")


def test_bad_file_not_npz_and_missing(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_rmd17(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rmd17(tmp_path / "nope.npz")


def test_dataset_validation(rng):
    r = rng.normal(size=(2, 3, 3))
    with pytest.raises(ValueError, match="positions contain NaN"):
        MolecularDataset([8, 1, 1], np.where(r > 1, np.nan, r), [0, 0], r)
    with pytest.raises(ValueError, match="forces of frame 0"):
        MolecularDataset([8, 1, 1], r, [0, 0], r[:, :2])
    with pytest.raises(ValueError, match="positions has 2 frames but energies has 3"):
        MolecularDataset([8, 1, 1], r, [0, 0, 0], r)
    with pytest.raises(ValueError, match="atomic numbers"):
        MolecularDataset([0, 1, 1], r, [0, 0], r)


# --------------------------------------------------------------------------------------------- splits
def test_split_reproducible_and_saved(tmp_path):
    a = split(2000, seed=3)
    b = split(2000, seed=3)
    c = split(2000, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.train, c.train)
    assert (len(a.train), len(a.val), len(a.test)) == (950, 50, 1000)
    for fmt in ("npy", "txt"):
        d = tmp_path / fmt
        s1 = split(2000, seed=3, index_dir=d, fmt=fmt)
        assert sorted(p.name for p in d.iterdir()) == [f"test.{fmt}", f"train.{fmt}", f"val.{fmt}"]
        s2 = split(2000, seed=99, index_dir=d)  # existing index files win over the seed
        for x, y, z in zip(a, s1, s2):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)
    with pytest.raises(ValueError, match="refer to frames outside"):
        split(1500, index_dir=tmp_path / "npy")
    with pytest.raises(ValueError, match="exceeds"):
        split(900)


@given(n=st.integers(0, 300), a=st.integers(0, 300), b=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_split_partitions(n, a, b, seed):
    if a + b > n:
        with pytest.raises(ValueError):
            split(n, a, b, seed=seed)
        return
    s = split(n, a, b, seed=seed)
    allidx = np.concatenate(s)
    assert len(s.train) == a and len(s.val) == b
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


# --------------------------------------------------------------------------------------------- statistics
def test_energy_statistics_least_squares(rng):
    shifts = {1: -13.6, 6: -1029.0, 8: -2040.0}
    z, r, f, e = [], [], [], []
    for _ in range(40):
        comp = rng.choice([1, 6, 8], size=rng.integers(2, 10))
        z.append(comp)
        r.append(rng.normal(size=(len(comp), 3)))
        f.append(rng.normal(size=(len(comp), 3)) * 2)
        e.append(sum(shifts[int(c)] for c in comp) + 1e-3 * rng.normal())
    ds = MolecularDataset(z, r, e, f)
    stats = energy_statistics(ds)
    assert stats.method == "least_squares"
    for k, v in shifts.items():
        assert abs(stats.shifts[k] - v) < 1e-2, (k, stats.shifts[k], v)
    assert stats.residual_std < 3e-3
    allf = np.concatenate(f)
    assert abs(stats.force_rms - np.sqrt((allf**2).mean())) < 1e-12
    np.testing.assert_allclose(stats.shift_of([8, 1]), [stats.shifts[8], stats.shifts[1]])


def test_energy_statistics_single_composition(rng):
    ds = _toy(rng)
    stats = energy_statistics(ds)
    assert stats.method == "mean_per_atom"
    per_atom = np.mean(ds.energies / 9)
    assert all(abs(v - per_atom) < 1e-12 for v in stats.shifts.values())
    sub = energy_statistics(ds, indices=[0, 1])
    assert abs(sub.shifts[6] - np.mean(ds.energies[:2] / 9)) < 1e-12


# --------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collate(rng, dtype):
    z = [np.array([8, 1, 1]), np.array([6, 1, 1, 1, 1]), np.array([1, 1])]
    r = [rng.normal(size=(len(a), 3)) for a in z]
    f = [rng.normal(size=(len(a), 3)) for a in z]
    ds = MolecularDataset(z, r, [1.0, 2.0, 3.0], f)
    b = collate(ds, [2, 0], dtype=dtype)
    assert b.num_graphs == 2 and b.pos.dtype == dtype and b.z.dtype == torch.long
    assert b.z.tolist() == [1, 1, 8, 1, 1]
    assert (
        b.batch.tolist() == [0, 0, 1, 1, 1] and b.ptr.tolist() == [0, 2, 5] and b.n_atoms.tolist() == [2, 3]
    )
    assert b.energy.tolist() == [3.0, 1.0]
    np.testing.assert_allclose(b.pos.numpy(), np.concatenate([r[2], r[0]]), rtol=1e-6)
    np.testing.assert_allclose(b.forces.numpy(), np.concatenate([f[2], f[0]]), rtol=1e-6)
    # positions carry gradients for the model's own edge construction
    pos = b.pos.clone().requires_grad_(True)
    e = torch.zeros(b.num_graphs, dtype=dtype).index_add(0, b.batch, (pos**2).sum(-1))
    (g,) = torch.autograd.grad(e.sum(), pos)
    torch.testing.assert_close(g, 2 * pos.detach())
    b64 = b.to(dtype=torch.float64)
    assert b64.forces.dtype == torch.float64 and b64.z.dtype == torch.long
    with pytest.raises(IndexError):
        collate(ds, [3])


def test_iterate_batches_cover_and_reproducible(rng):
    ds = _toy(rng, n_frames=23)
    idx = np.arange(3, 23)
    it = iterate_batches(ds, idx, batch_size=6, shuffle=True, seed=5)
    assert len(it) == 4
    epochs = [[b.energy.numpy() for b in it] for _ in range(2)]
    for ep in epochs:
        got = np.concatenate(ep)
        np.testing.assert_array_equal(np.sort(got), np.sort(ds.energies[idx]))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1])), "epochs reshuffle"
    again = [b.energy.numpy() for b in iterate_batches(ds, idx, batch_size=6, shuffle=True, seed=5)]
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(epochs[0]))
    assert len(iterate_batches(ds, idx, batch_size=6, drop_last=True)) == 3
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(ds, idx, batch_size=0)


# --------------------------------------------------------------------------------------------- shipped data
SHIPPED = {"azobenzene-gfn2-500K": (24, "C12H10N2"), "ethanol-gfn2-500K": (9, "C2H6O"),
           "aspirin-gfn2-500K": (21, "C9H8O4")}  # fmt: skip


def test_load_dataset_unknown_lists_names():
    with pytest.raises(ValueError, match="available"):
        load_dataset("no-such-set")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_dataset(name):
    if name not in D.available_datasets():
        pytest.skip(f"{name} not shipped in this checkout")
    n_atoms, formula = SHIPPED[name]
    ds = load_dataset(name)
    m = ds.metadata
    assert ds.formula == formula and ds.fixed_composition and ds.n_atoms[0] == n_atoms
    min_frames = 5000 if name.startswith(("azobenzene", "ethanol")) else 2000
    assert len(ds) >= min_frames, len(ds)
    assert m["method"] == "GFN2-xTB" and m["temperature_K"] == 500.0
    assert m["stride"] * m["timestep_fs"] >= 10.0 and m["equilibration_steps"] > 0
    assert m["scf_failures"] >= 0 and m["n_frames"] == len(ds)
    # Units and temperature: for near-harmonic vibrations the potential energy fluctuates with
    # std = sqrt(dof / 2) k T (dof = 3N - 6); a kcal/mol vs eV mix-up would be off by 23x.
    kT = 8.617333262e-5 * 500.0
    expected = np.sqrt((3 * n_atoms - 6) / 2) * kT
    ratio = ds.energies.std() / expected
    assert 0.6 < ratio < 1.6, f"energy std {ds.energies.std():.4f} eV vs harmonic estimate {expected:.4f} eV"
    per_atom = ds.energies.mean() / n_atoms
    assert -60 < per_atom < -20, f"GFN2 total energy per atom {per_atom:.2f} eV is implausible"
    fr = np.sqrt((ds.forces**2).mean())
    assert 0.3 < fr < 5.0, f"force RMS {fr:.3f} eV/A"
    # frames are distinct (no duplicated frame from a resume)
    _, r, _, _ = ds.stacked()
    d = np.abs(np.diff(r, axis=0)).max(axis=(1, 2))
    assert d.min() > 1e-3, f"consecutive frames {d.argmin()} and {d.argmin() + 1} are (nearly) identical"
