"""Tolerances derived from the arithmetic, so that a test holds on every CPU and BLAS code path.

Where a test claims that two computations are the same mathematics (a fast form and a plain one, a mapped weights
file and the network it came from), it runs both in float64 and allows the rounding bound of the longest chain of
reductions: a sum of n terms is off by at most n * eps relative to the sum of magnitudes (Higham's gamma_n), and
`depth` such sums follow one another. In float32 the same comparison can differ by 1e-5 relative on one CPU and
1e-7 on another (vector widths change the order of the sums), so no fixed float32 tolerance is right everywhere.
"""

import torch


def rounding_bound(dtype: torch.dtype, reduction: int, depth: int = 1) -> float:
    """Relative rounding bound of `depth` chained reductions of at most `reduction` terms each in `dtype`."""
    return torch.finfo(dtype).eps * reduction * depth


def assert_same_maths(got: torch.Tensor, expected: torch.Tensor, reduction: int, depth: int = 1) -> None:
    """`got` equals `expected` to the rounding bound of their dtype (float64 wherever the test can), relative to
    `expected`'s largest magnitude."""
    assert got.dtype == expected.dtype, "compare two computations in one precision"
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(got, expected, atol=rounding_bound(got.dtype, reduction, depth) * scale, rtol=0)
