"""Pictures of codebooks on the sphere (requires matplotlib, an optional dependency).

Examples
--------
>>> import spherequant as sq
>>> fig = sq.plotting.plot_voronoi(sq.codebook.icosahedral(1))  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from ._backend import check_vectors, is_torch, safe_norm
from ._validation import check_real

__all__ = ["cell_radii", "plot_error_vs_bits", "plot_voronoi"]


def _pyplot():
    try:
        import matplotlib

        if matplotlib.get_backend().lower() not in {"agg", "pdf", "svg", "png"}:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'spherequant[models]'") from exc
    return plt


def _voronoi(points: np.ndarray):
    from scipy.spatial import SphericalVoronoi

    sv = SphericalVoronoi(points, radius=1.0, center=np.zeros(3))
    sv.sort_vertices_of_regions()
    return sv


def _check_points(points, name: str = "points") -> np.ndarray:
    """Validate unit, distinct codewords (K >= 4) whose convex hull contains the origin in its interior."""
    from scipy.spatial import ConvexHull, QhullError

    p = check_vectors(points, name)
    if is_torch(p):
        p = p.detach().cpu()
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 4:
        raise ValueError(f"{name} must have shape (K, 3) with K >= 4, got {p.shape}")
    dev = np.abs(safe_norm(p, axis=-1) - 1.0)
    if dev.max() > 1e-6:
        raise ValueError(
            f"{name} must be unit vectors (to 1e-6); row {int(dev.argmax())} has |p| - 1 = {dev.max():.2e}"
        )
    _, counts = np.unique(p, axis=0, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{name} contains duplicate rows; every codeword must be distinct")
    try:
        hull = ConvexHull(p)
        inside = bool(np.all(hull.equations[:, -1] < -1e-12))
    except QhullError:
        inside = False  # all on one great circle (or worse): in a closed hemisphere
    if not inside:
        raise ValueError(
            f"{name} lie in one closed hemisphere; their Voronoi vertices do not give the covering radius"
        )
    return p


def cell_radii(points: np.ndarray) -> np.ndarray:
    """Angular radius (radians) of each Voronoi cell: the largest angle from its codeword to its vertices.

    The covering radius of the codebook is the maximum of these values when the points are not contained in a
    closed hemisphere (then every maximiser of the distance to the codebook is a Voronoi vertex).

    Parameters
    ----------
    points : ndarray of shape (K, 3)
        Unit codewords (to 1e-6), distinct, not all in one closed hemisphere (K >= 4).

    Returns
    -------
    ndarray of shape (K,)

    Raises
    ------
    TypeError, ValueError
        For non-real or non-finite input, a wrong shape, non-unit rows, duplicates, or points in one closed
        hemisphere (then the Voronoi vertices do not give the covering radius).
    """
    points = _check_points(points)
    sv = _voronoi(points)
    out = np.empty(len(points))
    for k, region in enumerate(sv.regions):
        v = sv.vertices[region]
        c = points[k]
        out[k] = np.max(np.arctan2(np.linalg.norm(np.cross(v, c), axis=-1), v @ c))
    return out


def plot_voronoi(
    codebook,
    *,
    ax=None,
    elev: float = 20.0,
    azim: float = 35.0,
    cmap: str = "viridis",
    title: str | None = None,
):
    """Draw the visible half of a codebook's spherical Voronoi cells, coloured by each cell's angular radius.

    Parameters
    ----------
    codebook : spherequant.codebook.Codebook
        Codebook with at least 4 points, not all in one closed hemisphere.
    ax : matplotlib 3D axes, optional
        Axes to draw into; a new figure is made when omitted.
    elev, azim : float
        View angles in degrees.
    cmap : str
        Matplotlib colormap name.
    title : str, optional
        Axes title (default: the codebook's repr and its covering radius).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if getattr(codebook, "points", None) is None or not callable(getattr(codebook, "covering_radius", None)):
        raise TypeError(f"codebook must be a spherequant.codebook.Codebook, got {type(codebook).__name__}")
    elev, azim = check_real(elev, "elev"), check_real(azim, "azim")
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a matplotlib colormap name, got {type(cmap).__name__}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__}")
    try:
        plt.get_cmap(cmap)
    except ValueError:
        raise ValueError(f"cmap {cmap!r} is not a matplotlib colormap name") from None
    points = np.asarray(codebook.points)
    if len(points) < 4:
        raise ValueError(f"codebook must have at least 4 points to draw Voronoi cells, got {len(points)}")
    points = _check_points(points, "codebook points")
    sv = _voronoi(points)
    radii = np.degrees(cell_radii(points))
    if ax is None:
        fig = plt.figure(figsize=(6, 6))
        ax = fig.add_subplot(projection="3d")
    else:
        fig = ax.figure
    norm = plt.Normalize(vmin=radii.min(), vmax=radii.max() if radii.max() > radii.min() else radii.min() + 1)
    colours = plt.get_cmap(cmap)(norm(radii))
    e, a = np.radians(elev), np.radians(azim)
    view = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    front = points @ view > 0.0  # matplotlib does not depth-sort across artists: draw the visible half only
    polys, face_colours = [], []
    for k, region in enumerate(sv.regions):
        if not front[k]:
            continue
        face_colours.append(colours[k])
        v = sv.vertices[region]
        # subdivide each edge so the polygon follows the sphere, then push slightly outward
        fine = []
        for a, b in zip(v, np.roll(v, -1, axis=0)):
            t = np.linspace(0.0, 1.0, 8, endpoint=False)[:, None]
            seg = (1 - t) * a + t * b
            fine.append(seg / np.linalg.norm(seg, axis=1, keepdims=True))
        polys.append(np.concatenate(fine))
    # Cells have 5, 6, ... sides, so the outlines differ in length. Matplotlib (3.11) stores a ragged list in
    # an uninitialised padded array and autoscales over the padding too, which gave NaN axis limits at random;
    # repeat each outline's first point up to one common length and pass a regular array instead.
    n_max = max(len(p) for p in polys)
    faces = np.stack([np.concatenate([p, np.repeat(p[:1], n_max - len(p), axis=0)]) for p in polys])
    coll = Poly3DCollection(faces, facecolors=face_colours, edgecolors="k", linewidths=0.3)
    ax.add_collection3d(coll, autolim=False)  # the limits are set to the unit cube below
    ax.scatter(*(points[front] * 1.002).T, s=2, c="k")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_zlim(-1, 1)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, shrink=0.6, label="cell radius (degrees)")
    if title is None:
        title = f"{codebook!r}\ncovering radius {codebook.covering_radius(degrees=True):.3f} deg"
    ax.set_title(title, fontsize=9)
    return fig


def plot_error_vs_bits(result: dict):
    """Mean reconstruction and commutation error versus bits per vector, per quantizer family.

    Parameters
    ----------
    result : dict
        The output of :func:`spherequant.comparison.compare_vector_quantizers` (its ``"sweep"`` rows).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    if not result.get("sweep"):
        raise ValueError("result has no 'sweep' rows: run compare_vector_quantizers(..., sweep=True)")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for family in sorted({row["family"] for row in result["sweep"]}):
        rows = sorted((r for r in result["sweep"] if r["family"] == family), key=lambda r: r["bits"])
        bits = [r["bits"] for r in rows]
        for ax, key in zip(axes, ("mean_err", "mean_comm")):
            ax.semilogy(bits, [r[key] for r in rows], marker="o", label=family)
    for ax, title in zip(axes, ("mean ||Q(v) - v||", "mean ||Q(Rv) - R Q(v)||")):
        ax.set_xlabel("bits per vector")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"per-axis scalar vs MDDQ, {result['n']} N(0, I) vectors (chi-3 magnitudes)")
    return fig
