"""Radius graph against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from spherequant.models.neighbors import batch_to_ptr, edge_vectors, radius_graph


def brute_force(pos: np.ndarray, cutoff: float, batch: np.ndarray) -> set[tuple[int, int]]:
    """Every ordered pair (i, j), i != j, same graph, |pos_j - pos_i| < cutoff, by double loop."""
    out = set()
    for i in range(len(pos)):
        for j in range(len(pos)):
            if i != j and batch[i] == batch[j] and np.linalg.norm(pos[j] - pos[i]) < cutoff:
                out.add((i, j))
    return out


@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=4),
    cutoff=st.floats(0.3, 4.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_brute_force(sizes, cutoff, seed):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    pos = rng.uniform(-2.0, 2.0, size=(n, 3))
    batch = np.repeat(np.arange(len(sizes)), sizes)
    edges = radius_graph(torch.from_numpy(pos), cutoff, torch.from_numpy(batch))
    assert edges.dtype == torch.long and edges.shape[0] == 2
    got = list(map(tuple, edges.T.tolist()))
    expected = brute_force(pos, cutoff, batch)
    assert len(got) == len(set(got)), "duplicate edges"
    assert set(got) == expected, f"missing {expected - set(got)}, extra {set(got) - expected}"
    # deterministic order: sorted by receiver, then sender
    assert got == sorted(got)


def test_float32_and_numpy_roundtrip(rng, float_dtype):
    pos = rng.normal(size=(12, 3)).astype(float_dtype)
    batch = np.array([0] * 5 + [1] * 7)
    e_np = radius_graph(pos, 1.5, batch)
    assert isinstance(e_np, np.ndarray) and e_np.dtype == np.int64
    e_t = radius_graph(torch.from_numpy(pos), 1.5, torch.from_numpy(batch))
    np.testing.assert_array_equal(e_np, e_t.numpy())
    got = set(map(tuple, e_np.T.tolist()))
    expected = brute_force(pos.astype(np.float64), 1.5, batch)
    # rounding may only flip pairs sitting on the cutoff sphere
    for i, j in got ^ expected:
        d = np.linalg.norm(pos[j].astype(np.float64) - pos[i])
        assert abs(d - 1.5) < 1e-5, f"pair {(i, j)} at distance {d:.6f} misclassified"


def test_cutoff_is_strict():
    pos = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    assert radius_graph(pos, 2.0).shape == (2, 0)
    assert radius_graph(pos, 2.0 + 1e-9).shape == (2, 2)


def test_single_atoms_and_empty():
    assert radius_graph(torch.zeros(0, 3), 1.0).shape == (2, 0)
    pos = torch.zeros(3, 3)
    assert radius_graph(pos, 1.0, torch.tensor([0, 1, 2])).shape == (2, 0)


def test_empty_graphs_in_batch_are_skipped():
    # graph 1 has no atoms: batch indices 0, 0, 2, 2
    pos = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [10.0, 0, 0], [10.5, 0, 0]])
    e = radius_graph(pos, 1.0, torch.tensor([0, 0, 2, 2]))
    assert e.tolist() == [[0, 1, 2, 3], [1, 0, 3, 2]]


def test_edge_vectors_direction():
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    e = radius_graph(pos, 10.0)
    r = edge_vectors(pos, e)
    assert r.tolist() == [[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]
    r.sum().backward()
    assert pos.grad is not None


def test_batch_to_ptr():
    assert batch_to_ptr(torch.tensor([0, 0, 1, 3])).tolist() == [0, 2, 3, 3, 4]
    assert batch_to_ptr(torch.tensor([0, 0]), num_graphs=3).tolist() == [0, 2, 2, 2]


@pytest.mark.parametrize(
    ("pos", "cutoff", "batch", "exc", "word"),
    [
        ([[0.0, 0.0, 0.0]], 1.0, None, TypeError, "pos"),
        (torch.zeros(3, 2), 1.0, None, ValueError, "pos"),
        (torch.zeros(3, 3, dtype=torch.long), 1.0, None, TypeError, "pos"),
        (torch.zeros(3, 3), -1.0, None, ValueError, "cutoff"),
        (torch.zeros(3, 3), float("inf"), None, ValueError, "cutoff"),
        (torch.zeros(3, 3), "1", None, TypeError, "cutoff"),
        (torch.zeros(3, 3), 1.0, torch.tensor([0, 1]), ValueError, "batch"),
        (torch.zeros(3, 3), 1.0, torch.tensor([1, 0, 0]), ValueError, "non-decreasing"),
        (torch.zeros(3, 3), 1.0, torch.tensor([0.0, 0.0, 0.0]), TypeError, "batch"),
        (torch.tensor([[0.0, 0.0, float("nan")]]), 1.0, None, ValueError, "NaN"),
    ],
)
def test_bad_input(pos, cutoff, batch, exc, word):
    with pytest.raises(exc, match=word):
        radius_graph(pos, cutoff, batch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(50, 3, generator=g) * 4
    batch = torch.arange(5).repeat_interleave(10)
    cpu = radius_graph(pos, 2.0, batch)
    gpu = radius_graph(pos.cuda(), 2.0, batch.cuda())
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu, gpu.cpu())
