"""Tests of the GFN2-xTB generator (spherequant.models.xtb) and the ``spherequant data`` command.

Tests that run tblite are marked ``xtb`` and skip cleanly when tblite/RDKit are not installed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from spherequant.models import xtb as X
from spherequant.models.data import KCAL_PER_MOL, load_npz


def _needs_xtb():
    pytest.importorskip("tblite.interface")
    pytest.importorskip("rdkit")
    pytest.importorskip("ase")


TINY = {"n_frames": 6, "stride": 2, "equilibration_steps": 4, "checkpoint_every": 2, "progress": False,
        "command": "test"}  # fmt: skip


def _assert_same_file(a, b):
    da, db = load_npz(a), load_npz(b)
    with np.load(a) as ra, np.load(b) as rb:
        for key in ("nuclear_charges", "coords", "energies", "forces"):
            assert ra[key].dtype == rb[key].dtype
            same = ra[key] == rb[key]
            assert same.all(), f"{key}: {int((~same).sum())} entries differ, first at {np.argwhere(~same)[0]}"
    for key in ("seed", "temperature_K", "stride", "n_frames", "scf_failures", "smiles"):
        assert da.metadata[key] == db.metadata[key], key


# ------------------------------------------------------------------------------------ no tblite needed
def test_resolve_molecule(tmp_path):
    assert X.resolve_molecule("Azobenzene")[:2] == ("azobenzene", X.MOLECULES["azobenzene"])
    assert X.resolve_molecule("salicylic-acid")[0] == "salicylic acid"
    assert X.resolve_molecule("C1CC1") == ("C1CC1", "C1CC1", None)
    xyz = tmp_path / "w.xyz"
    xyz.write_text("3\n\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n")
    assert X.resolve_molecule(str(xyz)) == ("w", None, str(xyz))
    with pytest.raises(ValueError, match="does not exist"):
        X.resolve_molecule(str(tmp_path / "missing.xyz"))
    with pytest.raises(ValueError, match="neither a known name"):
        X.resolve_molecule("not a molecule")
    with pytest.raises(TypeError, match="molecule must be"):
        X.resolve_molecule(3)


def test_missing_extra_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tblite.interface", None)
    with pytest.raises(ImportError, match=r"pip install spherequant\[xtb\]"):
        X.generate_xtb_md("ethanol", tmp_path / "e.npz", n_frames=1)


def test_argument_validation(tmp_path):
    _needs_xtb()
    cases = [
        ({"stride": 0}, "stride"),
        ({"n_frames": -1}, "n_frames"),
        ({"temperature": -5.0}, "temperature"),
        ({"workers": 3, "n_frames": 2}, "workers"),
        ({"timestep_fs": float("nan")}, "timestep_fs"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            X.generate_xtb_md("ethanol", tmp_path / "e.npz", **{"n_frames": 2, **kw})


# --------------------------------------------------------------------------------------------- with tblite
@pytest.mark.xtb
def test_build_atoms_from_name_smiles_and_xyz(tmp_path):
    _needs_xtb()
    atoms, label, _ = X.build_atoms("aspirin")
    assert atoms.get_chemical_formula(mode="hill") == "C9H8O4" and label == "aspirin"
    a2, _, _ = X.build_atoms("aspirin")
    np.testing.assert_array_equal(atoms.positions, a2.positions)  # fixed embedding seed
    az, _, _ = X.build_atoms("azobenzene")
    assert len(az) == 24
    import ase.io

    ase.io.write(tmp_path / "eth.xyz", a2)
    a3, label3, smi3 = X.build_atoms(str(tmp_path / "eth.xyz"))
    assert smi3 is None and label3 == "eth"
    np.testing.assert_allclose(a3.positions, a2.positions, atol=1e-6)


@pytest.mark.xtb
def test_generated_forces_match_finite_differences(tmp_path):
    """Stored forces (kcal/mol/A on disk) equal -dE/dR of recomputed energies (central differences)."""
    _needs_xtb()
    p = X.generate_xtb_md("ethanol", tmp_path / "fd.npz", n_frames=2, stride=4, equilibration_steps=4,
                          accuracy=0.01, progress=False, command="test")  # fmt: skip
    ds = load_npz(p)
    calc = X.xtb_calculator(accuracy=0.01)
    from ase import Atoms

    h = 1e-3  # Angstrom
    worst = 0.0
    for i in range(len(ds)):
        fr = ds[i]
        atoms = Atoms(numbers=fr["numbers"], positions=fr["positions"])
        atoms.calc = calc
        e0 = atoms.get_potential_energy()
        assert abs(e0 - fr["energy"]) < 1e-6, f"frame {i}: stored E {fr['energy']} vs recomputed {e0}"
        fd = np.zeros_like(fr["positions"])
        for a in range(len(atoms)):
            for k in range(3):
                e = []
                for s in (1, -1):
                    pos = fr["positions"].copy()
                    pos[a, k] += s * h
                    atoms.positions = pos
                    e.append(atoms.get_potential_energy())
                fd[a, k] = -(e[0] - e[1]) / (2 * h)
        err = np.abs(fd - fr["forces"])
        worst = max(worst, err.max())
        assert err.max() < 1e-4, f"frame {i}: max |F - F_fd| {err.max():.2e} eV/A at atom {err.argmax() // 3}"
        assert np.abs(fr["forces"]).max() > 0.05  # forces at 500 K are not trivially zero
    print(f"finite-difference force check (ethanol, accuracy 0.01, h = 1e-3 A): max error {worst:.2e} eV/A")


class _Kill(Exception):
    pass


@pytest.mark.xtb
def test_resume_after_kill_is_bit_identical(tmp_path):
    _needs_xtb()
    ref = X.generate_xtb_md("ethanol", tmp_path / "ref.npz", seed=7, **TINY)

    def kill_at_5(k):
        if k == 5:
            raise _Kill

    out = tmp_path / "run.npz"
    with pytest.raises(_Kill):
        X.generate_xtb_md("ethanol", out, seed=7, callback=kill_at_5, **TINY)
    assert not out.exists()
    with np.load(tmp_path / "run.ckpt.npz") as c:
        assert c["energies"].shape == (4,), "checkpoint holds the frames up to the last multiple of 2"
    X.generate_xtb_md("ethanol", out, seed=7, **TINY)
    _assert_same_file(ref, out)
    ds = load_npz(out)
    assert len(ds) == 6 and ds.metadata["frame_spacing_fs"] == 1.0
    # the trajectory does not depend on where checkpoints fall
    other_schedule = X.generate_xtb_md(
        "ethanol", tmp_path / "c5.npz", seed=7, **{**TINY, "checkpoint_every": 5}
    )
    _assert_same_file(ref, other_schedule)
    # a finished run can be extended from its checkpoint; the first frames are unchanged
    longer = X.generate_xtb_md("ethanol", out, seed=7, **{**TINY, "n_frames": 8})
    d8 = load_npz(longer)
    assert len(d8) == 8
    np.testing.assert_array_equal(d8.energies[:6], ds.energies)
    # a different seed gives a different trajectory; mismatched settings refuse to resume
    other = load_npz(X.generate_xtb_md("ethanol", tmp_path / "s8.npz", seed=8, **TINY))
    assert not np.array_equal(other.energies, ds.energies)
    with pytest.raises(ValueError, match="different settings"):
        X.generate_xtb_md("ethanol", out, seed=7, **{**TINY, "stride": 3})


@pytest.mark.xtb
def test_scf_failures_are_retried_and_counted(tmp_path, monkeypatch):
    _needs_xtb()
    from ase.calculators.calculator import CalculationFailed

    real = X.xtb_calculator
    calls = {"n": 0}

    def flaky(**kw):
        calc = real(**kw)
        orig = calc.calculate

        def calculate(*a, **k):
            calls["n"] += 1
            if calls["n"] in (9, 10, 17):
                raise CalculationFailed("injected SCF failure")
            return orig(*a, **k)

        calc.calculate = calculate
        return calc

    monkeypatch.setattr(X, "xtb_calculator", flaky)
    ds = load_npz(X.generate_xtb_md("ethanol", tmp_path / "f.npz", seed=1, **TINY))
    assert ds.metadata["scf_failures"] == 3
    assert len(ds) == 6 and np.all(np.isfinite(ds.energies))
    _, r, _, _ = ds.stacked()
    assert np.abs(np.diff(r, axis=0)).max(axis=(1, 2)).min() > 1e-4, "no frame stored twice"


@pytest.mark.xtb
def test_workers_run_independent_trajectories(tmp_path):
    _needs_xtb()
    kw = {**TINY, "n_frames": 4, "checkpoint_every": 10}
    p = X.generate_xtb_md("ethanol", tmp_path / "w.npz", seed=3, workers=2, **kw)
    ds = load_npz(p)
    assert len(ds) == 4 and ds.extra["trajectory"].tolist() == [0, 0, 1, 1]
    seeds = ds.metadata["seeds"]
    assert len(set(seeds)) == 2 and ds.metadata["workers"] == 2
    # each part equals a single-process run with that worker's seed
    single = load_npz(
        X.generate_xtb_md("ethanol", tmp_path / "s.npz", seed=seeds[1], **{**kw, "n_frames": 2})
    )
    np.testing.assert_array_equal(single.energies, ds.energies[2:])


@pytest.mark.xtb
def test_cli_xtb_md_and_info(tmp_path, capsys):
    _needs_xtb()
    from spherequant.models.data_cli import main

    out = tmp_path / "cli.npz"
    rc = main(["xtb-md", "--molecule", "ethanol", "--frames", "3", "--stride", "2", "--equilibration", "2",
               "--seed", "2", "--out", str(out), "--quiet", "--float32"])  # fmt: skip
    assert rc == 0
    ds = load_npz(out)
    assert len(ds) == 3 and ds.metadata["storage_dtype"] == "float32"
    assert "xtb-md" in ds.metadata["command"]
    with np.load(out) as raw:
        assert raw["coords"].dtype == np.float32 and raw["energies"].dtype == np.float64
        # energies on disk are kcal/mol (GFN2 ethanol is about -7150 kcal/mol)
        assert abs(raw["energies"].mean() * KCAL_PER_MOL - ds.energies.mean()) < 1e-9
        assert -7300 < raw["energies"].mean() < -7000
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "frames                 3" in text and "C2H6O" in text and "GFN2-xTB" in text
    assert main(["info", str(tmp_path / "nope.npz")]) == 2


# ------------------------------------------------- the trajectory loop with a cheap stand-in calculator
# The loop (resume, checkpoints, rollback after a failed single point, provenance, merging of worker files)
# does not depend on the physics; ASE's EMT potential drives it here so that it is tested without tblite.
def _emt_calculator(**kw):
    """EMT (ASE) with the ``drop_guess`` method of :func:`spherequant.models.xtb.xtb_calculator`."""
    from ase.calculators.emt import EMT

    class _EMT(EMT):
        def drop_guess(self):
            self.reset()

    return _EMT()


@pytest.fixture
def emt_xtb(monkeypatch, tmp_path):
    """The generator with EMT forces in place of GFN2-xTB; yields an xyz file of ethanol (ASE geometry)."""
    pytest.importorskip("ase")
    import types

    import ase.io
    from ase.build import molecule

    if "tblite.interface" not in sys.modules:
        for name in ("tblite", "tblite.interface"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(X, "xtb_calculator", _emt_calculator)
    xyz = tmp_path / "ethanol.xyz"
    ase.io.write(xyz, molecule("CH3CH2OH"))
    return str(xyz)


def test_loop_resume_after_kill_is_bit_identical(emt_xtb, tmp_path):
    ref = X.generate_xtb_md(emt_xtb, tmp_path / "ref.npz", seed=7, **TINY)
    ds = load_npz(ref)
    assert len(ds) == 6 and ds.metadata["frame_spacing_fs"] == 1.0 and ds.metadata["source_file"] == emt_xtb
    assert np.all(np.isfinite(ds.energies)) and np.abs(np.diff(ds.energies)).max() > 0

    def kill_at(k):
        if k == 5:
            raise _Kill

    out = tmp_path / "run.npz"
    with pytest.raises(_Kill):
        X.generate_xtb_md(emt_xtb, out, seed=7, callback=kill_at, **TINY)
    assert not out.exists()
    with np.load(tmp_path / "run.ckpt.npz") as c:
        assert c["energies"].shape == (4,), "checkpoint holds the frames up to the last multiple of 2"
    X.generate_xtb_md(emt_xtb, out, seed=7, **TINY)
    _assert_same_file(ref, out)
    # killed during the first chunk: only the equilibration checkpoint exists
    early = tmp_path / "early.npz"
    with pytest.raises(_Kill):
        X.generate_xtb_md(emt_xtb, early, seed=7, callback=lambda k: (_ for _ in ()).throw(_Kill()),
                          **{**TINY, "checkpoint_every": 4})  # fmt: skip
    with np.load(tmp_path / "early.ckpt.npz") as c:
        assert c["energies"].shape == (0,)
    _assert_same_file(ref, X.generate_xtb_md(emt_xtb, early, seed=7, **{**TINY, "checkpoint_every": 4}))
    # the trajectory does not depend on where checkpoints fall; a finished run extends from its checkpoint
    _assert_same_file(ref, X.generate_xtb_md(emt_xtb, tmp_path / "c5.npz", seed=7,
                                             **{**TINY, "checkpoint_every": 5}))  # fmt: skip
    d8 = load_npz(X.generate_xtb_md(emt_xtb, out, seed=7, **{**TINY, "n_frames": 8}))
    np.testing.assert_array_equal(d8.energies[:6], ds.energies)
    # resume=False starts over (same result), a different seed differs, other settings refuse to resume
    _assert_same_file(ref, X.generate_xtb_md(emt_xtb, out, seed=7, resume=False, **TINY))
    assert not np.array_equal(load_npz(X.generate_xtb_md(emt_xtb, tmp_path / "s8.npz", seed=8, **TINY))
                              .energies, ds.energies)  # fmt: skip
    with pytest.raises(ValueError, match="different settings"):
        X.generate_xtb_md(emt_xtb, out, seed=7, **{**TINY, "stride": 3})


def test_loop_stores_the_calculators_energies_and_forces(emt_xtb, tmp_path):
    """Stored frames (kcal/mol on disk) are the calculator's energy and forces at the stored positions."""
    ds = load_npz(X.generate_xtb_md(emt_xtb, tmp_path / "e.npz", seed=2, float32=False, **TINY))
    from ase import Atoms

    worst = 0.0
    for i in range(len(ds)):
        fr = ds[i]
        atoms = Atoms(numbers=fr["numbers"], positions=fr["positions"])
        atoms.calc = _emt_calculator()
        assert abs(atoms.get_potential_energy() - fr["energy"]) < 1e-9 * max(1.0, abs(fr["energy"]))
        worst = max(worst, float(np.abs(atoms.get_forces() - fr["forces"]).max()))
    assert worst < 1e-9, f"stored forces differ from the calculator's by {worst:.2e} eV/A"
    # the centre of mass stays fixed (FixCom), frames are distinct
    _, r, _, _ = ds.stacked()
    m = Atoms(numbers=ds[0]["numbers"]).get_masses()
    com = (m[None, :, None] * r).sum(1) / m.sum()
    assert np.abs(com - com[0]).max() < 1e-8
    assert np.abs(np.diff(r, axis=0)).max(axis=(1, 2)).min() > 1e-4


def test_loop_failures_are_retried_counted_and_bounded(emt_xtb, tmp_path, monkeypatch):
    from ase.calculators.calculator import CalculationFailed

    def flaky(fail_at):
        calls = {"n": 0}

        def make(**kw):
            calc = _emt_calculator()
            orig = calc.calculate

            def calculate(*a, **k):
                calls["n"] += 1
                if calls["n"] in fail_at:
                    raise CalculationFailed("injected failure")
                return orig(*a, **k)

            calc.calculate = calculate
            return calc

        return make

    monkeypatch.setattr(X, "xtb_calculator", flaky({9, 10, 17}))
    ds = load_npz(X.generate_xtb_md(emt_xtb, tmp_path / "f.npz", seed=1, **TINY))
    assert ds.metadata["scf_failures"] == 3 and len(ds) == 6 and np.all(np.isfinite(ds.energies))
    _, r, _, _ = ds.stacked()
    assert np.abs(np.diff(r, axis=0)).max(axis=(1, 2)).min() > 1e-4, "no frame stored twice"
    # too many consecutive failures: equilibration gives up; after frames, the checkpoint is kept
    monkeypatch.setattr(X, "xtb_calculator", flaky(set(range(2, 10_000))))
    with pytest.raises(RuntimeError, match="during equilibration"):
        X.generate_xtb_md(emt_xtb, tmp_path / "eq.npz", seed=1, max_retries=2, **TINY)
    monkeypatch.setattr(X, "xtb_calculator", flaky(set(range(12, 10_000))))
    with pytest.raises(
        RuntimeError, match=r"2 consecutive SCF failures after frame (\d+); checkpoint kept"
    ) as err:
        X.generate_xtb_md(emt_xtb, tmp_path / "pr.npz", seed=1, max_retries=2, **TINY)
    k = int(err.value.args[0].split("after frame ")[1].split(";")[0])
    with np.load(tmp_path / "pr.ckpt.npz") as c:
        assert k >= 1 and c["energies"].shape == (k,) and int(c["n_failures"]) == 3


def test_loop_argument_validation(emt_xtb, tmp_path):
    cases = [
        ({"stride": 0}, "stride must be a positive int"),
        ({"n_frames": True}, "n_frames must be a positive int"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"equilibration_steps": -1}, "equilibration_steps must be a non-negative int"),
        ({"friction": 0.0}, "friction must be a positive finite number"),
        ({"accuracy": float("inf")}, "accuracy"),
        ({"workers": 3, "n_frames": 2}, r"workers \(3\) must not exceed n_frames \(2\)"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            X.generate_xtb_md(emt_xtb, tmp_path / "e.npz", **{"n_frames": 2, **kw})
    assert not (tmp_path / "e.ckpt.npz").exists()


def test_merge_parts_concatenates_worker_files(emt_xtb, tmp_path):
    """The merge step of a multi-worker run (the spawned workers themselves need tblite: see above)."""
    seeds = [X._worker_seed(3, w) for w in range(2)]
    assert seeds[0] == 3 and seeds[1] != 3
    paths = [X.generate_xtb_md(emt_xtb, tmp_path / f"p{w}.npz", seed=s, **{**TINY, "n_frames": n})
             for w, (s, n) in enumerate(zip(seeds, (3, 2)))]  # fmt: skip
    out = X._merge_parts(tmp_path / "all.npz", paths, counts=[3, 2], seeds=seeds, seed=3, float32=True)
    ds, parts = load_npz(out), [load_npz(p) for p in paths]
    assert len(ds) == 5 and ds.extra["trajectory"].tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(ds.energies, np.concatenate([p.energies for p in parts]))
    meta = ds.metadata
    assert meta["seeds"] == seeds and meta["workers"] == 2 and meta["frames_per_trajectory"] == [3, 2]
    assert meta["n_frames"] == 5 and meta["storage_dtype"] == "float64"  # part metadata, stored as float32
    assert meta["wall_time_s"] == round(sum(p.metadata["wall_time_s"] for p in parts), 3)
    with np.load(out) as raw:
        assert raw["coords"].dtype == np.float32
