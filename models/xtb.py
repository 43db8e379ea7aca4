"""Reference data generator: Langevin molecular dynamics with GFN2-xTB (tblite), written in rMD17 format.

Pipeline: molecule name / SMILES / xyz file -> RDKit 3D geometry (AddHs, ETKDG embedding with a fixed seed,
MMFF optimisation) -> ASE ``Atoms`` -> Langevin NVT (ASE, ``FixCom`` constraint) with GFN2-xTB forces ->
equilibration steps (dropped) -> one frame every ``stride`` steps -> rMD17-format ``.npz`` with provenance.

Resumable and reproducible: every ``checkpoint_every`` frames the frames so far and the full MD state
(positions, momenta, the bit-generator state of the Langevin noise) are written atomically. The SCF restart
guess is dropped at every frame boundary and tblite runs on one OpenMP thread, so an interrupted run resumed
from its checkpoint produces the same file, bit for bit, as an uninterrupted one (same machine and library
versions), whatever ``checkpoint_every`` is.

tblite, RDKit and ASE are an optional extra: ``pip install spherequant[xtb]``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .data import KCAL_PER_MOL, MolecularDataset, atomic_savez, save_npz

__all__ = [
    "MOLECULES",
    "build_atoms",
    "command_line",
    "generate_xtb_md",
    "resolve_molecule",
    "xtb_calculator",
]

#: Built-in molecules (the rMD17 set): name -> SMILES.
MOLECULES: dict[str, str] = {
    "azobenzene": "c1ccc(cc1)/N=N/c1ccccc1",  # trans, C12H10N2, 24 atoms
    "ethanol": "CCO",
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "malonaldehyde": "O/C=C\\C=O",  # the enol tautomer of rMD17 (intramolecular H-bond)
    "benzene": "c1ccccc1",
    "toluene": "Cc1ccccc1",
    "naphthalene": "c1ccc2ccccc2c1",
    "uracil": "O=C1C=CNC(=O)N1",
    "salicylic acid": "O=C(O)c1ccccc1O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
}

#: Seed of RDKit's conformer embedding (the starting geometry is the same for every MD seed).
EMBED_SEED = 42

_MD_CONFIG_KEYS = (
    "numbers",
    "temperature_K",
    "timestep_fs",
    "stride",
    "equilibration_steps",
    "seed",
    "accuracy",
    "friction_per_fs",
)


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(
            f"{module.split('.')[0]} is needed to generate GFN2-xTB data; install the extra with "
            f"`pip install spherequant[xtb]` ({err})"
        ) from None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("tblite", "ase", "rdkit", "numpy", "spherequant"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def resolve_molecule(molecule: str) -> tuple[str, str | None, str | None]:
    """Classify ``molecule`` as a built-in name, an xyz file or a SMILES string.

    Returns
    -------
    (label, smiles, xyz_path) : tuple
        ``smiles`` is None for a file; ``xyz_path`` is None otherwise.

    Examples
    --------
    >>> resolve_molecule("Ethanol")
    ('ethanol', 'CCO', None)
    >>> resolve_molecule("salicylic_acid")[0]
    'salicylic acid'
    """
    if not isinstance(molecule, (str, os.PathLike)):
        raise TypeError(f"molecule must be a name, a SMILES string or a path, got {type(molecule).__name__}")
    text = os.fspath(molecule)
    key = text.strip().lower().replace("_", " ").replace("-", " ")
    if key in MOLECULES:
        return key, MOLECULES[key], None
    p = Path(text)
    if p.suffix.lower() in (".xyz", ".extxyz") or p.exists():
        if not p.exists():
            raise ValueError(f"molecule file {text!r} does not exist")
        return p.stem, None, str(p)
    if not text.strip() or any(c.isspace() for c in text.strip()):
        raise ValueError(
            f"molecule {text!r} is neither a known name ({sorted(MOLECULES)}), an xyz file "
            "nor a SMILES string"
        )
    return text.strip(), text.strip(), None


def build_atoms(molecule: str):
    """Starting geometry: RDKit 3D (fixed seed, MMFF-optimised) for a name/SMILES, or an xyz file's frame 0.

    Returns
    -------
    (atoms, label, smiles) : tuple
        ASE ``Atoms`` (Angstrom), a short label, and RDKit's canonical SMILES (None for a file).

    Examples
    --------
    >>> build_atoms("ethanol").get_chemical_formula()  # doctest: +SKIP
    'C2H6O'
    """
    label, smiles, path = resolve_molecule(molecule)
    from ase import Atoms

    if path is not None:
        import ase.io

        atoms = ase.io.read(path, index=0)
        return Atoms(numbers=atoms.numbers, positions=atoms.positions), label, None
    Chem = _require("rdkit.Chem")
    AllChem = _require("rdkit.Chem.AllChem")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(
            f"molecule {smiles!r} is neither a known name ({sorted(MOLECULES)}) nor valid SMILES"
        )
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = EMBED_SEED
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed a 3D geometry for {smiles!r}")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    positions = mol.GetConformer().GetPositions()
    return Atoms(numbers=numbers, positions=positions), label, Chem.MolToSmiles(Chem.RemoveHs(mol))


@functools.lru_cache(maxsize=1)
def _openmp_runtime():
    import ctypes
    import ctypes.util

    for name in ("libgomp.so.1", ctypes.util.find_library("gomp"), ctypes.util.find_library("omp")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "omp_set_num_threads") and hasattr(lib, "omp_get_max_threads"):
            return lib
    return None


@contextlib.contextmanager
def _single_openmp_thread():
    """Run tblite's OpenMP regions on one thread (restoring the previous setting afterwards).

    tblite shares the process's libgomp with torch, so ``torch.set_num_threads(n)`` would otherwise make the
    SCF multi-threaded: OpenMP reductions are not bitwise reproducible, and on a loaded machine spinning
    OpenMP threads slow a small molecule down many times. One thread is also what scales best: independent
    trajectories run in separate processes (``workers``).
    """
    lib = _openmp_runtime()
    if lib is None:
        yield
        return
    old = lib.omp_get_max_threads()
    lib.omp_set_num_threads(1)
    try:
        yield
    finally:
        lib.omp_set_num_threads(old)


def _calculator_base():
    return _require("ase.calculators.calculator")


def xtb_calculator(accuracy: float = 1.0, max_iterations: int = 250, method: str = "GFN2-xTB"):
    """An ASE calculator computing GFN2-xTB energy (eV) and forces (eV/Angstrom) with tblite's Python API.

    Unlike ``tblite.ase.TBLite`` the returned calculator has a ``drop_guess()`` method, which forgets the SCF
    restart wavefunction so that the next result depends on the positions only (this makes checkpoints
    reproducible). SCF failures raise ``ase.calculators.calculator.CalculationFailed``.

    Parameters
    ----------
    accuracy : float
        tblite accuracy (SCF and integral thresholds scale with it; 1.0 is tblite's default).
    max_iterations : int
        SCF iteration limit.
    method : str
        tblite method name.

    Examples
    --------
    >>> from ase.build import molecule  # doctest: +SKIP
    >>> atoms = molecule("H2O"); atoms.calc = xtb_calculator()  # doctest: +SKIP
    >>> round(atoms.get_potential_energy())  # doctest: +SKIP
    -138
    """
    return _make_calculator(accuracy, max_iterations, method)


def _make_calculator(accuracy, max_iterations, method):
    calc_mod = _calculator_base()
    interface = _require("tblite.interface")
    from ase.units import Bohr, Hartree

    class _XTB(calc_mod.Calculator):
        implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

        def __init__(self):
            super().__init__()
            self._api = None
            self._restart = None
            self.n_scf_failures = 0

        def drop_guess(self):
            self.reset()
            self._api = None
            self._restart = None

        def calculate(self, atoms=None, properties=None, system_changes=calc_mod.all_changes):
            super().calculate(atoms, properties, system_changes)
            structural = set(system_changes) - {"positions"}
            if self._api is not None and structural:
                self._api = None
                self._restart = None
            pos = self.atoms.positions / Bohr
            try:
                if self._api is None:
                    self._api = interface.Calculator(method, self.atoms.numbers, pos)
                    self._api.set("accuracy", float(accuracy))
                    self._api.set("max-iter", int(max_iterations))
                    self._api.set("verbosity", 0)
                else:
                    self._api.update(positions=pos)
                with _single_openmp_thread():
                    self._restart = self._api.singlepoint(self._restart)
            except RuntimeError as err:
                self._api = None
                self._restart = None
                self.n_scf_failures += 1
                raise calc_mod.CalculationFailed(f"GFN2-xTB single point failed: {err}") from err
            energy = float(self._restart["energy"]) * Hartree
            forces = -np.asarray(self._restart["gradient"]) * (Hartree / Bohr)
            if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
                self._api = None
                self._restart = None
                raise calc_mod.CalculationFailed("GFN2-xTB returned NaN/inf energy or forces")
            self.results = {"energy": energy, "free_energy": energy, "forces": forces}

    return _XTB()


# ----------------------------------------------------------------------------------------------------------
# one trajectory
# ----------------------------------------------------------------------------------------------------------
def _ckpt_path(out: Path) -> Path:
    name = out.name[:-4] if out.name.endswith(".npz") else out.name
    return out.with_name(name + ".ckpt.npz")


class _TrajectoryState:
    """The state of one Langevin trajectory: the ASE atoms, calculator, integrator and noise generator, the
    frames stored so far (positions in Angstrom, energies in eV, forces in eV/Angstrom) and the counters a
    checkpoint holds. Its methods are the steps of :func:`_run_trajectory`."""

    def __init__(self, atoms, config: dict, ckpt: Path, seed: int):
        from ase.constraints import FixCom

        self.atoms = atoms
        self.config = config
        self.ckpt = ckpt
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.frames_r: list[np.ndarray] = []
        self.frames_e: list[float] = []
        self.frames_f: list[np.ndarray] = []
        self.n_failures = 0
        self.wall_before = 0.0
        self.equilibrated = False
        self.calc = self.dyn = None
        self.t_start = time.perf_counter()
        atoms.set_constraint(FixCom())

    # ---- start: from a checkpoint or fresh Maxwell-Boltzmann momenta
    def load_checkpoint(self) -> None:
        """Restore frames, MD state and counters from ``self.ckpt`` (settings must match ``self.config``)."""
        with np.load(self.ckpt, allow_pickle=False) as c:
            saved = json.loads(str(c["config"]))
            diff = {
                k: (saved.get(k), self.config[k]) for k in _MD_CONFIG_KEYS if saved.get(k) != self.config[k]
            }
            if diff:
                raise ValueError(
                    f"checkpoint {str(self.ckpt)!r} was made with different settings (saved, requested): "
                    f"{diff}; pass resume=False (--no-resume) to start over"
                )
            self.frames_r = list(c["coords"])
            self.frames_e = list(c["energies"])
            self.frames_f = list(c["forces"])
            self.atoms.set_positions(c["positions"], apply_constraint=False)
            self.atoms.set_momenta(c["momenta"], apply_constraint=False)
            self.rng.bit_generator.state = json.loads(str(c["rng_state"]))
            self.n_failures = int(c["n_failures"])
            self.wall_before = float(c["wall_time_s"])
            self.equilibrated = True

    def thermalize(self, temperature: float) -> None:
        """Maxwell-Boltzmann momenta at ``temperature`` (K) drawn from the trajectory's generator."""
        md_mod = _require("ase.md.velocitydistribution")
        if hasattr(md_mod, "thermalize_momenta"):
            md_mod.thermalize_momenta(self.atoms, temperature_K=temperature, rng=self.rng)
        else:  # ASE < 3.29
            md_mod.MaxwellBoltzmannDistribution(self.atoms, temperature_K=temperature, rng=self.rng)

    def attach(self, calc, *, temperature: float, timestep_fs: float, friction: float) -> None:
        """Attach the calculator and the Langevin integrator (sharing the generator); start the clock."""
        from ase import units
        from ase.md.langevin import Langevin

        self.calc = calc
        self.atoms.calc = calc
        self.dyn = Langevin(
            self.atoms,
            timestep=timestep_fs * units.fs,
            temperature_K=temperature,
            friction=friction / units.fs,
            fixcm=False,
            rng=self.rng,
        )
        self.t_start = time.perf_counter()

    # ---- MD chunks with rollback
    def snapshot(self):
        """The MD state (positions, momenta, noise generator state) to roll back to."""
        return self.atoms.get_positions(), self.atoms.get_momenta(), json.dumps(self.rng.bit_generator.state)

    def restore(self, snap) -> None:
        self.atoms.set_positions(snap[0], apply_constraint=False)
        self.atoms.set_momenta(snap[1], apply_constraint=False)
        self.rng.bit_generator.state = json.loads(snap[2])

    def advance(self, nsteps: int, good) -> bool:
        """Run nsteps; on an SCF failure roll back to ``good``, perturb the noise, and report False."""
        try:
            for _ in range(nsteps):
                self.dyn.step()
            self.atoms.get_potential_energy()
            return True
        except _calculator_base().CalculationFailed:
            self.n_failures += 1
            self.restore(good)
            self.rng.standard_normal()  # a different noise realisation from the last good state
            self.calc.drop_guess()
            return False

    # ---- frames and checkpoints
    def store_frame(self) -> int:
        """Append the current positions, energy and forces; returns the number of frames stored."""
        self.frames_r.append(self.atoms.get_positions())
        self.frames_e.append(float(self.atoms.get_potential_energy()))
        self.frames_f.append(self.atoms.get_forces(apply_constraint=False).copy())
        # Forget the SCF guess at every frame boundary, so that the trajectory does not depend on where
        # checkpoints fall and a resumed run repeats an uninterrupted one exactly (costs < 1%).
        self.calc.drop_guess()
        return len(self.frames_e)

    def wall_time(self) -> float:
        """Wall time of the whole trajectory so far (s), over all sessions."""
        return self.wall_before + time.perf_counter() - self.t_start

    def write_checkpoint(self) -> None:
        """Atomically write the frames so far and the full MD state to ``self.ckpt``."""
        n_atoms = len(self.atoms)
        atomic_savez(
            self.ckpt,
            compressed=False,
            config=np.array(json.dumps(self.config, sort_keys=True)),
            coords=np.array(self.frames_r, dtype=np.float64).reshape(-1, n_atoms, 3),
            energies=np.array(self.frames_e, dtype=np.float64),
            forces=np.array(self.frames_f, dtype=np.float64).reshape(-1, n_atoms, 3),
            positions=self.atoms.get_positions(),
            momenta=self.atoms.get_momenta(),
            rng_state=np.array(json.dumps(self.rng.bit_generator.state)),
            n_failures=np.array(self.n_failures),
            wall_time_s=np.array(self.wall_time()),
        )


def _md_config(atoms, *, temperature, timestep_fs, stride, equilibration_steps, seed, accuracy, friction):
    """The settings a checkpoint must share with a run resuming from it (keys :data:`_MD_CONFIG_KEYS`)."""
    return {
        "numbers": atoms.numbers.tolist(),
        "temperature_K": float(temperature),
        "timestep_fs": float(timestep_fs),
        "stride": int(stride),
        "equilibration_steps": int(equilibration_steps),
        "seed": int(seed),
        "accuracy": float(accuracy),
        "friction_per_fs": float(friction),
    }


def _equilibrate(traj: _TrajectoryState, equilibration_steps: int, stride: int, max_retries: int) -> None:
    """Run and discard ``equilibration_steps`` steps in chunks of ``stride``, then write a checkpoint."""
    done, retries = 0, 0
    good = traj.snapshot()
    while done < equilibration_steps:
        chunk = min(stride, equilibration_steps - done)
        if traj.advance(chunk, good):
            done += chunk
            traj.calc.drop_guess()
            good = traj.snapshot()
            retries = 0
        else:
            retries += 1
            if retries > max_retries:
                raise RuntimeError(f"{max_retries} consecutive SCF failures during equilibration")
    traj.write_checkpoint()


def _produce_frames(
    traj: _TrajectoryState, bar, *, n_frames, stride, checkpoint_every, max_retries, callback
):
    """Store one frame every ``stride`` steps until ``n_frames`` are stored, checkpointing every
    ``checkpoint_every`` frames and at the last; after ``max_retries`` consecutive SCF failures the
    checkpoint is written and RuntimeError raised."""
    retries = 0
    good = traj.snapshot()
    while len(traj.frames_e) < n_frames:
        if not traj.advance(stride, good):
            retries += 1
            if retries > max_retries:
                traj.write_checkpoint()
                raise RuntimeError(
                    f"{max_retries} consecutive SCF failures after frame {len(traj.frames_e)}; "
                    f"checkpoint kept at {traj.ckpt}"
                )
            continue
        retries = 0
        k = traj.store_frame()
        bar.update(1)
        if k % checkpoint_every == 0 or k == n_frames:
            traj.write_checkpoint()
        good = traj.snapshot()
        if callback is not None:
            callback(k)


def _provenance(traj: _TrajectoryState, *, label, smiles, molecule, n_frames, t_eq, float32, command) -> dict:
    """The ``provenance`` metadata of one finished trajectory."""
    cfg = traj.config
    wall = traj.wall_time()
    return {
        "method": "GFN2-xTB",
        "calculator": "tblite (spherequant.models.xtb.xtb_calculator)",
        "molecule": label,
        "smiles": smiles,
        "source_file": str(molecule) if smiles is None else None,
        "temperature_K": cfg["temperature_K"],
        "timestep_fs": cfg["timestep_fs"],
        "stride": cfg["stride"],
        "frame_spacing_fs": float(cfg["stride"] * cfg["timestep_fs"]),
        "equilibration_steps": cfg["equilibration_steps"],
        "equilibration_dropped": True,
        "thermostat": "Langevin (ASE), FixCom constraint",
        "friction_per_fs": cfg["friction_per_fs"],
        "accuracy": cfg["accuracy"],
        "seed": cfg["seed"],
        "seeds": [cfg["seed"]],
        "embed_seed": EMBED_SEED,
        "n_frames": int(n_frames),
        "scf_failures": int(traj.n_failures),
        "wall_time_s": round(wall, 3),
        "wall_time_per_frame_s": round(wall / max(n_frames, 1), 6),
        "equilibration_wall_time_s_this_session": round(t_eq, 3),
        "units": {"coords": "Angstrom", "energies": "kcal/mol", "forces": "kcal/mol/Angstrom"},
        "storage_dtype": "float32" if float32 else "float64",
        "command": command,
        "versions": _versions(),
        "kcal_per_mol_in_eV": KCAL_PER_MOL,
    }


def _run_trajectory(
    molecule: str,
    out: Path,
    *,
    temperature: float,
    timestep_fs: float,
    stride: int,
    n_frames: int,
    equilibration_steps: int,
    seed: int,
    checkpoint_every: int,
    resume: bool,
    accuracy: float,
    friction: float,
    float32: bool,
    progress: bool,
    command: str,
    callback: Callable[[int], None] | None,
    max_retries: int,
    position: int = 0,
) -> Path:
    """One trajectory (see :func:`generate_xtb_md`): start or resume, equilibrate, store frames, write."""
    _require("tblite.interface")
    atoms, label, smiles = build_atoms(molecule)
    config = _md_config(atoms, temperature=temperature, timestep_fs=timestep_fs, stride=stride,
                        equilibration_steps=equilibration_steps, seed=seed, accuracy=accuracy,
                        friction=friction)  # fmt: skip
    traj = _TrajectoryState(atoms, config, _ckpt_path(out), seed)
    if resume and traj.ckpt.exists():
        traj.load_checkpoint()
    else:
        traj.thermalize(temperature)
    calc = xtb_calculator(accuracy=accuracy)
    traj.attach(calc, temperature=temperature, timestep_fs=timestep_fs, friction=friction)
    if not traj.equilibrated:
        _equilibrate(traj, equilibration_steps, stride, max_retries)
    t_eq = time.perf_counter() - traj.t_start
    bar = _tqdm()(
        total=n_frames,
        initial=min(len(traj.frames_e), n_frames),
        desc=f"{label} seed {seed}",
        unit="frame",
        file=sys.stderr,
        disable=not progress,
        position=position,
        leave=True,
    )
    with bar:
        _produce_frames(traj, bar, n_frames=n_frames, stride=stride, checkpoint_every=checkpoint_every,
                        max_retries=max_retries, callback=callback)  # fmt: skip
    meta = _provenance(traj, label=label, smiles=smiles, molecule=molecule, n_frames=n_frames, t_eq=t_eq,
                       float32=float32, command=command)  # fmt: skip
    ds = MolecularDataset(
        atoms.numbers,
        np.array(traj.frames_r[:n_frames]),
        np.array(traj.frames_e[:n_frames]),
        np.array(traj.frames_f[:n_frames]),
        metadata=meta,
    )
    return save_npz(ds, out, float32=float32)


def _tqdm():
    try:
        from tqdm import tqdm

        return tqdm
    except ImportError:  # pragma: no cover - tqdm is in the models extra

        class _Null:
            def __init__(self, *a, **k):
                pass

            def update(self, n=1):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return _Null


def _worker(kwargs: dict[str, Any]) -> str:
    os.environ["OMP_NUM_THREADS"] = "1"
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(1)
    return str(_run_trajectory(**kwargs))


def _worker_seed(seed: int, w: int) -> int:
    """Seed of trajectory ``w``: worker 0 keeps ``seed`` (so a one-worker run can be extended into a
    multi-worker one), the others draw from ``SeedSequence([seed, w])``."""
    if w == 0:
        return int(seed)
    return int(np.random.SeedSequence([seed, w]).generate_state(1, dtype=np.uint32)[0])


# ----------------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------------
def command_line(argv: list[str] | None = None) -> str:
    """This process's command line for provenance, without machine-specific paths.

    ``spherequant data ...`` and ``python -m spherequant.models.data_cli ...`` are both recorded as
    ``spherequant data ...``; any other program by its file name only.

    Examples
    --------
    >>> command_line(["/usr/bin/spherequant", "data", "list"])
    'spherequant data list'
    >>> command_line(["/somewhere/models/data_cli.py", "list"])
    'spherequant data list'
    """
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv else "python"
    if prog == "spherequant":
        return shlex.join(["spherequant", *argv[1:]])
    if prog == "data_cli.py":
        return shlex.join(["spherequant", "data", *argv[1:]])
    return shlex.join([prog, *argv[1:]])


def generate_xtb_md(
    molecule: str,
    out: str | os.PathLike,
    *,
    temperature: float = 500.0,
    timestep_fs: float = 0.5,
    stride: int = 20,
    n_frames: int = 1000,
    equilibration_steps: int = 2000,
    seed: int = 0,
    workers: int = 1,
    checkpoint_every: int = 200,
    resume: bool = True,
    accuracy: float = 1.0,
    friction: float = 0.01,
    float32: bool = False,
    progress: bool = True,
    command: str | None = None,
    callback: Callable[[int], None] | None = None,
    max_retries: int = 10,
) -> Path:
    """Generate a GFN2-xTB Langevin MD data set and write it in rMD17 format.

    Parameters
    ----------
    molecule : str
        A built-in name (see :data:`MOLECULES`), a SMILES string, or an ``.xyz`` file.
    out : path-like
        Output ``.npz`` (rMD17 keys in kcal/mol plus a ``provenance`` JSON string). The checkpoint goes
        next to it as ``<name>.ckpt.npz`` (one per trajectory; kept after completion so a run can be extended
        with a larger ``n_frames``).
    temperature : float
        Thermostat temperature in kelvin.
    timestep_fs : float
        Integration time step in femtoseconds.
    stride : int
        MD steps between stored frames (spacing ``stride * timestep_fs`` fs).
    n_frames : int
        Frames to store in total (split over ``workers``).
    equilibration_steps : int
        Steps run and discarded before the first stored frame.
    seed : int
        Seed of the Langevin noise and the initial Maxwell-Boltzmann momenta. With ``workers > 1``, worker 0
        uses ``seed`` and worker ``w > 0`` uses ``SeedSequence([seed, w])``.
    workers : int
        Independent trajectories run in separate processes (one thread each), concatenated in worker order;
        the per-frame trajectory id is stored under the key ``trajectory``. Trajectory ``w`` is written to
        ``<out>.parts/traj<w>.npz`` with its checkpoint ``traj<w>.ckpt.npz`` next to it.
    checkpoint_every : int
        Frames between checkpoints (atomic writes of frames so far and the MD state, including the RNG state).
    resume : bool
        Continue from an existing checkpoint (settings must match; ``n_frames`` may grow).
    accuracy : float
        tblite SCF accuracy (smaller is tighter; 1.0 is tblite's default).
    friction : float
        Langevin friction in 1/fs.
    float32 : bool
        Store coordinates and forces as float32 (energies stay float64).
    progress : bool
        Show a tqdm progress bar on stderr.
    command : str, optional
        Command line recorded in the provenance (default: this process's ``sys.argv``).
    callback : callable, optional
        Called as ``callback(k)`` after the ``k``-th frame is stored and checkpointed when due (an exception
        raised there aborts the run as a kill would; used by the tests).
    max_retries : int
        Consecutive SCF failures tolerated; after a failure the trajectory rolls back to the last stored frame
        and continues with a different noise realisation. Failures are counted in the provenance
        (``scf_failures``); failed frames are never stored.

    Returns
    -------
    pathlib.Path
        The written file.

    Examples
    --------
    >>> p = generate_xtb_md("ethanol", "/tmp/eth.npz", n_frames=2, stride=2,
    ...                     equilibration_steps=4, progress=False)  # doctest: +SKIP
    >>> load_npz(p).energies.shape  # doctest: +SKIP
    (2,)
    """
    _require("tblite.interface")
    _require("ase")
    _check_generate_arguments(stride=stride, n_frames=n_frames, workers=workers,
                              checkpoint_every=checkpoint_every, equilibration_steps=equilibration_steps,
                              temperature=temperature, timestep_fs=timestep_fs, accuracy=accuracy,
                              friction=friction)  # fmt: skip
    resolve_molecule(molecule)  # validate early, before spawning anything
    out = Path(out)
    common = {
        "molecule": molecule,
        "temperature": float(temperature),
        "timestep_fs": float(timestep_fs),
        "stride": int(stride),
        "equilibration_steps": int(equilibration_steps),
        "checkpoint_every": int(checkpoint_every),
        "resume": bool(resume),
        "accuracy": float(accuracy),
        "friction": float(friction),
        "float32": bool(float32),
        "progress": bool(progress),
        "command": command_line() if command is None else command,
        "max_retries": int(max_retries),
    }
    if workers == 1:
        return _run_trajectory(out=out, n_frames=int(n_frames), seed=int(seed), callback=callback, **common)
    counts = [n_frames // workers + (1 if w < n_frames % workers else 0) for w in range(workers)]
    seeds = [_worker_seed(seed, w) for w in range(workers)]
    paths = _run_workers(out, common, counts, seeds)
    return _merge_parts(out, paths, counts=counts, seeds=seeds, seed=seed, float32=float32)


def _check_generate_arguments(*, stride, n_frames, workers, checkpoint_every, equilibration_steps,
                              temperature, timestep_fs, accuracy, friction) -> None:  # fmt: skip
    """ValueError naming the first argument of :func:`generate_xtb_md` that is out of range."""
    for name, v in (("stride", stride), ("n_frames", n_frames), ("workers", workers),
                    ("checkpoint_every", checkpoint_every)):  # fmt: skip
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(equilibration_steps, (int, np.integer)) or equilibration_steps < 0:
        raise ValueError(f"equilibration_steps must be a non-negative int, got {equilibration_steps!r}")
    for name, v in (("temperature", temperature), ("timestep_fs", timestep_fs), ("accuracy", accuracy),
                    ("friction", friction)):  # fmt: skip
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if workers > n_frames:
        raise ValueError(f"workers ({workers}) must not exceed n_frames ({n_frames})")


def _run_workers(out: Path, common: dict, counts: list[int], seeds: list[int]) -> list[str]:
    """Run trajectory ``w`` (``counts[w]`` frames, seed ``seeds[w]``) in spawned process ``w``, writing
    ``<out>.parts/traj<w>.npz``; returns the part files in worker order."""
    import concurrent.futures as cf
    import multiprocessing as mp

    workers = len(counts)
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        dict(
            common,
            out=parts_dir / f"traj{w}.npz",
            n_frames=counts[w],
            seed=seeds[w],
            callback=None,
            position=w,
        )
        for w in range(workers)
    ]
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers before they load tblite
    try:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(_worker, jobs))
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _merge_parts(out: Path, paths, *, counts: list[int], seeds: list[int], seed: int, float32: bool) -> Path:
    """Concatenate the worker files ``paths`` in order into ``out``, with the per-frame key ``trajectory``
    and provenance summed over the parts (frames, SCF failures, wall time)."""
    from .data import load_npz

    parts = [load_npz(p) for p in paths]
    n_frames, workers = sum(counts), len(counts)
    wall = sum(p.metadata["wall_time_s"] for p in parts)
    meta = dict(parts[0].metadata)
    meta.update(
        seed=int(seed),
        seeds=seeds,
        n_frames=int(n_frames),
        workers=int(workers),
        frames_per_trajectory=counts,
        scf_failures=sum(p.metadata["scf_failures"] for p in parts),
        wall_time_s=round(wall, 3),
        wall_time_per_frame_s=round(wall / n_frames, 6),
    )
    ds = MolecularDataset.concatenate(parts, metadata=meta)
    trajectory = np.repeat(np.arange(workers), counts)
    return save_npz(ds, out, float32=float32, trajectory=trajectory)
