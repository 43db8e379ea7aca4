"""QM9 (Ramakrishnan et al. 2014) from the optional ``qm9pack`` package, as energy-only data in eV / Angstrom.

QM9 holds 133,885 small organic molecules (up to nine heavy atoms C, N, O, F) with B3LYP/6-31G(2df,p)
relaxed geometries and properties (R. Ramakrishnan, P. O. Dral, M. Rupp, O. A. von Lilienfeld, *Quantum
chemistry structures and properties of 134 kilo molecules*, Scientific Data 1, 140022 (2014),
doi:10.1038/sdata.2014.22). The data are published on figshare under CC0 (public domain dedication).

The PyPI package ``qm9pack`` (1.0.3, MIT licence, R. Ramakrishnan) ships them as four CSV tables in
``qm9pack/data``: ``qm9_part{1,2,3}.csv`` with one row per molecule (the QM9 ``dsgdb9nsd_NNNNNN.xyz`` name
and index, SMILES, InChI, atom count, stoichiometry, element list, **Cartesian coordinates in Angstrom**,
Mulliken charges, harmonic frequencies, rotational constants, dipole moment, isotropic polarizability,
HOMO/LUMO/gap, <R^2>, ZPVE, U0, U, H, G, Cv) and ``qm9_polarizability.csv`` (polarizability tensors). They
hold 130,831 molecules: the 3,054 QM9 molecules that failed the authors' geometry consistency check are not
included. Energies are in Hartree. QM9 has geometries but **no forces** (every structure is a minimum).

``import qm9pack`` fails wherever setuptools' ``pkg_resources`` is absent (it imports it), so this module
never imports it: it finds the package folder with ``importlib.util.find_spec`` and reads
the CSV files itself.

The first use parses the three main tables (about 225 MB, a minute or two, with a progress bar) into a
cached ``.npz`` (written atomically; rebuilt when the qm9pack version changes) holding atomic numbers,
positions, the QM9 index and SMILES of every molecule and the scalar properties in their file units;
:func:`load_qm9` then builds a :class:`~spherequant.models.data.MolecularDataset` in seconds.

Units and conventions: positions in Angstrom, energies in eV (1 Hartree = 27.211386245988 eV, CODATA
2018), atoms in the order of the QM9 xyz files. The energy targets ``U0``, ``U``, ``H``, ``G`` are by default
atomization energies: the QM9 atom reference energies of the same level of theory (the ``atomref`` table on
figshare, :data:`ATOM_REFERENCE_HARTREE`) are subtracted, which keeps energies between -9 and -113 eV
instead of -1,000..-19,000 eV (float32-friendly). Training fits per-element energy shifts on top of either
choice (:func:`~spherequant.models.data.energy_statistics`), so the choice changes no model prediction
beyond rounding. Errors are reported in meV.

Splits: :func:`standard_split` is the common 110,000 train / 10,000 validation / rest test split of the
whole set (a seeded permutation). :func:`load_qm9` with ``n_molecules`` takes a seeded random subset (the
first ``n`` of one fixed permutation, so smaller subsets are nested in larger ones); a subset is then split
like any data set with :func:`~spherequant.models.data.split`. The registered names of
:func:`~spherequant.models.data.load_dataset` are ``"qm9"`` (all molecules, U0) and ``"qm9-<n>"`` (the
``n``-molecule subset, U0).
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np

from . import data as data_mod
from .units import ELEMENTARY_CHARGE_C

__all__ = [
    "ATOM_REFERENCE_HARTREE",
    "HARTREE_EV",
    "N_MOLECULES",
    "PROPERTY_COLUMNS",
    "TARGETS",
    "build_cache",
    "cache_path",
    "load_qm9",
    "parse_name",
    "qm9pack_data_dir",
    "read_table",
    "standard_split",
]

#: Hartree energy in eV, from the CODATA 2018 value 4.3597447222071e-18 J and the exact elementary charge.
HARTREE_EV = 4.3597447222071e-18 / ELEMENTARY_CHARGE_C

#: Number of molecules in qm9pack's tables (QM9's 133,885 less the 3,054 failing the consistency check).
N_MOLECULES = 130831

#: Scalar columns kept in the cache: short name -> (CSV column, unit in the file).
PROPERTY_COLUMNS = {
    "A": ("RotA_GHz", "GHz"),
    "B": ("RotB_GHz", "GHz"),
    "C": ("RotC_GHz", "GHz"),
    "mu": ("Dipole_debye", "Debye"),
    "alpha": ("Polarizability_bohr3", "bohr^3"),
    "homo": ("HOMO_au", "Hartree"),
    "lumo": ("LUMO_au", "Hartree"),
    "gap": ("HOMO_LUMO_gap_au", "Hartree"),
    "r2": ("R2_bohr2", "bohr^2"),
    "zpve": ("ZPVE_au", "Hartree"),
    "U0": ("InternalEnergy_0K_au", "Hartree"),
    "U": ("InternalEnergy_298K_au", "Hartree"),
    "H": ("Enthalphy_298K_au", "Hartree"),  # (sic: the file's spelling)
    "G": ("GibbsFreeEnergy_298K_au", "Hartree"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)"),
}

#: Energy targets :func:`load_qm9` turns into a data set's energies (total molecular energies).
TARGETS = ("U0", "U", "H", "G")

#: QM9 atom reference energies (B3LYP/6-31G(2df,p), Hartree) of H, C, N, O, F for U0, U, H, G: the
#: ``atomref`` table published with QM9 on figshare.
ATOM_REFERENCE_HARTREE = {
    "U0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "U": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "H": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "G": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
}

_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_SYMBOL_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_STOICHIOMETRY_Z = (1, 6, 7, 8, 9)  # the order of the 'Stoichiometry' column: H, C, N, O, F
_CACHE_FORMAT = 1
_SUBSET_SEED = 0
_NAME = re.compile(r"^qm9(?:-(\d+))?$")


# ------------------------------------------------------------------------------------------- source files
def qm9pack_data_dir() -> Path | None:
    """Folder of qm9pack's CSV tables, or None when qm9pack (or one of its tables) is not installed.

    Found without importing qm9pack (its ``__init__`` needs ``pkg_resources``).
    """
    try:
        spec = importlib.util.find_spec("qm9pack")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "data"
        if all((folder / name).is_file() for name in _PARTS):
            return folder
    return None


def _qm9pack_version() -> str:
    try:
        return importlib.metadata.version("qm9pack")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source_dir(source_dir) -> Path:
    if source_dir is None:
        folder = qm9pack_data_dir()
        if folder is None:
            raise FileNotFoundError(
                "QM9 needs the optional package qm9pack (pip install 'spherequant[qm9]' or pip install "
                "qm9pack): its CSV tables were not found"
            )
        return folder
    folder = Path(source_dir)
    missing = [name for name in _PARTS if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"source_dir {str(folder)!r} lacks the QM9 table(s) {missing}")
    return folder


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the parsed QM9 cache lives: ``cache_dir``, else ``$SPHEREQUANT_CACHE_DIR``, else
    ``~/.cache/spherequant``; the file name carries the qm9pack version and the cache format."""
    if cache_dir is None:
        cache_dir = os.environ.get("SPHEREQUANT_CACHE_DIR") or Path.home() / ".cache" / "spherequant"
    return Path(cache_dir) / f"qm9-qm9pack{_qm9pack_version()}-v{_CACHE_FORMAT}.npz"


# ------------------------------------------------------------------------------------------------ parsing
def _parse_elements(text: str, where: str) -> list[int]:
    """``"['C','H','H']"`` -> ``[6, 1, 1]``."""
    inner = text.strip()
    if not (inner.startswith("[") and inner.endswith("]")):
        raise ValueError(f"{where}: 'Elements' is not a bracketed list: {text[:60]!r}")
    out = []
    for item in inner[1:-1].split(","):
        sym = item.strip().strip("'\"")
        if sym not in _SYMBOL_Z:
            raise ValueError(f"{where}: unknown element {sym!r} in 'Elements'")
        out.append(_SYMBOL_Z[sym])
    return out


def _parse_coordinates(text: str, where: str) -> np.ndarray:
    """``"[[0.59,0.,1.],[-0.59,0.,1.]]"`` -> array (n, 3) (the file writes ``0.``, which JSON refuses)."""
    try:
        values = [float(v) for v in text.replace("[", " ").replace("]", " ").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{where}: 'XYZ_Ang' holds a non-number: {text[:60]!r}") from None
    if len(values) % 3:
        raise ValueError(f"{where}: 'XYZ_Ang' holds {len(values)} numbers, not a multiple of 3")
    return np.asarray(values, dtype=np.float64).reshape(-1, 3)


def read_table(path: str | os.PathLike, progress=None) -> dict[str, np.ndarray]:
    """Parse one qm9pack CSV table (``qm9_partK.csv``) into arrays, checking each row's consistency.

    Parameters
    ----------
    path : path-like
    progress : tqdm-like, optional
        Updated by one per row.

    Returns
    -------
    dict
        ``index`` (M,) int64 QM9 index, ``smiles`` (M,) str, ``numbers`` (total atoms,) int64, ``ptr``
        (M + 1,) int64 frame offsets, ``positions`` (total atoms, 3) float64 in Angstrom, and one (M,)
        float64 array per :data:`PROPERTY_COLUMNS` short name, in the file's units.

    Raises
    ------
    ValueError
        On a missing column or a row whose atom count, element list, stoichiometry and coordinates disagree.
    """
    path = Path(path)
    index, smiles, numbers, positions, counts = [], [], [], [], []
    props = {k: [] for k in PROPERTY_COLUMNS}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = ["Index", "SMILES", "N_atoms", "Stoichiometry", "Elements", "XYZ_Ang"]
        need += [col for col, _ in PROPERTY_COLUMNS.values()]
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {missing}")
        for row_no, row in enumerate(reader, start=2):
            where = f"{path.name} line {row_no}"
            z = _parse_elements(row["Elements"], where)
            xyz = _parse_coordinates(row["XYZ_Ang"], where)
            n = int(row["N_atoms"])
            if len(z) != n or xyz.shape != (n, 3):
                raise ValueError(
                    f"{where}: N_atoms {n} but {len(z)} elements and coordinates of shape {xyz.shape}"
                )
            stoich = json.loads(row["Stoichiometry"])
            if [z.count(e) for e in _STOICHIOMETRY_Z] != list(stoich):
                raise ValueError(f"{where}: stoichiometry {stoich} does not match the elements")
            index.append(int(row["Index"]))
            smiles.append(row["SMILES"])
            numbers.extend(z)
            positions.append(xyz)
            counts.append(n)
            for key, (col, _) in PROPERTY_COLUMNS.items():
                props[key].append(float(row[col]))
            if progress is not None:
                progress.update(1)
    out = {
        "index": np.asarray(index, dtype=np.int64),
        "smiles": np.asarray(smiles, dtype=str),
        "numbers": np.asarray(numbers, dtype=np.int64),
        "ptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "positions": np.concatenate(positions) if positions else np.zeros((0, 3)),
    }
    out.update({k: np.asarray(v, dtype=np.float64) for k, v in props.items()})
    return out


def build_cache(
    cache_dir: str | os.PathLike | None = None,
    *,
    source_dir: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Parse qm9pack's tables once into the cache file (:func:`cache_path`); return its path.

    An existing cache of the same qm9pack version and format is kept unless ``force``. The write is atomic
    (a killed build leaves no partial cache and is simply redone).

    Parameters
    ----------
    cache_dir : path-like, optional
        See :func:`cache_path`.
    source_dir : path-like, optional
        Folder holding ``qm9_part{1,2,3}.csv`` (default: qm9pack's ``data`` folder).
    progress : bool
        Show a progress bar over the molecules.
    force : bool
        Rebuild even when the cache exists.
    """
    path = cache_path(cache_dir)
    if path.is_file() and not force:
        return path
    folder = _source_dir(source_dir)
    from tqdm.auto import tqdm

    bar = tqdm(total=N_MOLECULES, desc="parsing QM9 (qm9pack CSV)", unit="mol", disable=not progress)
    try:
        parts = [read_table(folder / name, progress=bar) for name in _PARTS]
    finally:
        bar.close()
    arrays = {}
    for key in parts[0]:
        if key == "ptr":
            counts = np.concatenate([np.diff(p["ptr"]) for p in parts])
            arrays[key] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        else:
            arrays[key] = np.concatenate([p[key] for p in parts])
    order = np.argsort(arrays["index"], kind="stable")
    if not np.array_equal(order, np.arange(order.size)):
        raise ValueError("the qm9pack tables are not in QM9 index order")
    if np.unique(arrays["index"]).size != arrays["index"].size:
        raise ValueError("the qm9pack tables list a QM9 index twice")
    provenance = {
        "source": "QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014), doi:10.1038/sdata.2014.22; CC0)",
        "via": f"qm9pack {_qm9pack_version()} (MIT) CSV tables",
        "cache_format": _CACHE_FORMAT,
        "units": {k: unit for k, (_, unit) in PROPERTY_COLUMNS.items()} | {"positions": "Angstrom"},
        "n_molecules": int(arrays["index"].size),
    }
    arrays["provenance"] = np.array(json.dumps(provenance, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    return data_mod.atomic_savez(path, **arrays)


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as err:  # a damaged cache is reported with its path; delete it to rebuild
        raise ValueError(
            f"QM9 cache {str(path)!r} is unreadable ({type(err).__name__}: {err}); delete it to rebuild"
        ) from None
    need = {"index", "smiles", "numbers", "ptr", "positions", "provenance", *PROPERTY_COLUMNS}
    if not need <= set(out):
        missing = sorted(need - set(out))
        raise ValueError(f"QM9 cache {str(path)!r} lacks keys {missing}; delete it to rebuild")
    return out


# ------------------------------------------------------------------------------------------------ loading
def load_qm9(
    target: str = "U0",
    *,
    n_molecules: int | None = None,
    atom_reference: bool = True,
    cache_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> data_mod.MolecularDataset:
    """QM9 as an energy-only :class:`~spherequant.models.data.MolecularDataset` (eV, Angstrom).

    Parameters
    ----------
    target : {"U0", "U", "H", "G"}
        The energy that becomes the data set's ``energies``: internal energy at 0 K (``U0``) or 298.15 K
        (``U``), enthalpy (``H``) or free energy (``G``) at 298.15 K.
    n_molecules : int, optional
        Take a seeded random subset of this many molecules (the first ``n`` of one fixed permutation: nested
        subsets), kept in QM9 index order. Default: all 130,831.
    atom_reference : bool
        Subtract the QM9 atom reference energies (:data:`ATOM_REFERENCE_HARTREE`): atomization energies.
    cache_dir, source_dir : path-like, optional
        See :func:`build_cache`; the cache is built on first use.
    progress : bool
        Progress bar while the cache is built.

    Returns
    -------
    MolecularDataset
        ``forces`` None; ``metadata`` records source, licence, target, units and reference;
        ``extra["qm9_index"]`` (F,) holds each frame's QM9 index (``dsgdb9nsd_<index>.xyz``).

    Raises
    ------
    FileNotFoundError
        When qm9pack (its tables) is not installed and no cache exists.
    """
    if not isinstance(target, str) or target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    if not isinstance(atom_reference, bool):
        raise TypeError(f"atom_reference must be a bool, got {type(atom_reference).__name__}")
    if n_molecules is not None:
        if not isinstance(n_molecules, (int, np.integer)) or isinstance(n_molecules, bool):
            raise TypeError(f"n_molecules must be an int or None, got {type(n_molecules).__name__}")
        if not 1 <= n_molecules <= N_MOLECULES:
            raise ValueError(f"n_molecules must be in 1..{N_MOLECULES}, got {n_molecules}")
    path = cache_path(cache_dir)
    if not path.is_file():
        build_cache(cache_dir, source_dir=source_dir, progress=progress)
    table = _read_cache(path)
    n_all = table["index"].size
    if n_molecules is None:
        frames = np.arange(n_all)
    else:
        if n_molecules > n_all:
            raise ValueError(f"n_molecules = {n_molecules} exceeds the {n_all} molecules of the cache")
        frames = np.sort(np.random.default_rng(_SUBSET_SEED).permutation(n_all)[:n_molecules])
    ptr, numbers, positions = table["ptr"], table["numbers"], table["positions"]
    z = [numbers[ptr[i] : ptr[i + 1]] for i in frames]
    r = [positions[ptr[i] : ptr[i + 1]] for i in frames]
    energy_ha = table[target][frames].astype(np.float64)
    if atom_reference:
        ref = ATOM_REFERENCE_HARTREE[target]
        energy_ha = energy_ha - np.array([sum(ref[int(a)] for a in zi) for zi in z])
    prov = json.loads(str(table["provenance"]))
    meta = {
        "name": "qm9" if n_molecules is None else f"qm9-{n_molecules}",
        "source": prov["source"],
        "via": prov["via"],
        "method": "B3LYP/6-31G(2df,p)",
        "target": target,
        "energy": f"{'atomization ' if atom_reference else ''}{target} in eV (1 Ha = {HARTREE_EV!r} eV)",
        "atom_reference": "QM9 atomref (figshare)" if atom_reference else None,
        "subset_seed": None if n_molecules is None else _SUBSET_SEED,
        "forces": None,
    }
    ds = data_mod.MolecularDataset(z, r, energy_ha * HARTREE_EV, None, metadata=meta)
    ds.extra = {"qm9_index": table["index"][frames]}
    return ds


def parse_name(name: str) -> int | bool | None:
    """``"qm9"`` -> None (all molecules), ``"qm9-5000"`` -> 5000; any other name -> False."""
    m = _NAME.match(name)
    if m is None:
        return False
    return None if m.group(1) is None else int(m.group(1))


def standard_split(dataset: data_mod.MolecularDataset | int, seed: int = 0) -> data_mod.Split:
    """The common QM9 split of the whole set: 110,000 train, 10,000 validation, the rest (10,831) test.

    A seeded permutation (:func:`~spherequant.models.data.split`); needs at least 120,000 frames.
    """
    return data_mod.split(dataset, n_train=110_000, n_val=10_000, seed=seed)
