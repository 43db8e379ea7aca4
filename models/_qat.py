"""Quantization-aware training: the staged warm-up schedule and the LEE loss term.

Re-exported by :mod:`spherequant.models.gaq`. Both read the :class:`~spherequant.models.gaq.QATSchedule` part
of the model's :class:`~spherequant.models.gaq.QuantizationSpec`.
"""

from __future__ import annotations

import torch
from torch import nn

from ._quant_spec import QuantizationSpec, to_spec
from ._quant_state import set_quant_enabled, unpack_batch

__all__ = ["GAQScheduler", "haar_rotations", "lee_penalty", "qat_loss_terms"]


class GAQScheduler:
    """Staged warm-up: the equivariant branch's quantization is off for epochs ``1 .. warmup_epochs``.

    Parameters
    ----------
    spec : QuantizationSpec
        Its :class:`~spherequant.models.gaq.QATSchedule` part is used (a deprecated ``GAQConfig`` is
        accepted).

    Examples
    --------
    >>> from spherequant.models.gaq import quantize_
    >>> from spherequant.models.so3krates import So3krates
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> spec = QuantizationSpec.from_options("gaq", codebook_size=64, warmup_epochs=2)
    >>> _ = quantize_(m, spec)
    >>> sched = GAQScheduler(spec)
    >>> [sched.on_epoch_start(m, e) for e in (1, 2, 3)]
    [False, False, True]
    """

    def __init__(self, spec: QuantizationSpec):
        self.spec = to_spec(spec, "spec")

    def equivariant_enabled(self, epoch: int) -> bool:
        """Whether the equivariant branch is quantized in (1-based) ``epoch``."""
        return self.spec.schedule.equivariant_enabled(epoch)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> bool:
        """Apply the schedule for ``epoch`` (1-based); returns whether the equivariant branch is quantized."""
        on = self.equivariant_enabled(epoch)
        set_quant_enabled(model, "equivariant", on)
        set_quant_enabled(model, "invariant", True)
        return on


# ----------------------------------------------------------------------------------------------------------
# LEE regularisation
# ----------------------------------------------------------------------------------------------------------
def haar_rotations(n: int, generator: torch.Generator | None, dtype, device) -> torch.Tensor:
    """``n`` Haar-random rotation matrices (n, 3, 3): normalised Gaussian quaternions drawn in float64 from
    ``generator`` (CPU), returned with ``dtype`` on ``device``."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).reshape(n, 3, 3)  # fmt: skip
    return rot.to(device=device, dtype=dtype)


def lee_penalty(
    model: nn.Module, batch, generator: torch.Generator | None = None, *, forces=None, forward=None
) -> torch.Tensor:
    """LEE penalty ``mean over atoms ||F(R_b x) - R_b F(x)||^2`` with one Haar rotation ``R_b`` per graph.

    Differentiable with respect to the model's parameters when the model is in training mode (the model
    keeps the force graph then). Units: (eV/Angstrom)^2.

    Parameters
    ----------
    model : So3krates
    batch : GraphBatch-like
        ``z`` (N,), ``pos`` (N, 3), ``batch`` (N,), ``num_graphs``.
    generator : torch.Generator, optional
        CPU generator of the rotations (quaternions from ``torch.randn``, normalised: Haar).
    forces : torch.Tensor of shape (N, 3), optional
        ``F(x)`` already computed for this batch (saves a forward pass).
    forward : callable, optional
        ``forward(z, pos, batch, num_graphs) -> {"forces": ...}`` used instead of ``model(...)``, e.g. the
        compiled training step of :mod:`spherequant.models.compiled` (training passes it with ``compile``).

    Returns
    -------
    torch.Tensor, shape ()

    Examples
    --------
    >>> from spherequant.models.so3krates import So3krates
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9).double()
    >>> b = {"z": torch.tensor([8, 1, 1]), "pos": torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
    ...      dtype=torch.float64)}
    >>> float(lee_penalty(m.eval(), b, torch.Generator().manual_seed(0))) < 1e-20
    True
    """
    z, pos, b, num_graphs = unpack_batch(batch)
    if b is None:
        b = torch.zeros(z.shape[0], dtype=torch.long, device=pos.device)
    b = b.long()
    if num_graphs is None:
        num_graphs = int(b.max()) + 1 if b.numel() else 0
    if z.shape[0] == 0:
        return pos.new_zeros(())
    rot = haar_rotations(num_graphs, generator, pos.dtype, pos.device)
    r_atom = rot.index_select(0, b)
    pos0 = pos.detach()
    pos_rot = torch.einsum("nij,nj->ni", r_atom, pos0)
    if forward is None:

        def forward(z, pos, batch, num_graphs):
            return model(z, pos, batch, num_graphs=num_graphs)

    if forces is None:
        forces = forward(z, pos0, b, num_graphs)["forces"]
    f_rot = forward(z, pos_rot, b, num_graphs)["forces"]
    diff = f_rot - torch.einsum("nij,nj->ni", r_atom, forces)
    return (diff * diff).sum(-1).mean()


def qat_loss_terms(model: nn.Module, batch, spec: QuantizationSpec, *, out: dict | None = None,
                   generator: torch.Generator | None = None, forward=None) -> dict:  # fmt: skip
    """Extra QAT loss terms for the training loop: ``{"lee": penalty, "loss": lee_weight * penalty}``.

    Wiring (in the training step, after the task loss)::

        extra = qat_loss_terms(model, b, spec, out=out, generator=g)
        loss = loss + extra["loss"]

    With ``lee_weight == 0`` no extra forward pass is made and both terms are 0.

    Parameters
    ----------
    model, batch
        As for :func:`lee_penalty`.
    spec : QuantizationSpec
        Its ``schedule.lee_weight`` weighs the penalty (a deprecated ``GAQConfig`` is accepted).
    out : dict, optional
        The model's output on ``batch`` (its ``"forces"`` are reused).
    generator : torch.Generator, optional
    forward : callable, optional
        Passed to :func:`lee_penalty`.
    """
    weight = to_spec(spec, "spec").schedule.lee_weight
    _, pos, _, _ = unpack_batch(batch)
    if weight == 0:
        zero = pos.new_zeros(())
        return {"lee": zero, "loss": zero}
    forces = None if out is None else out.get("forces")
    pen = lee_penalty(model, batch, generator, forces=forces, forward=forward)
    return {"lee": pen, "loss": weight * pen}


# ----------------------------------------------------------------------------------------------------------
