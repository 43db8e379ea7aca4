"""Reference data for the force field: an in-memory data set, rMD17 / extxyz readers, splits and batching.

Units inside the library are fixed: positions in Angstrom, energies in eV, forces in eV/Angstrom. Readers
convert on load (rMD17 stores kcal/mol and kcal/mol/Angstrom; see :data:`KCAL_PER_MOL`), writers convert back.

The on-disk format of this project is the rMD17 ``.npz`` layout (keys ``nuclear_charges``, ``coords``,
``energies``, ``forces`` in kcal/mol) plus a ``provenance`` key holding a JSON string, so every file we
write is also a valid rMD17 file for other tools.

Batches (:class:`GraphBatch`) carry atoms, positions and labels but **no edges**: the model builds its
own neighbour list from ``pos`` inside its forward pass, so that forces ``-dE/dR`` flow through the edge
vectors by autograd and a cutoff change never requires re-processing the data. For molecules this is a
dense pure-torch radius graph (see ``spherequant.models.neighbors``). Periodic or large systems need a
cell-list neighbour search with minimum-image shifts; the maintained choice there is
`vesin <https://github.com/Luthaf/vesin>`_ (or matscipy's ``neighbour_list``), which this module
deliberately does not re-implement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from spherequant._report import atomic_write

from .units import AVOGADRO, KCAL_PER_MOL  # re-exported: rMD17's energy unit (in eV) and its ingredient

__all__ = [
    "AVOGADRO",
    "KCAL_PER_MOL",
    "BatchIterator",
    "EnergyStatistics",
    "GraphBatch",
    "MolecularDataset",
    "Split",
    "available_datasets",
    "collate",
    "energy_statistics",
    "iterate_batches",
    "load_dataset",
    "load_npz",
    "load_rmd17",
    "read_ase",
    "save_npz",
    "split",
    "write_extxyz",
]


DATA_DIR = Path(__file__).resolve().parent / "data"

_RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


# ----------------------------------------------------------------------------------------------------------
# the data set
# ----------------------------------------------------------------------------------------------------------
class MolecularDataset:
    """Molecular configurations with energies and (optionally) forces, held in memory in eV / Angstrom.

    Frames may have different compositions; internally all atoms are concatenated and ``ptr`` marks where each
    frame starts (frame ``i`` owns atoms ``ptr[i]:ptr[i+1]``).

    Energy-only data (e.g. QM9, which has no forces) pass ``forces=None``: then ``forces`` is None,
    ``has_forces`` is False, frames and batches carry ``forces=None``, and training uses the energy loss
    alone (the model is then called without forces).

    Parameters
    ----------
    numbers : array_like of int
        Atomic numbers: shape ``(n_atoms,)`` shared by all frames, ``(n_frames, n_atoms)``, or a sequence of
        ``n_frames`` arrays of varying length.
    positions : array_like
        Cartesian positions in Angstrom: ``(n_frames, n_atoms, 3)`` or a sequence of ``(n_atoms_i, 3)``
        arrays.
    energies : array_like, shape (n_frames,)
        Total energies in eV.
    forces : array_like or None
        Forces in eV/Angstrom, same layout as ``positions``; None for energy-only data.
    cell : array_like, shape (n_frames, 3, 3) or (3, 3), optional
        Lattice vectors (rows) in Angstrom, for periodic frames.
    pbc : array_like of bool, shape (n_frames, 3) or (3,), optional
        Periodicity flags; default all False when ``cell`` is given.
    metadata : dict, optional
        Provenance (method, versions, temperature, command line, ...); must be JSON-serialisable to be saved.

    Examples
    --------
    >>> import numpy as np
    >>> ds = MolecularDataset([8, 1, 1], np.zeros((2, 3, 3)), [-5.0, -4.0], np.zeros((2, 3, 3)))
    >>> len(ds), ds.n_atoms.tolist(), ds.fixed_composition
    (2, [3, 3], True)
    >>> ds[1]["energy"]
    -4.0
    >>> MolecularDataset([8, 1, 1], np.zeros((2, 3, 3)), [-5.0, -4.0]).has_forces  # energy-only
    False
    """

    def __init__(self, numbers, positions, energies, forces=None, cell=None, pbc=None, metadata=None):
        energies = _real_array(energies, "energies")
        if energies.ndim == 2 and energies.shape[1] == 1:
            energies = energies[:, 0]
        if energies.ndim != 1:
            raise ValueError(f"energies must have shape (n_frames,), got {energies.shape}")
        n_frames = energies.shape[0]
        pos_list = _frames_list(positions, "positions", n_frames)
        frc_list = None if forces is None else _frames_list(forces, "forces", n_frames)
        z_list = _numbers_list(numbers, n_frames)
        for i, (z, r) in enumerate(zip(z_list, pos_list)):
            if r.shape != (len(z), 3):
                raise ValueError(f"positions of frame {i} have shape {r.shape}, expected ({len(z)}, 3)")
            if frc_list is not None and frc_list[i].shape != (len(z), 3):
                raise ValueError(
                    f"forces of frame {i} have shape {frc_list[i].shape}, expected ({len(z)}, 3)"
                )
        self.numbers = np.concatenate(z_list).astype(np.int64) if n_frames else np.zeros(0, np.int64)
        self.positions = np.concatenate(pos_list) if n_frames else np.zeros((0, 3))
        #: forces in eV/Angstrom, shape (total atoms, 3); None for energy-only data
        self.forces: np.ndarray | None = None
        if frc_list is not None:
            self.forces = np.concatenate(frc_list) if n_frames else np.zeros((0, 3))
        self.energies = energies
        counts = np.array([len(z) for z in z_list], dtype=np.int64)
        self.ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if np.any(self.numbers < 1) or np.any(self.numbers > 118):
            raise ValueError("numbers must be atomic numbers in 1..118")
        for name, arr in (("positions", self.positions), ("energies", energies), ("forces", self.forces)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contain NaN or infinite values")
        self.cell, self.pbc = _check_cell(cell, pbc, n_frames)
        self.metadata = dict(metadata or {})
        #: extra arrays read from a file besides the standard keys (e.g. per-frame ``trajectory`` ids)
        self.extra: dict[str, np.ndarray] = {}

    # -- basic protocol -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.energies.shape[0])

    def __repr__(self) -> str:
        comp = self.formula if self.fixed_composition else "variable composition"
        return f"MolecularDataset({len(self)} frames, {comp})"

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int (use .subset for arrays), got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame index {i} out of range for {n} frames")
        i = int(i) % n
        a, b = self.ptr[i], self.ptr[i + 1]
        frame = {
            "numbers": self.numbers[a:b],
            "positions": self.positions[a:b],
            "energy": float(self.energies[i]),
            "forces": None if self.forces is None else self.forces[a:b],
        }
        if self.cell is not None:
            frame["cell"] = self.cell[i]
            frame["pbc"] = self.pbc[i]
        return frame

    @property
    def has_forces(self) -> bool:
        """False for energy-only data (``forces`` is None)."""
        return self.forces is not None

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per frame, shape ``(n_frames,)``."""
        return np.diff(self.ptr)

    @property
    def fixed_composition(self) -> bool:
        """True when every frame has the same atoms in the same order (the rMD17 case)."""
        n = self.n_atoms
        if len(n) == 0 or np.any(n != n[0]):
            return len(n) == 0
        return bool(np.all(self.numbers.reshape(len(n), n[0]) == self.numbers[: n[0]]))

    @property
    def formula(self) -> str:
        """Hill-style formula of the first frame (e.g. ``C2H6O``)."""
        if len(self) == 0:
            return ""
        from collections import Counter

        _symbols = _element_symbols()
        c = Counter(_symbols[z] for z in self.numbers[: self.ptr[1]])
        order = (["C", "H"] if "C" in c else []) + sorted(k for k in c if "C" not in c or k not in ("C", "H"))
        return "".join(f"{k}{c[k] if c[k] > 1 else ''}" for k in order)

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Return ``(numbers (n_atoms,), positions (F, n_atoms, 3), energies (F,), forces (F, n_atoms, 3))``.

        Only for fixed composition; raises ValueError otherwise. ``forces`` is None for energy-only data.
        """
        if not self.fixed_composition:
            raise ValueError("dataset has variable composition; it cannot be stacked into (F, n_atoms, 3)")
        n = int(self.n_atoms[0]) if len(self) else 0
        shape = (len(self), n, 3)
        forces = None if self.forces is None else self.forces.reshape(shape)
        return self.numbers[:n], self.positions.reshape(shape), self.energies, forces

    def subset(self, indices) -> MolecularDataset:
        """Return a new data set with the frames ``indices`` (any integer array; order kept)."""
        idx = _check_indices(indices, len(self), "indices")
        z = [self.numbers[self.ptr[i] : self.ptr[i + 1]] for i in idx]
        r = [self.positions[self.ptr[i] : self.ptr[i + 1]] for i in idx]
        f = None if self.forces is None else [self.forces[self.ptr[i] : self.ptr[i + 1]] for i in idx]
        cell = None if self.cell is None else self.cell[idx]
        pbc = None if self.pbc is None else self.pbc[idx]
        return MolecularDataset(z, r, self.energies[idx], f, cell=cell, pbc=pbc, metadata=self.metadata)

    @classmethod
    def concatenate(cls, datasets: Sequence[MolecularDataset], metadata=None) -> MolecularDataset:
        """Concatenate data sets frame-wise (cells, and forces, must be given for all or none)."""
        if not datasets:
            raise ValueError("datasets must be a non-empty sequence")
        with_forces = [ds.has_forces for ds in datasets]
        if any(with_forces) and not all(with_forces):
            raise ValueError("datasets: either all or none of the data sets must have forces")
        z, r, f, cells, pbcs = [], [], [], [], []
        for ds in datasets:
            for i in range(len(ds)):
                a, b = ds.ptr[i], ds.ptr[i + 1]
                z.append(ds.numbers[a:b])
                r.append(ds.positions[a:b])
                if ds.has_forces:
                    f.append(ds.forces[a:b])
            cells.append(ds.cell)
            pbcs.append(ds.pbc)
        has_cell = [c is not None for c in cells]
        if any(has_cell) and not all(has_cell):
            raise ValueError("datasets: either all or none of the data sets must have a cell")
        cell = np.concatenate(cells) if all(has_cell) else None
        pbc = np.concatenate(pbcs) if all(has_cell) else None
        energies = np.concatenate([ds.energies for ds in datasets])
        meta = dict(datasets[0].metadata) if metadata is None else metadata
        return cls(z, r, energies, f if all(with_forces) else None, cell=cell, pbc=pbc, metadata=meta)


def _element_symbols() -> list[str]:
    try:
        from ase.data import chemical_symbols
    except ImportError:  # ASE is in the models extra; fall back to "Z8"-style names
        return [f"Z{z}" for z in range(119)]
    return chemical_symbols


def _one_line(err, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_real_dtype(dtype, name: str, integer_only: bool = False) -> None:
    """Refuse complex, boolean, object, string and half-precision arrays (``ValueError`` naming ``name``)."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"{name} has dtype {dtype}; half precision (~3 significant digits) is too coarse for "
                "positions, energies and forces: use float32 or float64"
            )
        if dtype.is_complex or dtype == torch.bool:
            raise ValueError(f"{name} must be real numbers, got dtype {dtype}")
        return
    dtype = np.dtype(dtype)
    if integer_only:
        if dtype.kind not in "iuf":
            raise ValueError(f"{name} must be integers (atomic numbers), got dtype {dtype}")
        return
    if dtype == np.float16:
        raise ValueError(
            f"{name} has dtype float16; half precision (~3 significant digits) is too coarse for positions, "
            "energies and forces: use float32 or float64"
        )
    if dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers (float32/float64), got dtype {dtype}")


def _real_array(x, name: str) -> np.ndarray:
    """``x`` as a float64 array after :func:`_check_real_dtype` (torch tensors and sequences too)."""
    if torch.is_tensor(x):
        _check_real_dtype(x.dtype, name)
        return x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x)
    _check_real_dtype(arr.dtype, name)
    return arr.astype(np.float64)


def _frames_list(x, name: str, n_frames: int) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) or torch.is_tensor(x):
        arr = _real_array(x, name)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"{name} must have shape (n_frames, n_atoms, 3), got {arr.shape}")
        items = list(arr)
    elif isinstance(x, Sequence):
        items = [_real_array(a, f"{name} of frame {k}") for k, a in enumerate(x)]
    else:
        raise TypeError(f"{name} must be an array or a sequence of arrays, got {type(x).__name__}")
    if len(items) != n_frames:
        raise ValueError(f"{name} has {len(items)} frames but energies has {n_frames}")
    return items


def _numbers_list(numbers, n_frames: int) -> list[np.ndarray]:
    if (
        isinstance(numbers, np.ndarray)
        or torch.is_tensor(numbers)
        or (isinstance(numbers, Sequence) and len(numbers) and np.isscalar(numbers[0]))
    ):
        arr = np.asarray(numbers)
        if arr.ndim == 1:
            items = [arr] * n_frames
        elif arr.ndim == 2:
            if arr.shape[0] != n_frames:
                raise ValueError(f"numbers has {arr.shape[0]} frames but energies has {n_frames}")
            items = list(arr)
        else:
            raise ValueError(f"numbers must have shape (n_atoms,) or (n_frames, n_atoms), got {arr.shape}")
    elif isinstance(numbers, Sequence):
        items = [np.asarray(z) for z in numbers]
        if len(items) != n_frames:
            raise ValueError(f"numbers has {len(items)} frames but energies has {n_frames}")
    else:
        raise TypeError(
            f"numbers must be an integer array or a sequence of arrays, got {type(numbers).__name__}"
        )
    out = []
    for z in items:
        if z.ndim != 1:
            raise ValueError(f"numbers of a frame must be 1-D, got shape {z.shape}")
        if z.size and not np.issubdtype(z.dtype, np.integer):
            if not np.all(np.asarray(z, dtype=np.float64) == np.round(np.asarray(z, dtype=np.float64))):
                raise ValueError("numbers must be integers (atomic numbers)")
        out.append(np.asarray(z, dtype=np.int64))
    return out


def _check_cell(cell, pbc, n_frames: int):
    if cell is None:
        if pbc is not None and np.any(pbc):
            raise ValueError("pbc is set but cell is None; periodic frames need a cell")
        return None, None
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape == (3, 3):
        cell = np.broadcast_to(cell, (n_frames, 3, 3)).copy()
    if cell.shape != (n_frames, 3, 3):
        raise ValueError(f"cell must have shape (3, 3) or (n_frames, 3, 3), got {cell.shape}")
    pbc = np.zeros((n_frames, 3), bool) if pbc is None else np.asarray(pbc, dtype=bool)
    if pbc.shape == (3,):
        pbc = np.broadcast_to(pbc, (n_frames, 3)).copy()
    if pbc.shape != (n_frames, 3):
        raise ValueError(f"pbc must have shape (3,) or (n_frames, 3), got {pbc.shape}")
    return cell, pbc


def _check_indices(indices, n: int, name: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {idx.shape}")
    if idx.size == 0:
        return idx.astype(np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {idx.dtype}")
    if idx.min() < -n or idx.max() >= n:
        raise IndexError(f"{name} out of range for {n} frames (min {idx.min()}, max {idx.max()})")
    return idx.astype(np.int64) % n


# ----------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------
def atomic_savez(path: str | os.PathLike, compressed: bool = True, **arrays) -> Path:
    """Write ``arrays`` to ``path`` as ``.npz`` via a temporary file and :func:`os.replace` (never torn)."""
    saver = np.savez_compressed if compressed else np.savez
    return atomic_write(path, lambda fh: saver(fh, **arrays))


def save_npz(dataset: MolecularDataset, path: str | os.PathLike, *, float32: bool = False, **extra) -> Path:
    """Write ``dataset`` as an rMD17-format compressed ``.npz`` with a ``provenance`` JSON string.

    Keys: ``nuclear_charges`` (n_atoms,) int, ``coords`` (F, n_atoms, 3) Angstrom, ``energies`` (F,)
    kcal/mol (always float64), ``forces`` (F, n_atoms, 3) kcal/mol/Angstrom, ``provenance`` (JSON of
    ``dataset.metadata``), plus ``cell``/``pbc`` when present and any ``extra`` arrays (e.g. per-frame
    ``trajectory`` ids). The write is atomic (temporary file, then :func:`os.replace`).

    Parameters
    ----------
    dataset : MolecularDataset
        Must have fixed composition (rMD17 stores one molecule); use :func:`write_extxyz` otherwise.
    path : path-like
        Output file.
    float32 : bool, default False
        Store coordinates and forces in float32 (halves the size; ~1e-6 Angstrom rounding). Energies stay
        float64.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> r = np.array([[[0, 0, 0], [0, 0, 0.74]]])
    >>> ds = MolecularDataset([1, 1], r, [-1.0], np.zeros((1, 2, 3)))
    >>> p = save_npz(ds, os.path.join(tempfile.mkdtemp(), "h2.npz"))
    >>> round(float(load_npz(p).energies[0]), 9)
    -1.0
    """
    if not isinstance(dataset, MolecularDataset):
        raise TypeError(f"dataset must be a MolecularDataset, got {type(dataset).__name__}")
    if not dataset.has_forces:
        raise ValueError(
            "dataset has no forces (energy-only data); the rMD17 .npz layout needs them: use "
            "write_extxyz, or atomic_savez with your own keys"
        )
    z, r, e, f = dataset.stacked()
    fdt = np.float32 if float32 else np.float64
    try:
        prov = json.dumps(dataset.metadata, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"dataset.metadata must be JSON-serialisable: {err}") from None
    arrays = {
        "nuclear_charges": z.astype(np.int64),
        "coords": r.astype(fdt),
        "energies": e / KCAL_PER_MOL,
        "forces": (f / KCAL_PER_MOL).astype(fdt),
        "provenance": np.array(prov),
    }
    if dataset.cell is not None:
        arrays["cell"] = dataset.cell
        arrays["pbc"] = dataset.pbc
    for k, v in extra.items():
        if k in arrays:
            raise ValueError(f"extra array name {k!r} collides with a reserved key")
        arrays[k] = np.asarray(v)
    return atomic_savez(path, **arrays)


def _load(path, *, provenance: bool) -> MolecularDataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:  # any failure to open means "not an npz file"
        raise ValueError(f"path {str(path)!r} is not a readable .npz file: {_one_line(err)}") from None
    if not hasattr(npz, "files"):  # a bare .npy array, not an archive
        raise ValueError(f"path {str(path)!r} is a single .npy array, not an .npz archive of named arrays")

    def member(key):
        try:
            return np.asarray(npz[key])
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise ValueError(
                    f"{path.name}: key {key!r} holds pickled Python objects, which are refused "
                    "(loading never executes code from a file)"
                ) from None
            raise ValueError(f"{path.name}: key {key!r} is corrupt ({_one_line(err)})") from None
        except Exception as err:  # zipfile/zlib/EOF errors of a damaged archive member
            raise ValueError(
                f"{path.name}: key {key!r} is corrupt or truncated ({type(err).__name__}: {_one_line(err)})"
            ) from None

    with npz:
        keys = set(npz.files)
        missing = [k for k in _RMD17_KEYS if k not in keys]
        if missing:
            raise ValueError(
                f"{path.name}: missing key(s) {missing}; an rMD17 file has {list(_RMD17_KEYS)}, "
                f"found {sorted(keys)}"
            )
        z = member("nuclear_charges")
        r = member("coords")
        e = member("energies")
        f = member("forces")
        meta = {}
        if provenance and "provenance" in keys:
            try:
                meta = json.loads(str(member("provenance")))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path.name}: key 'provenance' is not valid JSON: {err}") from None
            if not isinstance(meta, dict):
                raise ValueError(f"{path.name}: key 'provenance' must hold a JSON object, got {meta!r:.60}")
        cell = member("cell") if "cell" in keys else None
        pbc = member("pbc") if "pbc" in keys else None
        extra = {k: member(k) for k in keys - set(_RMD17_KEYS) - {"provenance", "cell", "pbc"}}
    for key, arr in (("nuclear_charges", z), ("coords", r), ("energies", e), ("forces", f)):
        _check_real_dtype(arr.dtype, f"{path.name}: key {key!r}", integer_only=key == "nuclear_charges")
    if z.ndim != 1 or not np.issubdtype(z.dtype, np.number):
        raise ValueError(
            f"{path.name}: key 'nuclear_charges' must be a 1-D integer array, got shape {z.shape}"
        )
    n_atoms = z.shape[0]
    if r.ndim != 3 or r.shape[1:] != (n_atoms, 3):
        raise ValueError(f"{path.name}: key 'coords' must have shape (n_frames, {n_atoms}, 3), got {r.shape}")
    n_frames = r.shape[0]
    if n_frames == 0:
        raise ValueError(f"{path.name}: holds zero frames (key 'coords' has shape {r.shape})")
    if n_atoms == 0:
        raise ValueError(f"{path.name}: key 'nuclear_charges' is empty (a frame needs at least one atom)")
    if e.ndim == 2 and e.shape[1] == 1:
        e = e[:, 0]
    if e.shape != (n_frames,):
        raise ValueError(f"{path.name}: key 'energies' must have shape ({n_frames},), got {e.shape}")
    if f.shape != r.shape:
        raise ValueError(f"{path.name}: key 'forces' must have shape {r.shape} like 'coords', got {f.shape}")
    for key, arr in (("nuclear_charges", z), ("coords", r), ("energies", e), ("forces", f)):
        bad = ~np.isfinite(np.asarray(arr, dtype=np.float64))
        if bad.any():
            first = np.argwhere(bad)[0].tolist()
            raise ValueError(
                f"{path.name}: key {key!r} contains {int(bad.sum())} NaN/inf value(s), first at {first}"
            )
    if np.any(z != np.round(z)) or np.any(z < 1) or np.any(z > 118):
        raise ValueError(f"{path.name}: key 'nuclear_charges' must hold atomic numbers 1..118")
    meta = dict(meta)
    meta.setdefault("source_file", path.name)
    ds = MolecularDataset(
        z.astype(np.int64),
        r.astype(np.float64),
        e.astype(np.float64) * KCAL_PER_MOL,
        f.astype(np.float64) * KCAL_PER_MOL,
        cell=cell,
        pbc=pbc,
        metadata=meta,
    )
    ds.extra = extra
    return ds


def load_rmd17(path: str | os.PathLike) -> MolecularDataset:
    """Read an rMD17 ``.npz`` file (kcal/mol, kcal/mol/Angstrom) into eV / eV/Angstrom.

    Parameters
    ----------
    path : path-like
        A file with keys ``nuclear_charges`` (n_atoms,), ``coords`` (F, n_atoms, 3), ``energies`` (F,) and
        ``forces`` (F, n_atoms, 3). Other keys (``old_indices``, ``old_energies``, ...) are ignored.

    Returns
    -------
    MolecularDataset

    Raises
    ------
    ValueError
        On a missing key, NaN/inf values or mismatched shapes; the message names the key.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "rmd17_h2.npz")
    >>> zeros = np.zeros((1, 2, 3))
    >>> np.savez(p, nuclear_charges=[1, 1], coords=zeros, energies=[1.0], forces=zeros)
    >>> round(float(load_rmd17(p).energies[0]) * 1000, 3)  # 1 kcal/mol in meV
    43.364
    """
    return _load(path, provenance=False)


def load_npz(path: str | os.PathLike) -> MolecularDataset:
    """Read a file written by :func:`save_npz` (rMD17 keys plus provenance) into eV / Angstrom.

    Same validation as :func:`load_rmd17`; the ``provenance`` JSON becomes ``dataset.metadata`` and extra
    arrays (e.g. ``trajectory``) are available as ``dataset.extra``.

    Examples
    --------
    >>> ds = load_dataset("ethanol-gfn2-500K")
    >>> ds.metadata["method"]
    'GFN2-xTB'
    """
    return _load(path, provenance=True)


def read_ase(path: str | os.PathLike, index: str | int = ":", format: str | None = None) -> MolecularDataset:
    """Read any file :func:`ase.io.read` understands (extxyz, ASE db/traj, ...) into a data set.

    Energies and forces are taken from each frame's calculator results (for extxyz: the ``energy`` info key
    and the ``forces`` per-atom column).

    Parameters
    ----------
    path : path-like
    index : str or int, default ":"
        Frames to read (ASE index syntax).
    format : str, optional
        Passed to :func:`ase.io.read` (guessed from the extension by default).

    Raises
    ------
    ValueError
        If a frame has no energy or no forces (the message gives the frame number).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> ds = MolecularDataset([1, 1], [[[0, 0, 0], [0, 0, 0.74]]], [-1.5], np.zeros((1, 2, 3)))
    >>> p = write_extxyz(ds, os.path.join(tempfile.mkdtemp(), "h2.extxyz"))
    >>> read_ase(p).energies.tolist()
    [-1.5]
    """
    import ase.io

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"path {str(path)!r} is empty (zero frames)")
    try:
        frames = ase.io.read(path, index=index, format=format)
    except Exception as err:  # ASE readers raise many types for malformed input
        what = format or "a format ASE recognises"
        raise ValueError(
            f"path {str(path)!r} could not be read as {what} ({type(err).__name__}: {_one_line(err)})"
        ) from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{path.name}: no frames read for index {index!r}")
    z, r, e, f, cells, pbcs = [], [], [], [], [], []
    for i, atoms in enumerate(frames):
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        energy = results.get("energy", results.get("free_energy", atoms.info.get("energy")))
        forces = results.get("forces", atoms.arrays.get("forces"))
        if energy is None:
            raise ValueError(
                f"{path.name}: frame {i} has no energy (no calculator result or 'energy' info key)"
            )
        if forces is None:
            raise ValueError(
                f"{path.name}: frame {i} has no forces (no calculator result or 'forces' column)"
            )
        z.append(atoms.numbers.copy())
        r.append(atoms.positions.copy())
        e.append(float(energy))
        f.append(np.asarray(forces, dtype=np.float64))
        cells.append(np.asarray(atoms.cell[:], dtype=np.float64))
        pbcs.append(atoms.pbc.copy())
    periodic = any(p.any() for p in pbcs)
    meta = {"source_file": path.name}
    return MolecularDataset(
        z,
        r,
        e,
        f,
        cell=np.stack(cells) if periodic else None,
        pbc=np.stack(pbcs) if periodic else None,
        metadata=meta,
    )


def write_extxyz(dataset: MolecularDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as extended XYZ (energies in eV, forces in eV/Angstrom), atomically.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> ds = MolecularDataset([1, 1], [[[0, 0, 0], [0, 0, 0.74]]], [-1.5], np.zeros((1, 2, 3)))
    >>> write_extxyz(ds, os.path.join(tempfile.mkdtemp(), "h2.extxyz")).suffix
    '.extxyz'
    """
    import io

    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    if not isinstance(dataset, MolecularDataset):
        raise TypeError(f"dataset must be a MolecularDataset, got {type(dataset).__name__}")
    images = []
    for i in range(len(dataset)):
        fr = dataset[i]
        atoms = Atoms(numbers=fr["numbers"], positions=fr["positions"])
        if "cell" in fr:
            atoms.cell = fr["cell"]
            atoms.pbc = fr["pbc"]
        results = {"energy": fr["energy"]}
        if fr["forces"] is not None:
            results["forces"] = fr["forces"]
        atoms.calc = SinglePointCalculator(atoms, **results)
        images.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, images, format="extxyz")
    data = buf.getvalue().encode()
    return atomic_write(path, lambda fh: fh.write(data))


def available_datasets() -> list[str]:
    """Names of the data sets shipped with the package (see ``docs/datasets.md``), plus ``"qm9"`` when the
    optional package qm9pack is installed (built on demand, :mod:`spherequant.models.qm9`; its seeded
    subsets ``"qm9-<n>"`` load too).

    Examples
    --------
    >>> "azobenzene-gfn2-500K" in available_datasets()
    True
    """
    from .qm9 import qm9pack_data_dir

    names = [p.stem for p in DATA_DIR.glob("*.npz")]
    return sorted(names + (["qm9"] if qm9pack_data_dir() is not None else []))


def load_dataset(name: str) -> MolecularDataset:
    """Load a shipped data set by name, e.g. ``"azobenzene-gfn2-500K"`` (eV, Angstrom).

    ``"qm9"`` (all 130,831 molecules) and ``"qm9-<n>"`` (a seeded subset of ``n``) load QM9's atomization
    energy U0 as energy-only data (:func:`spherequant.models.qm9.load_qm9`; needs qm9pack or its cache).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the available names.

    Examples
    --------
    >>> ds = load_dataset("ethanol-gfn2-500K")
    >>> ds.formula, len(ds) >= 2000
    ('C2H6O', True)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    from . import qm9

    n_qm9 = qm9.parse_name(name)
    if n_qm9 is not False:
        return qm9.load_qm9("U0", n_molecules=n_qm9)
    names = available_datasets()
    key = name[:-4] if name.endswith(".npz") else name
    if key not in names:
        raise ValueError(f"unknown data set name {name!r}; available: {names}")
    return load_npz(DATA_DIR / f"{key}.npz")


# ----------------------------------------------------------------------------------------------------------
# splits and statistics
# ----------------------------------------------------------------------------------------------------------
class Split(NamedTuple):
    """Frame indices of a train / validation / test split (int64 arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split(
    dataset: MolecularDataset | int,
    n_train: int = 950,
    n_val: int = 50,
    seed: int = 0,
    index_dir: str | os.PathLike | None = None,
    fmt: str = "npy",
) -> Split:
    """rMD17-style split: a seeded permutation gives ``n_train`` train, ``n_val`` validation, the rest test.

    Parameters
    ----------
    dataset : MolecularDataset or int
        The data set (or its number of frames).
    n_train, n_val : int
        Sizes of the training and validation sets.
    seed : int
        Seed of :func:`numpy.random.default_rng` drawing the permutation.
    index_dir : path-like, optional
        If it holds ``train``/``val``/``test`` index files (``.npy`` or ``.txt``), they are loaded (and
        checked against the data set) instead of drawing; otherwise the new split is saved there in format
        ``fmt``.
    fmt : {"npy", "txt"}
        File format when saving.

    Returns
    -------
    Split
        ``(train, val, test)`` disjoint int64 index arrays covering all frames.

    Examples
    --------
    >>> s = split(1000, n_train=950, n_val=40, seed=1)
    >>> len(s.train), len(s.val), len(s.test)
    (950, 40, 10)
    """
    n = len(dataset) if isinstance(dataset, MolecularDataset) else dataset
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise TypeError(f"dataset must be a MolecularDataset or a non-negative int, got {dataset!r}")
    for name, v in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if n_train + n_val > n:
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds the {n} frames available")
    if fmt not in ("npy", "txt"):
        raise ValueError(f"fmt must be 'npy' or 'txt', got {fmt!r}")
    if index_dir is not None:
        d = Path(index_dir)
        loaded = _load_split(d, n)
        if loaded is not None:
            return loaded
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    result = Split(perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :])
    if index_dir is not None:
        d = Path(index_dir)
        d.mkdir(parents=True, exist_ok=True)
        for part, idx in zip(Split._fields, result):
            if fmt == "npy":
                atomic_write(d / f"{part}.npy", lambda fh, idx=idx: np.save(fh, idx))
            else:
                text = "".join(f"{i}\n" for i in idx).encode()
                atomic_write(d / f"{part}.txt", lambda fh, text=text: fh.write(text))
    return result


def _load_split(d: Path, n: int) -> Split | None:
    parts = []
    for part in Split._fields:
        npy, txt = d / f"{part}.npy", d / f"{part}.txt"
        if npy.exists():
            parts.append(np.load(npy, allow_pickle=False).astype(np.int64).reshape(-1))
        elif txt.exists():
            parts.append(np.loadtxt(txt, dtype=np.int64, ndmin=1).reshape(-1))
        else:
            parts.append(None)
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError(f"index_dir {str(d)!r} has only some of the train/val/test index files")
    allidx = np.concatenate(parts)
    if allidx.size and (allidx.min() < 0 or allidx.max() >= n):
        raise ValueError(f"index files in {str(d)!r} refer to frames outside 0..{n - 1}")
    if np.unique(allidx).size != allidx.size:
        raise ValueError(f"index files in {str(d)!r} overlap (an index appears twice)")
    return Split(*parts)


@dataclass(frozen=True)
class EnergyStatistics:
    """Per-element energy shifts and a force scale for the model's output shift/scale.

    Attributes
    ----------
    shifts : dict[int, float]
        Energy per atom of each element in eV (E is approximated by ``sum_atoms shifts[Z]``).
    force_rms : float or None
        Root mean square of all force components in eV/Angstrom (the natural scale of atomic energies'
        gradients); None for energy-only data.
    residual_std : float
        Standard deviation of ``E - sum shifts`` over frames, in eV.
    method : str
        ``"least_squares"`` (E regressed on element counts) or ``"mean_per_atom"`` (fallback when the
        counts do not determine per-element shifts, e.g. one composition: every element gets the mean energy
        per atom).
    atom_energy_rms : float or None
        ``sqrt(mean_f r_f^2 / n_f)`` in eV for the residuals ``r_f = E_f - sum shifts`` of frames with
        ``n_f`` atoms: the spread of one atom's energy if the atoms of a frame contributed independent
        residuals (the energy scale of energy-only data).
    """

    shifts: dict[int, float]
    force_rms: float | None
    residual_std: float
    method: str
    atom_energy_rms: float | None = None

    @property
    def scale(self) -> float:
        """Scale of the model's atomic energies in eV: ``force_rms`` when the data have forces, else
        ``atom_energy_rms`` (floored at 1 meV so that a perfectly fitted set still gives a positive scale)."""
        if self.force_rms is not None:
            return self.force_rms
        if self.atom_energy_rms is None:
            raise ValueError("these statistics have neither force_rms nor atom_energy_rms")
        return max(self.atom_energy_rms, 1e-3)

    def shift_of(self, numbers) -> np.ndarray:
        """Per-atom shifts for an array of atomic numbers (KeyError for an unseen element)."""
        return np.array([self.shifts[int(z)] for z in np.asarray(numbers).reshape(-1)])


def energy_statistics(dataset: MolecularDataset, indices=None) -> EnergyStatistics:
    """Per-element energy shift (least squares of E on element counts) and force RMS of ``dataset``.

    Use only training frames (``indices``) to avoid leaking test data into the model's normalisation.
    For energy-only data ``force_rms`` is None and ``EnergyStatistics.scale`` is ``atom_energy_rms``.

    Examples
    --------
    >>> import numpy as np
    >>> z = [np.array([1, 1]), np.array([1, 8]), np.array([8, 8, 1])]
    >>> r = [np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 3))]
    >>> f = [np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 3))]
    >>> st = energy_statistics(MolecularDataset(z, r, [-2.0, -6.0, -11.0], f))
    >>> round(st.shifts[1], 6), round(st.shifts[8], 6), st.method, st.force_rms
    (-1.0, -5.0, 'least_squares', 1.0)
    >>> energy_statistics(MolecularDataset(z, r, [-2.0, -6.0, -11.0])).force_rms is None  # energy-only
    True
    """
    if not isinstance(dataset, MolecularDataset):
        raise TypeError(f"dataset must be a MolecularDataset, got {type(dataset).__name__}")
    ds = dataset if indices is None else dataset.subset(indices)
    if len(ds) == 0:
        raise ValueError("energy_statistics needs at least one frame")
    elements = np.unique(ds.numbers)
    frame_of_atom = np.repeat(np.arange(len(ds)), ds.n_atoms)
    col = np.searchsorted(elements, ds.numbers)
    counts = np.zeros((len(ds), len(elements)))
    np.add.at(counts, (frame_of_atom, col), 1.0)
    if np.linalg.matrix_rank(counts) == len(elements):
        coef = np.linalg.lstsq(counts, ds.energies, rcond=None)[0]
        method = "least_squares"
    else:
        coef = np.full(len(elements), np.mean(ds.energies / ds.n_atoms))
        method = "mean_per_atom"
    resid = ds.energies - counts @ coef
    return EnergyStatistics(
        shifts={int(z): float(c) for z, c in zip(elements, coef)},
        force_rms=float(np.sqrt(np.mean(ds.forces**2))) if ds.has_forces else None,
        residual_std=float(np.std(resid)),
        method=method,
        atom_energy_rms=float(np.sqrt(np.mean(resid**2 / ds.n_atoms))),
    )


# ----------------------------------------------------------------------------------------------------------
# batching
# ----------------------------------------------------------------------------------------------------------
@dataclass
class GraphBatch:
    """A batch of molecular graphs as flat tensors (PyG-style). Edges are built by the model from ``pos``.

    Attributes
    ----------
    z : LongTensor (N,)
        Atomic numbers of all N atoms of the batch.
    pos : Tensor (N, 3)
        Positions in Angstrom (set ``requires_grad_`` before the forward pass to get forces).
    batch : LongTensor (N,)
        Graph index of each atom, in ``0..B-1``.
    ptr : LongTensor (B + 1,)
        Graph ``b`` owns atoms ``ptr[b]:ptr[b+1]``.
    energy : Tensor (B,)
        Reference energies in eV.
    forces : Tensor (N, 3) or None
        Reference forces in eV/Angstrom; None for energy-only data.
    n_atoms : LongTensor (B,)
    cell : Tensor (B, 3, 3), optional
    pbc : BoolTensor (B, 3), optional
    """

    z: torch.Tensor
    pos: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor | None
    n_atoms: torch.Tensor
    cell: torch.Tensor | None = None
    pbc: torch.Tensor | None = None

    @property
    def num_graphs(self) -> int:
        """Number of graphs B."""
        return int(self.n_atoms.shape[0])

    def to(self, device=None, dtype: torch.dtype | None = None) -> GraphBatch:
        """Return a copy on ``device``; floating tensors also cast to ``dtype`` when given."""
        out = {}
        for fld in fields(self):
            t = getattr(self, fld.name)
            if t is None:
                out[fld.name] = None
            elif t.is_floating_point() and dtype is not None:
                out[fld.name] = t.to(device=device, dtype=dtype)
            else:
                out[fld.name] = t.to(device=device)
        return GraphBatch(**out)


def collate(
    dataset: MolecularDataset, indices=None, device=None, dtype: torch.dtype = torch.float64
) -> GraphBatch:
    """Gather frames ``indices`` of ``dataset`` into one :class:`GraphBatch`.

    Parameters
    ----------
    dataset : MolecularDataset
    indices : array_like of int, optional
        Frames to include, in order (all frames by default).
    device : torch.device or str, optional
    dtype : torch.float32 or torch.float64
        Floating dtype of ``pos``, ``energy``, ``forces``, ``cell``.

    Examples
    --------
    >>> import numpy as np
    >>> ds = MolecularDataset([8, 1, 1], np.zeros((4, 3, 3)), [0.0, 1, 2, 3], np.zeros((4, 3, 3)))
    >>> b = collate(ds, [3, 1])
    >>> b.batch.tolist(), b.ptr.tolist(), b.energy.tolist()
    ([0, 0, 0, 1, 1, 1], [0, 3, 6], [3.0, 1.0])
    """
    if not isinstance(dataset, MolecularDataset):
        raise TypeError(f"dataset must be a MolecularDataset, got {type(dataset).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    idx = np.arange(len(dataset)) if indices is None else _check_indices(indices, len(dataset), "indices")
    counts = dataset.n_atoms[idx]
    atom_idx = (
        np.concatenate([np.arange(dataset.ptr[i], dataset.ptr[i + 1]) for i in idx])
        if idx.size
        else np.zeros(0, np.int64)
    )
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def f(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    def i64(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=device)

    return GraphBatch(
        z=i64(dataset.numbers[atom_idx]),
        pos=f(dataset.positions[atom_idx]),
        batch=i64(np.repeat(np.arange(len(idx)), counts)),
        ptr=i64(ptr),
        energy=f(dataset.energies[idx]),
        forces=None if dataset.forces is None else f(dataset.forces[atom_idx]),
        n_atoms=i64(counts),
        cell=None if dataset.cell is None else f(dataset.cell[idx]),
        pbc=None if dataset.pbc is None else torch.as_tensor(dataset.pbc[idx], device=device),
    )


class BatchIterator:
    """Re-iterable mini-batch loader over ``indices`` of a data set (see :func:`iterate_batches`).

    Each pass (epoch) over the iterator draws a fresh permutation from one seeded generator when ``shuffle``
    is True, so a run is reproducible epoch by epoch.
    """

    def __init__(self, dataset, indices, batch_size, shuffle=False, seed=0, drop_last=False, device=None,
                 dtype=torch.float64):  # fmt: skip
        if not isinstance(dataset, MolecularDataset):
            raise TypeError(f"dataset must be a MolecularDataset, got {type(dataset).__name__}")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.indices = (
            np.arange(len(dataset)) if indices is None else _check_indices(indices, len(dataset), "indices")
        )
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.device = device
        self.dtype = dtype
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[GraphBatch]:
        order = self._rng.permutation(self.indices) if self.shuffle else self.indices
        for k in range(len(self)):
            chunk = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield collate(self.dataset, chunk, device=self.device, dtype=self.dtype)


def iterate_batches(
    dataset: MolecularDataset,
    indices=None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    device=None,
    dtype: torch.dtype = torch.float64,
) -> BatchIterator:
    """Mini-batches of :class:`GraphBatch` over ``indices`` (a ``DataLoader``-like, re-iterable object).

    Examples
    --------
    >>> import numpy as np
    >>> ds = MolecularDataset([1, 1], np.zeros((5, 2, 3)), np.arange(5.0), np.zeros((5, 2, 3)))
    >>> [b.num_graphs for b in iterate_batches(ds, batch_size=2)]
    [2, 2, 1]
    """
    return BatchIterator(dataset, indices, batch_size, shuffle, seed, drop_last, device, dtype)


def __getattr__(name: str):
    if name == "ELEMENTARY_CHARGE":  # renamed: one constant, one name (spherequant.models.units)
        import warnings

        from .units import ELEMENTARY_CHARGE_C

        warnings.warn(
            "spherequant.models.data.ELEMENTARY_CHARGE is deprecated; use "
            "spherequant.models.units.ELEMENTARY_CHARGE_C",
            DeprecationWarning,
            stacklevel=2,
        )
        return ELEMENTARY_CHARGE_C
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
