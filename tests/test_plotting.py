"""spherequant.plotting: the Voronoi cell radii against the exact covering radius, and the Voronoi drawing.

Bad input to these functions is covered by tests/test_bad_inputs_core.py.
"""

import numpy as np
import pytest

import spherequant as sq
from spherequant import plotting


@pytest.fixture
def plt():
    """matplotlib.pyplot on Agg; the drawing tests skip without matplotlib (cell_radii needs none)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


@pytest.mark.parametrize(
    "cb",
    [
        sq.codebook.icosahedral(1),
        sq.codebook.fibonacci(42),
        sq.codebook.healpix(2),
        sq.codebook.fibonacci(500),
    ],
    ids=["icosahedral-1", "fibonacci-42", "healpix-2", "fibonacci-500"],
)
def test_largest_cell_radius_is_the_exact_covering_radius(cb):
    """The covering radius is attained at a Voronoi vertex, so max over cells of the cell radius equals it; a
    dense sample of the sphere never lies farther than its cell's radius from its nearest codeword."""
    points = np.asarray(cb.points, dtype=np.float64)
    radii = plotting.cell_radii(points)
    assert radii.shape == (cb.size,)
    exact = cb.covering_radius()
    assert abs(radii.max() - exact) < 1e-9, f"max cell radius {radii.max()!r} vs covering radius {exact!r}"
    u = sq.sphere.random_unit_vectors(50_000, seed=1)
    nearest = np.asarray(cb.nearest(u))
    dist = np.asarray(sq.sphere.angle(u, points[nearest]))
    excess = dist - radii[nearest]
    worst = int(excess.argmax())
    assert excess[worst] <= 1e-9, (
        f"sample {u[worst]} is {dist[worst]!r} rad from codeword {nearest[worst]}, whose cell radius is "
        f"{radii[nearest[worst]]!r}"
    )


def test_voronoi_drawing_is_independent_of_uninitialised_memory(monkeypatch, plt):
    """Regression: the cells have 5 and 6 sides, and matplotlib pads a ragged polygon list into an array made
    with ``np.empty`` and autoscaled over it, so garbage in that memory gave NaN axis limits at random (a CI
    docs build failed on it). Padding that holds values near the largest float (as leftover memory can)
    overflows the autoscaling margin; with ``np.empty`` returning such values the drawing must still
    succeed."""
    real_empty = np.empty

    def garbage_empty(shape, dtype=float, *args, **kwargs):
        out = real_empty(shape, dtype, *args, **kwargs)
        if np.issubdtype(out.dtype, np.floating):
            out.fill(0.995 * np.finfo(out.dtype).max)
        return out

    monkeypatch.setattr(np, "empty", garbage_empty)
    fig = plotting.plot_voronoi(sq.codebook.icosahedral(1))
    try:
        ax = fig.axes[0]
        for lim in (ax.get_xlim(), ax.get_ylim(), ax.get_zlim()):
            assert np.allclose(lim, (-1.0, 1.0)), lim
        fig.canvas.draw()
    finally:
        plt.close(fig)


def test_voronoi_draws_only_the_visible_cells(plt):
    """One polygon per cell whose codeword faces the viewer, coloured by the cell radius."""
    cb = sq.codebook.fibonacci(42)
    elev, azim = 20.0, 35.0
    fig = plotting.plot_voronoi(cb, elev=elev, azim=azim)
    try:
        e, a = np.radians(elev), np.radians(azim)
        view = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        visible = int((np.asarray(cb.points) @ view > 0).sum())
        coll = fig.axes[0].collections[0]
        assert len(coll.get_facecolors()) == visible
        assert "covering radius" in fig.axes[0].get_title()
    finally:
        plt.close(fig)
