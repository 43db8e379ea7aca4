"""
Codebooks and their exact covering radii
========================================

A direction codebook is a finite set of unit vectors :math:`C = \\{c_1, \\dots, c_K\\} \\subset S^2`. The
direction quantizer snaps a unit vector to its nearest codeword, and the **covering radius**

.. math:: \\delta(C) = \\max_{u \\in S^2} \\min_k \\angle(u, c_k)

is the worst angle it can make. Every error and equivariance bound of the library is a function of
:math:`\\delta`, so spherequant computes it exactly rather than by sampling. This tutorial builds the shipped
codebooks, checks the exact value against a sampled estimate, draws Voronoi cells, and compares codebook
families against the Fejes Toth lower bound.
"""

# %%
# Building codebooks
# ------------------
# Every constructor returns a :class:`spherequant.codebook.Codebook`. Its ``covering_radius`` comes from the
# convex hull of the codewords: each hull facet bounds an empty spherical cap, and the largest cap is the
# deepest hole.
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import spherequant as sq
from spherequant.bounds import fejes_toth_covering_radius

torch.set_num_threads(1)
QUICK = os.environ.get("SPHEREQUANT_DOCS_QUICK", "0") == "1"

books = [
    sq.codebook.tetrahedron(),
    sq.codebook.octahedron(),
    sq.codebook.icosahedron(),
    sq.codebook.icosahedral(2),
    sq.codebook.healpix(4),
    sq.codebook.fibonacci(200),
]
print(f"{'codebook':<22} {'K':>5} {'delta (deg)':>12} {'Fejes Toth (deg)':>17} {'ratio':>7}")
for cb in books:
    delta = cb.covering_radius(degrees=True)
    bound = fejes_toth_covering_radius(cb.size, degrees=True)
    label = cb.kind + (f" ({cb.name})" if cb.name else "")
    print(f"{label:<22} {cb.size:>5} {delta:>12.4f} {bound:>17.4f} {cb.fejes_toth_ratio():>7.4f}")

# %%
# The tetrahedron, octahedron and icosahedron attain the Fejes Toth bound exactly (ratio 1): their
# covering radii are 70.53, 54.74 and 37.38 degrees.
#
# Exact versus sampled
# --------------------
# A sampled estimate ``max over random u of min_k angle(u, c_k)`` can only *underestimate* the covering
# radius. With the exact value we can see by how much, and where the deepest hole is.
cb = sq.codebook.fibonacci(200)
u = sq.sphere.random_unit_vectors(20_000 if QUICK else 200_000, seed=0)
sampled = float(sq.sphere.angle(u, cb.quantize(u)).max())
exact = cb.covering_radius()
hole = cb.deepest_hole()
at_hole = float(sq.sphere.angle(hole, cb.quantize(hole)))
print(f"sampled estimate {np.degrees(sampled):.4f} deg <= exact {np.degrees(exact):.4f} deg")
print(f"angle from the deepest hole to its nearest codeword: {np.degrees(at_hole):.4f} deg")

# %%
# Voronoi cells
# -------------
# :func:`spherequant.plotting.plot_voronoi` draws the spherical Voronoi cells coloured by their angular
# radius. The covering radius is the largest cell radius. The icosahedral grid has nearly uniform cells;
# the Fibonacci spiral has larger cells near its poles.
fig = plt.figure(figsize=(10, 4.5))
for i, cb in enumerate([sq.codebook.icosahedral(1), sq.codebook.fibonacci(42)]):
    ax = fig.add_subplot(1, 2, i + 1, projection="3d")
    sq.plotting.plot_voronoi(cb, ax=ax)
fig.tight_layout()

# %%
# Ratio to the Fejes Toth bound versus size
# -----------------------------------------
# No codebook of :math:`K` points can have a covering radius below the Fejes Toth bound. Plotting the ratio
# :math:`\delta(C) / \delta_{FT}(K)` for each family as :math:`K` grows shows how close each one gets.
# The *learned* codebooks of :func:`spherequant.learn.minimax_codebook` minimise :math:`\delta` directly
# (optimisation kept short here; the library's defaults run longer).
fib_sizes = [12, 50, 200, 1000] if QUICK else [12, 30, 100, 300, 1000, 3000, 10000]
ico_levels = range(4) if QUICK else range(5)
hp_nsides = [1, 2, 4, 8] if QUICK else [1, 2, 4, 8, 16]
learned_sizes = [12, 24, 48] if QUICK else [12, 24, 48, 96]

families = {
    "fibonacci": [sq.codebook.fibonacci(n) for n in fib_sizes],
    "icosahedral": [sq.codebook.icosahedral(level) for level in ico_levels],
    "healpix": [sq.codebook.healpix(nside) for nside in hp_nsides],
}
learn = getattr(sq, "learn", None)
if learn is not None and hasattr(learn, "minimax_codebook"):
    families["learned (minimax)"] = [
        sq.codebook.Codebook(
            learn.minimax_codebook(n, restarts=1, iterations=30, slp_iterations=30, cache=False)
        )
        for n in learned_sizes
    ]

fig, ax = plt.subplots(figsize=(6, 4))
for label, cbs in families.items():
    ax.semilogx([c.size for c in cbs], [c.fejes_toth_ratio() for c in cbs], "o-", ms=4, label=label)
ax.axhline(1.0, color="k", lw=0.8, ls="--", label="Fejes Toth bound")
ax.set_xlabel("codebook size K")
ax.set_ylabel(r"$\delta(C) / \delta_{FT}(K)$")
ax.legend()
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()

# %%
# For large :math:`K` the Fejes Toth bound behaves like :math:`\sqrt{8\pi / (3\sqrt{3} K)}`, so the
# covering radius of a good codebook halves when :math:`K` grows fourfold: each extra 2 bits of direction
# code halve the worst-case direction error.
for n in (1000, 4000, 16000):
    print(f"K = {n:>6}: fibonacci delta = {sq.codebook.fibonacci(n).covering_radius(degrees=True):.4f} deg")
