"""Tests of spherequant.comparison: the per-axis-versus-MDDQ protocol behind benchmarks/mddq.py."""

from __future__ import annotations

import numpy as np

from spherequant import codebook
from spherequant.comparison import compare_vector_quantizers


def test_compare_vector_quantizers_small():
    res = compare_vector_quantizers(n=3000, seed=3, sweep=False)
    rows = {r["name"]: r for r in res["rows"]}
    delta = codebook.fibonacci(2**12).covering_radius()
    m20 = rows["MDDQ 8+12"]
    assert m20["max_comm"] <= res["r_max"] * 4 * np.sin(delta / 2)
    assert rows["MDDQ 6+10"]["mean_err"] < rows["per-axis 5/5/6 symmetric"]["mean_err"]
