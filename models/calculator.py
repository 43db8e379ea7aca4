"""ASE calculator for So3krates models (energies in eV, forces in eV/Angstrom)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from spherequant._validation import check_positive

from .checkpoints import PRETRAINED_DIR, available_pretrained, load_model, resolve_device

__all__ = ["PRETRAINED_DIR", "SphereQuantCalculator", "available_pretrained"]


class SphereQuantCalculator(Calculator):
    """ASE calculator wrapping a model ``model(z, pos) -> {"energy": (1,), "forces": (N, 3)}``.

    Parameters
    ----------
    model : torch.nn.Module
        E.g. :class:`~spherequant.models.so3krates.So3krates`; put in eval mode and moved to ``device``.
    device : str or torch.device
        Where the model runs.
    dtype : torch.dtype, optional
        Floating dtype to run in (default: the model's current dtype).
    energy_units_to_eV : float
        Factor converting the model's energy unit to eV.
    length_units_to_A : float
        Factor converting the model's length unit to Angstrom.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Raises
    ------
    ValueError
        On :meth:`calculate` for atoms of an element the model was not trained on (the model's
        ``check_elements``, e.g. Xe for a model trained on H, C, N) and for non-finite positions; at
        construction for an unknown or unavailable ``device``.

    Notes
    -----
    Molecules only: periodic ``Atoms`` raise ``NotImplementedError`` (no stress).

    Examples
    --------
    >>> from ase import Atoms
    >>> from spherequant.models.so3krates import So3krates
    >>> model = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    >>> atoms.calc = SphereQuantCalculator(model)
    >>> atoms.get_forces().shape
    (3, 3)
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        energy_units_to_eV: float = 1.0,
        length_units_to_A: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.float64)
        ):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.energy_units_to_eV = check_positive(energy_units_to_eV, "energy_units_to_eV")
        self.length_units_to_A = check_positive(length_units_to_A, "length_units_to_A")
        self.device = resolve_device(device)
        if dtype is None:
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float64)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()

    @classmethod
    def from_checkpoint(
        cls, path, device="cpu", *, use_ema: bool = True, force_mode: str | None = None, **kwargs
    ) -> SphereQuantCalculator:
        """Calculator for a training checkpoint (``last.pt`` / ``best.pt``) or a shipped ``.pt`` file,
        FP32 or quantized (loaded by :func:`~spherequant.models.checkpoints.load_model`).

        Parameters
        ----------
        path : str or path-like
        device : str or torch.device
        use_ema : bool
            Use the EMA weights when the checkpoint has them.
        force_mode : {"ste", "smooth"}, optional
            Quantized checkpoints only: override the stored force mode (``"smooth"`` gives conservative
            forces, see :mod:`spherequant.models.gaq`).
        **kwargs
            Passed to the constructor (``dtype``, unit factors, ASE options).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or path-like, got {type(path).__name__}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
        model = load_model(path, use_ema=use_ema, force_mode=force_mode)
        return cls(model, device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, device="cpu", **kwargs) -> SphereQuantCalculator:
        """Calculator for a shipped model, e.g. ``"azobenzene-gfn2-fp32"``.

        Raises
        ------
        ValueError
            For an unknown name; the message lists :func:`available_pretrained`.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        key = name[:-3] if name.endswith(".pt") else name
        if key not in available_pretrained():
            raise ValueError(
                f"no pretrained model named {name!r} in {PRETRAINED_DIR}; available: {available_pretrained()}"
            )
        return cls.from_checkpoint(PRETRAINED_DIR / f"{key}.pt", device=device, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute energy, free energy (equal to the energy) and forces of ``atoms``."""
        super().calculate(atoms, properties, system_changes)
        if np.any(self.atoms.pbc):
            raise NotImplementedError(
                "SphereQuantCalculator supports molecules only (atoms.pbc must be False)"
            )
        if len(self.atoms) == 0:
            raise ValueError("atoms must hold at least one atom, got an empty Atoms object")
        if not np.all(np.isfinite(self.atoms.positions)):
            raise ValueError("atoms.positions contain NaN or infinite values")
        check = getattr(self.model, "check_elements", None)
        if check is not None:
            check(self.atoms.numbers)
        z = torch.as_tensor(self.atoms.numbers, dtype=torch.long, device=self.device)
        pos = torch.as_tensor(
            self.atoms.positions / self.length_units_to_A, dtype=self.dtype, device=self.device
        )
        out = self.model(z, pos, compute_forces=True)
        energy = float(out["energy"].detach().sum()) * self.energy_units_to_eV
        forces = out["forces"].detach().cpu().double().numpy() * (
            self.energy_units_to_eV / self.length_units_to_A
        )
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
