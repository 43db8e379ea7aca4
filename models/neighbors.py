"""Radius neighbour lists for batches of molecules (pure torch, no Python loop over atoms).

Graphs in a batch are stored contiguously: atoms of graph ``b`` occupy rows ``ptr[b]:ptr[b + 1]`` and
``batch[n]`` is the graph index of atom ``n`` (non-decreasing). Edges are directed, ``edge_index[0]`` is the
receiver ``i`` and ``edge_index[1]`` the sender ``j``; the edge vector of the model is ``pos[j] - pos[i]``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["batch_to_ptr", "edge_vectors", "radius_graph"]


def _check_batch(batch: torch.Tensor, num_atoms: int, device: torch.device) -> torch.Tensor:
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batch must be a torch tensor of shape (N,), got {type(batch).__name__}")
    if batch.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"batch must be an integer (long) tensor, got dtype {batch.dtype}")
    if batch.shape != (num_atoms,):
        raise ValueError(f"batch must have shape ({num_atoms},) to match pos, got {tuple(batch.shape)}")
    if batch.device != device:
        raise ValueError(f"batch is on {batch.device} but pos is on {device}")
    batch = batch.long()
    if num_atoms > 0:
        if bool((batch < 0).any()):
            raise ValueError("batch must hold non-negative graph indices")
        if num_atoms > 1 and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("batch must be non-decreasing (atoms of one graph stored contiguously)")
    return batch


def batch_to_ptr(batch: torch.Tensor, num_graphs: int | None = None) -> torch.Tensor:
    """Offsets of the graphs in a contiguous batch.

    Parameters
    ----------
    batch : torch.Tensor of shape (N,), long
        Graph index of every atom, non-decreasing.
    num_graphs : int, optional
        Number of graphs B (default ``batch.max() + 1``, or 0 for an empty batch).

    Returns
    -------
    torch.Tensor of shape (B + 1,), long
        ``ptr[b]:ptr[b + 1]`` are the rows of graph ``b``.

    Examples
    --------
    >>> batch_to_ptr(torch.tensor([0, 0, 1, 1, 1])).tolist()
    [0, 2, 5]
    """
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=batch.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


def radius_graph(pos, cutoff: float, batch=None):
    """All ordered pairs of distinct atoms of the same graph closer than ``cutoff``.

    Computed densely per graph (a padded ``(B, n_max, n_max)`` distance block), which suits molecules; memory
    grows as ``B * n_max**2``.

    Parameters
    ----------
    pos : torch.Tensor or numpy.ndarray of shape (N, 3), float
        Atomic positions (Angstrom).
    cutoff : float
        Positive finite cutoff radius (unit of ``pos``); pairs with ``|r_ij| < cutoff`` are kept.
    batch : torch.Tensor or numpy.ndarray of shape (N,), integer, optional
        Non-decreasing graph index of every atom; ``None`` means a single graph.

    Returns
    -------
    edge_index : torch.Tensor (or numpy.ndarray for numpy input) of shape (2, E), int64
        Row 0 the receiver ``i``, row 1 the sender ``j`` (``i != j``), sorted by ``i`` then ``j``
        (deterministic). On the device of ``pos``.

    Examples
    --------
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    >>> radius_graph(pos, 2.0).tolist()
    [[0, 1], [1, 0]]
    >>> radius_graph(pos, 2.0, batch=torch.tensor([0, 1, 1])).shape
    torch.Size([2, 0])
    """
    if isinstance(pos, np.ndarray):
        pos_t = torch.from_numpy(np.asarray(pos))
        batch_t = None if batch is None else torch.from_numpy(np.asarray(batch)).long()
        return radius_graph(pos_t, cutoff, batch_t).numpy()
    if not isinstance(pos, torch.Tensor):
        raise TypeError(
            f"pos must be a torch tensor or numpy array of shape (N, 3), got {type(pos).__name__}"
        )
    if not pos.is_floating_point():
        raise TypeError(f"pos must be a floating-point tensor, got dtype {pos.dtype}")
    if pos.ndim != 2 or pos.shape[-1] != 3:
        raise ValueError(f"pos must have shape (N, 3), got {tuple(pos.shape)}")
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(f"cutoff must be a real number, got {type(cutoff).__name__}")
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be positive and finite, got {cutoff}")
    pos = pos.detach()
    n = pos.shape[0]
    device = pos.device
    if n and not bool(torch.isfinite(pos).all()):
        raise ValueError("pos contains NaN or infinite values")
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=device)
    else:
        batch = _check_batch(batch, n, device)
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)

    ptr = batch_to_ptr(batch)
    counts = ptr[1:] - ptr[:-1]
    num_graphs = counts.shape[0]
    n_max = int(counts.max())
    local = torch.arange(n, device=device) - ptr[batch]  # index of each atom inside its graph
    padded = pos.new_zeros(num_graphs, n_max, 3)
    padded[batch, local] = pos
    valid = torch.zeros(num_graphs, n_max, dtype=torch.bool, device=device)
    valid[batch, local] = True
    diff = padded[:, None, :, :] - padded[:, :, None, :]  # (B, i, j, 3) = pos_j - pos_i
    dist2 = (diff * diff).sum(-1)
    mask = valid[:, :, None] & valid[:, None, :] & (dist2 < cutoff * cutoff)
    mask &= ~torch.eye(n_max, dtype=torch.bool, device=device)[None]
    b, i, j = mask.nonzero(as_tuple=True)  # row-major: sorted by graph, receiver, sender
    return torch.stack([ptr[b] + i, ptr[b] + j])


def edge_vectors(pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Edge vectors ``r_ij = pos[j] - pos[i]`` (differentiable in ``pos``).

    Parameters
    ----------
    pos : torch.Tensor of shape (N, 3)
    edge_index : torch.Tensor of shape (2, E), long; row 0 receivers ``i``, row 1 senders ``j``.

    Returns
    -------
    torch.Tensor of shape (E, 3)

    Examples
    --------
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    >>> edge_vectors(pos, torch.tensor([[0], [1]])).tolist()
    [[1.0, 2.0, 0.0]]
    """
    return pos.index_select(0, edge_index[1]) - pos.index_select(0, edge_index[0])
