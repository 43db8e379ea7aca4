"""Sympy check of the Fejes Toth covering bound: closed forms, tightness, and the large-n asymptotic.

Checks the statements of ``proofs/fejes_toth_bound.md`` (the inequality itself is cited, not proved):

1. with ``omega_n = n pi / (6 (n - 2))`` and ``cos(delta_FT(n)) = cot(omega_n)/sqrt(3)``:
   ``n = 3: 0``, ``n = 4: 1/3``, ``n = 6: 1/sqrt(3)``, ``n = 12: sqrt((5 + 2 sqrt(5))/15)`` exactly, and the
   degree values 90, 70.5288, 54.7356, 37.3774;
2. tightness: the covering radii of the regular tetrahedron, octahedron and icosahedron, computed exactly as
   ``arccos`` of the facet-plane distance of a face (the facet-normal theorem), equal these values;
3. large n: ``n (1 - cos delta_FT(n)) -> 4 pi / (3 sqrt(3))``, hence
   ``delta_FT(n) / sqrt(8 pi / (3 sqrt(3) n)) -> 1``; equivalently the hexagon area
   ``(3 sqrt(3)/2) delta^2`` tends to the area per point ``4 pi / n``;
4. negative controls: ``tan`` instead of ``cot`` and ``n/(n - 2)`` dropped are rejected.

Run ``python proofs/check_fejes_toth.py``; exits non-zero on failure.
"""

from __future__ import annotations

import sympy as sp
from _check_helpers import ok

__all__ = ["fejes_toth_cos", "main"]


def fejes_toth_cos(n):
    """cos of the Fejes Toth lower bound on the covering radius of n >= 3 points (sympy expression)."""
    omega = n * sp.pi / (6 * (n - 2))
    return sp.cot(omega) / sp.sqrt(3)


def _facet_cos(face: list[sp.Matrix]) -> sp.Expr:
    """Distance from 0 to the plane of a face of unit points: <m, a> with m the unit normal."""
    a, b, c = face
    m = (b - a).cross(c - a)
    return sp.Abs(sp.simplify(m.dot(a) / sp.sqrt(m.dot(m))))


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("Fejes Toth bound:")
    expected = {
        3: (sp.Integer(0), 90.0),
        4: (sp.Rational(1, 3), 70.5288),
        6: (1 / sp.sqrt(3), 54.7356),
        12: (sp.sqrt((5 + 2 * sp.sqrt(5)) / 15), 37.3774),
    }
    for n, (cos_exact, deg) in expected.items():
        val = fejes_toth_cos(n)
        ok(sp.simplify(sp.radsimp(val - cos_exact)) == 0, f"n = {n}: cos delta_FT = {cos_exact}")
        got = float(sp.deg(sp.acos(cos_exact)))
        ok(abs(got - deg) < 5e-5, f"n = {n}: delta_FT = {got:.4f} deg")

    # Tightness: covering radius of the Platonic solids = arccos(facet distance) (0 is interior).
    r3 = sp.sqrt(3)
    tet = [sp.Matrix(v) / r3 for v in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])]
    octa = [sp.Matrix(v) for v in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    phi = (1 + sp.sqrt(5)) / 2
    norm = sp.sqrt(1 + phi**2)
    ico = [sp.Matrix(v) / norm for v in ([0, 1, phi], [0, -1, phi], [phi, 0, 1])]
    for name, face, n in (("tetrahedron", tet[1:], 4), ("octahedron", octa, 6), ("icosahedron", ico, 12)):
        d = _facet_cos(face)
        if name == "icosahedron":
            edge = sp.simplify((face[0] - face[1]).dot(face[0] - face[1]))
            other = sp.simplify((face[0] - face[2]).dot(face[0] - face[2]))
            ok(sp.simplify(edge - other) == 0, "the icosahedron face is equilateral (a true face)")
        ok(sp.simplify(sp.radsimp(d - expected[n][0])) == 0, f"{name}: facet distance {d} = Fejes Toth value")
    ok(
        sp.simplify(_facet_cos(tet[1:]) - 1 / sp.sqrt(3)) != 0,
        "negative control: the tetrahedron value differs from the octahedron value",
    )

    # Large-n asymptotic.
    n = sp.symbols("n", positive=True)
    lim = sp.limit(n * (1 - fejes_toth_cos(n)), n, sp.oo)
    ok(sp.simplify(lim - 4 * sp.pi / (3 * sp.sqrt(3))) == 0, f"n (1 - cos delta_FT) -> {lim}")
    # delta^2 / (2 (1 - cos delta)) -> 1 as delta -> 0, so n delta^2 -> 8 pi / (3 sqrt(3)).
    dl = sp.symbols("delta", positive=True)
    ok(sp.limit(dl**2 / (2 * (1 - sp.cos(dl))), dl, 0) == 1, "delta^2 / (2 (1 - cos delta)) -> 1")
    hexagon = sp.Rational(3, 2) * sp.sqrt(3) * (8 * sp.pi / (3 * sp.sqrt(3) * n))
    ok(
        sp.simplify(hexagon - 4 * sp.pi / n) == 0,
        "hexagon area (3 sqrt(3)/2) delta^2 = 4 pi / n at the asymptote",
    )
    for big in (10**4, 10**6):
        ratio = sp.N(sp.acos(fejes_toth_cos(big)) / sp.sqrt(8 * sp.pi / (3 * sp.sqrt(3) * big)), 30)
        ok(abs(ratio - 1) < 1.0 / big, f"n = {big}: delta_FT / asymptote = {ratio:.10f}")

    # Negative controls.
    wrong_tan = sp.tan(4 * sp.pi / 12) / sp.sqrt(3)
    ok(
        sp.simplify(wrong_tan - sp.Rational(1, 3)) != 0,
        "negative control: tan instead of cot is rejected at n = 4",
    )
    wrong_omega = sp.cot(4 * sp.pi / 6) / sp.sqrt(3)
    ok(
        sp.simplify(wrong_omega - sp.Rational(1, 3)) != 0,
        "negative control: omega = n pi / 6 is rejected at n = 4",
    )
    print("Fejes Toth bound: all checks passed.")


if __name__ == "__main__":
    main()
