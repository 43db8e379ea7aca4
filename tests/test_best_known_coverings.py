"""The comparison with the best known coverings (benchmarks/best_known_coverings.py) and its docs table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from spherequant import codebook as cbm

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bk = _load("_best_known", ROOT / "benchmarks" / "best_known_coverings.py")


def test_closed_form_optima_equal_the_exact_radius_of_their_polyhedra():
    optima = bk.closed_form_optima()
    for n, cb in ((4, cbm.tetrahedron()), (6, cbm.octahedron()), (12, cbm.icosahedron())):
        assert abs(optima[n][0] - cb.covering_radius()) < 1e-14, n
    # n = 5: the triangular bipyramid (poles and an equatorial triangle) attains atan 2
    s3 = math.sqrt(3.0) / 2.0
    bipyramid = cbm.Codebook([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-0.5, s3, 0], [-0.5, -s3, 0]])
    assert abs(optima[5][0] - bipyramid.covering_radius()) < 1e-14


_CATALOGUE = """Icosahedral best packings

dim numpts  minimum distance (degrees)

  3     60  26.821267399793

Icosahedral best coverings

dim numpts  deepest hole (degrees)

  3     72  15.144532085111 2,1
  3    492   5.752924348142 5,3
  3    492   5.784775851139 7,0

Icosahedral maximum volumes
  3     72   3.875747022839 2,1
"""


def test_catalogue_parser_keeps_the_best_entry_per_size_and_stops_at_the_table_end():
    got = bk.parse_icosahedral_catalogue(_CATALOGUE)
    assert got == {72: 15.144532085111, 492: 5.752924348142}
    with pytest.raises(ValueError, match="no rows"):
        bk.parse_icosahedral_catalogue("Icosahedral best coverings\n\nnothing here\n")


def test_sky_map_parser_reads_both_point_formats():
    pts = np.asarray(cbm.octahedron().points)
    body = "\n".join(f"new Vector3({x:.12f}f, {y:.12f}f, {z:.12f}f)," for x, y, z in pts)
    text = (
        "  // 6 points to cover the sphere.  Each region is about 55 degrees.\n"
        "  public static final float REGION_COVERAGE_ANGLE_IN_RADIANS = 0.955316618f;\n" + body
    )
    got = bk.parse_sky_map(text)
    p, angle = got[6]
    np.testing.assert_allclose(p, pts, atol=1e-12)
    assert angle == pytest.approx(math.acos(1 / math.sqrt(3)), abs=1e-9)


def test_script_compares_with_the_shipped_table(tmp_path):
    out = tmp_path / "bk.json"
    (tmp_path / "ico").mkdir()
    (tmp_path / "ico" / "readme").write_text(_CATALOGUE)
    np.savetxt(tmp_path / "ico" / "cover.3.72", np.asarray(cbm.geodesic(2, 1).points).reshape(-1))
    assert bk.main(["--icosahedral", str(tmp_path / "ico"), "--out", str(out), "--max-n", "100"]) == 0
    data = json.loads(out.read_text())
    rows = {r["n"]: r for r in data["rows"]}
    assert sorted(rows) == [4, 5, 6, 12, 72]
    assert rows[72]["verified_deg"] == pytest.approx(cbm.geodesic(2, 1).covering_radius(degrees=True))
    ours = cbm.learned(72).covering_radius(degrees=True)
    assert rows[72]["ratio"] == pytest.approx(ours / 15.144532085111, rel=1e-12)
    assert data["worse_at"] == [n for n in sorted(rows) if rows[n]["worse"]]
    for n in (4, 5, 6, 12):  # the proven optima are reached
        assert rows[n]["ratio"] == pytest.approx(1.0, abs=1e-12) and not rows[n]["worse"], rows[n]
    assert bk.main(["--icosahedral", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_docs_table_renders_numbers():
    gen = _load("_gen_results_bk", ROOT / "docs" / "generate_results.py")
    table = gen.best_known_table(ROOT)
    if "No `best_known_coverings.json`" in table:
        pytest.skip("no result file")
    lines = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert lines, table
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        float(cells[2])  # best known (deg) is a number
        assert not any(c.startswith(("{", "[")) for c in cells), line
