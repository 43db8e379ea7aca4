"""TorchSim adapter: run the So3krates force field (FP32, QAT-prepared GAQ or converted integer) in TorchSim.

`TorchSim <https://github.com/TorchSim/torch-sim>`_ (``torch-sim-atomistic``) integrates batches of systems
of different sizes with one model call per step. :class:`SphereQuantModel` is a
``torch_sim.models.interface.ModelInterface`` around any of the three forms of our force field:

* an FP32 :class:`~spherequant.models.so3krates.So3krates` (e.g. ``load_model("azobenzene-gfn2-fp32")``);
* a QAT-prepared or converted GAQ model (``quantize_(model, cfg)`` then ``calibrate_``; the shipped
  ``azobenzene-gfn2-gaq-w4a8``), whose forces follow its ``force_mode`` (``"smooth"``: conservative,
  for MD; ``"ste"``: straight-through, not the gradient of the energy, see :mod:`spherequant.models.gaq`);
* a deployed :class:`~spherequant.models.deploy.IntegerSo3krates`
  (:func:`~spherequant.models.deploy.convert_to_integer`): integer weights and GEMMs.

Units are TorchSim's metal units: positions in Angstrom, energies in eV, forces in eV/Angstrom, masses in
amu, so time is counted in :data:`TIME_UNIT_FS` (``sqrt(amu Angstrom^2 / eV) ~= 10.18 fs``) and momenta in
``amu Angstrom / TIME_UNIT_FS``; :func:`molecules_to_state` converts from the units of
:mod:`spherequant.models.md` (velocities in Angstrom/fs) and :func:`fs_to_time_unit` converts timesteps.
Molecules only: periodic systems are refused (the model has no periodic images and no stress).

The adapter needs the optional extra ``torchsim`` (``pip install "spherequant[torchsim]"``); importing this
module without it raises ``ImportError`` saying so.

Examples
--------
>>> from spherequant.models.so3krates import So3krates
>>> net = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
>>> model = SphereQuantModel(net, dtype=torch.float64)
>>> state = molecules_to_state([[8, 1, 1], [6, 1, 1, 1, 1]],
...     [[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
...      [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]])
>>> out = model(state)
>>> out["energy"].shape, out["forces"].shape
(torch.Size([2]), torch.Size([8, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as _err:  # pragma: no cover - exercised by a test that hides torch_sim
    raise ImportError(
        "spherequant.models.torchsim needs TorchSim (the torch-sim-atomistic package); install the extra: "
        'pip install "spherequant[torchsim]"',
        name="torch_sim",
    ) from _err

from .checkpoints import load_model, resolve_device
from .so3krates import So3krates
from .units import EV_PER_AMU_A2_FS2

__all__ = ["TIME_UNIT_FS", "SphereQuantModel", "fs_to_time_unit", "molecules_to_state"]

#: TorchSim's time unit in metal units, in fs: ``sqrt(1 amu * 1 Angstrom^2 / 1 eV) ~= 10.1805 fs`` (from the
#: constants of :mod:`spherequant.models.units`; a TorchSim timestep ``dt`` is ``dt_fs / TIME_UNIT_FS``).
TIME_UNIT_FS = math.sqrt(EV_PER_AMU_A2_FS2)


def fs_to_time_unit(dt_fs: float) -> float:
    """A time in fs expressed in TorchSim's metal time unit (:data:`TIME_UNIT_FS`).

    Examples
    --------
    >>> round(fs_to_time_unit(TIME_UNIT_FS), 12)
    1.0
    """
    if isinstance(dt_fs, bool) or not isinstance(dt_fs, (int, float)) or not math.isfinite(dt_fs):
        raise TypeError(f"dt_fs must be a finite real number, got {dt_fs!r}")
    return float(dt_fs) / TIME_UNIT_FS


def _integer_class():
    from .deploy import IntegerSo3krates  # imported on use: FP32 and GAQ models do not need the deploy layer

    return IntegerSo3krates


def _form(model) -> str:
    """``"fp32"``, ``"qat-prepared"``, ``"converted"`` (fake-quant GAQ) or ``"integer"`` (deployed)."""
    if not isinstance(model, So3krates):
        return "integer"
    from .gaq import quantization_state

    state = quantization_state(model)
    if state is None:
        return "fp32"
    return "qat-prepared" if state.step == "prepared" else "converted"


class SphereQuantModel(ModelInterface):
    """TorchSim ``ModelInterface`` of a So3krates force field: energies (eV) and forces (eV/Angstrom) of a
    batch of molecules of any sizes, in one model call.

    Parameters
    ----------
    model : So3krates or IntegerSo3krates
        FP32, QAT-prepared / converted GAQ (:mod:`spherequant.models.gaq`) or integer
        (:func:`~spherequant.models.deploy.convert_to_integer`); moved to ``device`` and ``dtype`` and put in
        eval mode, in place.
    device : str or torch.device, optional
        Default: the model's device.
    dtype : torch.float32 or torch.float64, optional
        Dtype the model runs in (default: the model's). TorchSim states may hold another float dtype: their
        positions are cast to ``dtype`` for the model call and the outputs are cast back to the state's
        dtype (float32 model, float64 integration, as ``integrate_in_float64`` of
        :func:`~spherequant.models.md.run_md`).
    compute_forces : bool
        Return ``"forces"`` (default True; TorchSim's integrators need them).
    compute_stress : bool
        Must be False: molecules have no cell, so no stress.

    Attributes
    ----------
    model : torch.nn.Module
        The wrapped force field.
    form : {"fp32", "qat-prepared", "converted", "integer"}
        Which form of the force field it is.
    validate_inputs : bool
        Check every state (finite positions, consecutive system indices, known elements); costs a few host
        synchronisations per call (set False for timing). Shapes, dtypes, devices and ``pbc`` are always
        checked.

    Notes
    -----
    ``forward(state)`` returns ``{"energy": (n_systems,), "forces": (n_atoms, 3)}`` (plus
    ``"energy_quantized"`` (n_systems,) when a GAQ model in ``force_mode="smooth"`` reports it), detached.
    It raises ``ValueError`` for periodic states (``pbc`` true), elements the model was not trained on (its
    ``trained_elements``), non-finite positions and malformed system indices.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        compute_forces: bool = True,
        compute_stress: bool = False,
    ):
        super().__init__()
        if not isinstance(model, So3krates) and not isinstance(model, _integer_class()):
            raise TypeError(
                f"model must be a So3krates (FP32 or GAQ) or an IntegerSo3krates, got {type(model).__name__}"
            )
        for name, flag in (("compute_forces", compute_forces), ("compute_stress", compute_stress)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if compute_stress:
            raise ValueError(
                "compute_stress=True is not supported: the adapter handles molecules (no cell, no stress)"
            )
        net = model if isinstance(model, So3krates) else model.net
        if dtype is None:
            dtype = net.dtype
        if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        device = net.device if device is None else resolve_device(device)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.form = _form(model)
        self.validate_inputs = True
        self._device = net.device  # as the tensors report it ("cuda:0", not "cuda")
        self._dtype = dtype
        self._compute_forces = compute_forces
        self._compute_stress = False
        self._memory_scales_with = "n_atoms_x_density"

    @classmethod
    def from_checkpoint(
        cls,
        spec,
        *,
        integer: bool = False,
        force_mode: str | None = None,
        use_ema: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> SphereQuantModel:
        """Adapter for a checkpoint file or a shipped model name (loaded by
        :func:`~spherequant.models.checkpoints.load_model`), e.g. ``"azobenzene-gfn2-fp32"``.

        Parameters
        ----------
        spec : str or path-like
            Checkpoint file or pretrained name.
        integer : bool
            Convert a quantized (converted GAQ) checkpoint to the deployed
            :class:`~spherequant.models.deploy.IntegerSo3krates`.
        force_mode : {"ste", "smooth"}, optional
            Quantized checkpoints only: override the stored force mode (``"smooth"`` for MD).
        use_ema : bool
            Use the EMA weights when the checkpoint has them.
        device, dtype, **kwargs
            Passed to the constructor.

        Raises
        ------
        ValueError
            As :func:`~spherequant.models.checkpoints.load_model`, and for ``integer=True`` with an FP32 or
            unconverted checkpoint.
        """
        if not isinstance(integer, bool):
            raise TypeError(f"integer must be a bool, got {type(integer).__name__}")
        model = load_model(spec, use_ema=use_ema, force_mode=force_mode)
        if integer:
            if _form(model) != "converted":
                raise ValueError(
                    f"integer=True needs a converted GAQ checkpoint; {spec!r} holds a {_form(model)} model"
                )
            from .deploy import convert_to_integer

            model = convert_to_integer(model)
        return cls(model, device=device, dtype=dtype, **kwargs)

    @property
    def net(self) -> So3krates:
        """The So3krates network (the integer model's ``net`` for an IntegerSo3krates)."""
        return self.model if isinstance(self.model, So3krates) else self.model.net

    @property
    def trained_elements(self) -> tuple[int, ...] | None:
        """Atomic numbers the model was trained on (None: unknown, every element up to ``max_z`` accepted)."""
        return self.net.trained_elements

    def _inputs(self, state):
        """``(positions (N, 3), atomic numbers (N,) long, system index (N,) long, n_systems)``, checked."""
        if isinstance(state, dict):
            get = state.get
            system_idx = get("system_idx", get("batch"))
        elif isinstance(state, ts.SimState):
            get = lambda key: getattr(state, key, None)  # noqa: E731
            system_idx = state.system_idx
        else:
            raise TypeError(f"state must be a torch_sim SimState or a dict, got {type(state).__name__}")
        pos, z, pbc = get("positions"), get("atomic_numbers"), get("pbc")
        if not isinstance(pos, torch.Tensor) or pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
            shape = tuple(pos.shape) if isinstance(pos, torch.Tensor) else type(pos).__name__
            raise ValueError(f"state positions must be a tensor of shape (n_atoms >= 1, 3), got {shape}")
        if pos.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"state positions must be float32 or float64, got {pos.dtype}")
        n = pos.shape[0]
        if not isinstance(z, torch.Tensor) or z.shape != (n,) or z.is_floating_point() or z.is_complex():
            got = f"{z.dtype} {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"state atomic_numbers must be an integer tensor of shape ({n},), got {got}")
        if system_idx is None:
            system_idx = torch.zeros(n, dtype=torch.long, device=pos.device)
        if (
            not isinstance(system_idx, torch.Tensor)
            or system_idx.shape != (n,)
            or system_idx.is_floating_point()
            or system_idx.is_complex()
        ):
            raise ValueError(f"state system_idx must be an integer tensor of shape ({n},)")
        for name, t in (("positions", pos), ("atomic_numbers", z), ("system_idx", system_idx)):
            if t.device != self._device:
                raise ValueError(f"state {name} are on {t.device} but the model is on {self._device}")
        if bool(torch.as_tensor(pbc if pbc is not None else False).any()):  # a bool in TorchSim 0.3
            raise ValueError(
                "state has periodic boundaries (pbc=True); the So3krates adapter handles molecules only"
            )
        if self.validate_inputs:
            if not bool(torch.isfinite(pos).all()):
                raise ValueError("state positions contain NaN or infinite values")
            steps = torch.diff(system_idx)
            if int(system_idx[0]) != 0 or bool(((steps != 0) & (steps != 1)).any()):
                raise ValueError(
                    "state system_idx must start at 0 and number the systems consecutively, atoms of one "
                    "system contiguous (0, 0, 1, 1, 1, 2, ...)"
                )
            net = self.net
            zmin, zmax = int(z.min()), int(z.max())
            if zmin < 1 or zmax > net.max_z:
                raise ValueError(f"state atomic_numbers must lie in [1, {net.max_z}], got [{zmin}, {zmax}]")
            net.check_elements(z)
        return pos, z.long(), system_idx.long(), int(system_idx[-1]) + 1

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        """Energies and forces of a TorchSim state (``SimState`` or a dict with ``positions``,
        ``atomic_numbers``, ``system_idx`` (or ``batch``), ``pbc``; ``cell`` is ignored).

        Parameters
        ----------
        state : torch_sim.SimState or dict
            ``positions`` (n_atoms, 3) Angstrom, ``atomic_numbers`` (n_atoms,), ``system_idx`` (n_atoms,)
            (default: one system), ``pbc`` false.
        **kwargs
            Ignored (TorchSim passes none).

        Returns
        -------
        dict
            ``"energy"`` (n_systems,) eV and, with ``compute_forces``, ``"forces"`` (n_atoms, 3) eV/Angstrom,
            in the dtype of the state's positions.
        """
        pos, z, system_idx, n_systems = self._inputs(state)
        out = self.model(
            z,
            pos.detach().to(self._dtype),
            system_idx,
            compute_forces=self._compute_forces,
            num_graphs=n_systems,
        )
        result = {"energy": out["energy"].detach().to(pos.dtype)}
        if self._compute_forces:
            result["forces"] = out["forces"].detach().to(pos.dtype)
        if "energy_quantized" in out:
            result["energy_quantized"] = out["energy_quantized"].detach().to(pos.dtype)
        return result


def molecules_to_state(
    numbers: Sequence,
    positions: Sequence,
    velocities: Sequence | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
):
    """A non-periodic TorchSim ``SimState`` of several molecules (one system each), optionally with momenta.

    Parameters
    ----------
    numbers : sequence of int arrays, shapes (n_i,)
        Atomic numbers of each molecule.
    positions : sequence of arrays, shapes (n_i, 3)
        Positions (Angstrom).
    velocities : sequence of arrays, shapes (n_i, 3), optional
        Velocities in Angstrom/fs (the unit of :mod:`spherequant.models.md`); stored as the state's
        ``momenta`` in ``amu Angstrom / TIME_UNIT_FS``, which TorchSim's integrators start from instead of
        drawing Maxwell-Boltzmann momenta.
    device : str or torch.device
    dtype : torch.float32 or torch.float64

    Returns
    -------
    torch_sim.SimState
        ``pbc=False``, zero cells, masses from :func:`~spherequant.models.md.masses_from_numbers` (amu),
        ``system_idx`` numbering the molecules.
    """
    from .md import masses_from_numbers

    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    device = resolve_device(device)
    for name, seq in (("numbers", numbers), ("positions", positions), ("velocities", velocities)):
        if seq is not None and (isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or not seq):
            raise TypeError(f"{name} must be a non-empty sequence with one entry per molecule")
    if len(positions) != len(numbers) or (velocities is not None and len(velocities) != len(numbers)):
        raise ValueError(
            f"numbers, positions and velocities must hold one entry per molecule, got {len(numbers)}, "
            f"{len(positions)} and {None if velocities is None else len(velocities)}"
        )
    zs, xs, vs = [], [], []
    for k, z in enumerate(numbers):
        z = np.asarray(z)
        if z.ndim != 1 or z.size == 0 or not np.issubdtype(z.dtype, np.integer):
            raise ValueError(f"numbers[{k}] must be a non-empty 1-d integer array, got {z.dtype} {z.shape}")
        for name, seq, out in (("positions", positions, xs), ("velocities", velocities, vs)):
            if seq is None:
                continue
            x = np.asarray(seq[k], dtype=np.float64)
            if x.shape != (z.size, 3) or not np.isfinite(x).all():
                raise ValueError(f"{name}[{k}] must be a finite array of shape ({z.size}, 3), got {x.shape}")
            out.append(x)
        zs.append(z.astype(np.int64))
    z = np.concatenate(zs)
    masses = masses_from_numbers(z)
    tt = dict(dtype=dtype, device=device)
    state = ts.SimState(
        positions=torch.as_tensor(np.concatenate(xs), **tt),
        masses=torch.as_tensor(masses, **tt),
        cell=torch.zeros(len(zs), 3, 3, **tt),
        pbc=False,
        atomic_numbers=torch.as_tensor(z, device=device),
        system_idx=torch.repeat_interleave(
            torch.arange(len(zs), device=device), torch.as_tensor([len(a) for a in zs], device=device)
        ),
    )
    if velocities is not None:
        state.momenta = torch.as_tensor(masses[:, None] * np.concatenate(vs) * TIME_UNIT_FS, **tt)
    return state
