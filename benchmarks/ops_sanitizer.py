"""Calls every ssir_fast op once per awkward case, for compute-sanitizer memcheck on a GPU:

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/ops_sanitizer.py
    compute-sanitizer --tool racecheck python benchmarks/ops_sanitizer.py --size small
    python benchmarks/ops_sanitizer.py --device cpu          # the same calls on the CPU

Odd sizes (not multiples of any vector width or block), unaligned views, every dtype, per-channel
bounds and per-sample radii, masks, NaN/inf inputs (counted, and the raising path), the shared-
memory and global-atomic bin_reduce paths (5000 and 100000 bins; bin_reduce_nd: 2-D and 3-D grids
of 12 to 10^6 bins), empty inputs, denormal values,
empty and single-sample bins, and the backward passes. --size small drops the largest shapes and
keeps every path (racecheck is much slower than memcheck).
Results are not compared here (the tests do that); the point is that no call reads or writes
out of bounds. Exits non-zero if a call raises where it should not.
"""
import argparse

import torch

from ssir_fast.ops import bin_feature_stats, bin_reduce, bin_reduce_nd, fds_calibrate, perturb


SIZES = {  # (perturb shapes, bin_reduce lengths, bin counts, (N, C, bins) of the FDS ops)
    "full": (((7, 3, 17, 19), (1, 1), (5, 1001), (3, 150529)), (1, 7, 1001, 100_003),
             (1, 93, 5000, 100_000), ((1, 3, 4), (257, 67, 10), (1000, 130, 100))),
    "small": (((7, 3, 17, 19), (1, 1), (5, 1001), (2, 20_003)), (1, 7, 1001, 10_007),
              (1, 93, 5000, 100_000), ((1, 3, 4), (257, 67, 10), (300, 33, 100))),
}


def run(device, size="full"):
    shapes, lengths, bin_counts, fds_cases = SIZES[size]
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    n_calls = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for shape in shapes:
            x, d = rnd(*shape).to(dtype), rnd(*shape).to(dtype)
            lo = -torch.ones(shape[1] if len(shape) > 1 else 1, device=device)
            eps = torch.rand(shape[0], generator=g).to(device)
            perturb(x, d, 0.3)
            perturb(x, d, 0.3, -1.0, 1.0)
            perturb(x, d, eps, lo if len(shape) > 2 else -1.0, 2.0)
            flat_x, flat_d = rnd(x.numel() + 1).to(dtype), rnd(x.numel() + 3).to(dtype)
            perturb(flat_x[1:].view(shape), flat_d[3:].view(shape), 0.3, out=flat_x[1:].view(shape))
            perturb(x.clone(), d, 0.3, out=torch.empty_like(x))
            n_calls += 5
        xg = rnd(4, 3, 5).to(dtype).requires_grad_(True)
        dg = rnd(4, 3, 5).to(dtype).requires_grad_(True)
        perturb(xg, dg, 0.5, -0.5, 0.5).float().sum().backward()
        n_calls += 1

        for n in lengths:
            p = (rnd(n).abs() + 0.5).to(dtype)
            y = (rnd(n).abs() + 0.5).to(dtype)
            mask = torch.rand(n, generator=g).to(device) < 0.5
            for bins in bin_counts:
                bin_reduce(p, y, 0.5, 3.0 / bins, bins)
                bin_reduce(p, y, 0.5, 3.0 / bins, bins, mask=mask)
                n_calls += 2
            if n > 1:
                bin_reduce(p[1:], y[1:], 0.5, 0.1, 30, mask=mask[1:])  # unaligned
                pn, yn = p.clone(), y.clone()
                pn[0], yn[n // 2] = float("nan"), float("inf")
                bin_reduce(pn, yn, 0.5, 0.1, 30, allow_nonfinite=True)
                try:
                    bin_reduce(pn, yn, 0.5, 0.1, 30)
                    raise SystemExit("bin_reduce accepted NaN with allow_nonfinite=False")
                except ValueError:
                    pass
                n_calls += 3

        n_calls += _vector_cases(device, dtype, lengths, g)
        for n, c, b in fds_cases:
            f = rnd(n, c).to(dtype)
            idx = torch.randint(-1, b + 1, (n,), generator=g).to(device)
            count, mean, var = bin_feature_stats(f, idx, b)
            var[0] = 0  # a zero-variance bin (left unchanged by the calibration)
            fr = f.clone().requires_grad_(True)
            fds_calibrate(fr, idx, mean, var, mean + 0.1, var + 0.5).float().sum().backward()
            fds_calibrate(f[:, 1:], idx, mean[:, 1:], var[:, 1:], mean[:, 1:], var[:, 1:])
            n_calls += 3
        n_calls += _edge_cases(device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n_calls


# bin_reduce_nd grids: (y_min, bin_width, num_bins); the first fits the shared-memory table, the
# last two take the global-atomic path
GRIDS_ND = (((0.5, -1.0), (0.75, 0.5), (4, 3)), ((0.5, -1.0), (0.01, 0.01), (300, 200)),
            ((0.5, -1.0, 0.0), (0.03, 0.02, 0.01), (100, 100, 100)))


def _vector_cases(device, dtype, lengths, g):
    """bin_reduce_nd over each grid: plain, masked, unaligned rows, NaN/inf rows, empty."""
    calls = 0
    for n in lengths:
        for y0, w, nb in GRIDS_ND:
            d = len(nb)
            y = (torch.rand(n, d, generator=g) * 3 - 1).to(device).to(dtype)
            p = (y.float() + torch.randn(n, d, generator=g).to(device)).to(dtype)
            mask = torch.rand(n, generator=g).to(device) < 0.5
            bin_reduce_nd(p, y, y0, w, nb)
            bin_reduce_nd(p, y, y0, w, nb, mask=mask)
            calls += 2
            if n > 1:
                bin_reduce_nd(p[1:], y[1:], y0, w, nb, mask=mask[1:])
                pn = p.clone()
                pn[0, d - 1] = float("nan")
                bin_reduce_nd(pn, y, y0, w, nb, allow_nonfinite=True)
                calls += 2
    e = torch.empty(0, 2, device=device, dtype=dtype)
    bin_reduce_nd(e, e, (0.0, 0.0), (1.0, 1.0), (3, 3))
    return calls + 1


def _edge_cases(device, dtype):
    """Empty inputs, denormal values and inf inputs through every op (no result checks here:
    tests/test_op_edge_cases.py compares them)."""
    tiny = torch.finfo(dtype).tiny / 4          # a subnormal of this dtype
    empty = torch.empty(0, 3, 5, device=device, dtype=dtype)
    perturb(empty, empty, 0.3, -1.0, 1.0)
    bin_reduce(empty, empty, 0.0, 1.0, 5000)
    stats = bin_feature_stats(torch.empty(0, 4, device=device, dtype=dtype),
                              torch.empty(0, dtype=torch.long, device=device), 6)
    fds_calibrate(torch.empty(0, 4, device=device, dtype=dtype),
                  torch.empty(0, dtype=torch.long, device=device), stats[1], stats[2], stats[1],
                  stats[2])
    den = torch.full((3, 33), tiny, device=device, dtype=dtype)
    perturb(den, den, 0.3)
    perturb(den, torch.ones_like(den), 0.3)
    bin_reduce(den, den, 0.0, 1.0, 4)
    count, mean, var = bin_feature_stats(den, torch.zeros(3, dtype=torch.long, device=device), 2)
    fds_calibrate(den, torch.zeros(3, dtype=torch.long, device=device), mean, var, mean, var)
    x = torch.ones(4, 9, device=device, dtype=dtype)
    x[1, 2] = float("inf")
    perturb(x, x, 0.3)
    bin_reduce(x, x.flip(0), 0.0, 1.0, 3, allow_nonfinite=True)
    return 11


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="full", choices=list(SIZES))
    args = ap.parse_args()
    print(f"ops_sanitizer: {run(args.device, args.size)} op calls on {args.device} "
          f"({args.size}) completed")
