"""Calls every ssir_fast op once per awkward case, for compute-sanitizer memcheck on a GPU:

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/ops_sanitizer.py
    python benchmarks/ops_sanitizer.py --device cpu          # the same calls on the CPU

Odd sizes (not multiples of any vector width or block), unaligned views, every dtype, per-channel
bounds and per-sample radii, masks, NaN/inf inputs (counted, and the raising path), the shared-
memory and global-atomic bin_reduce paths, empty and single-sample bins, and the backward passes.
Results are not compared here (the tests do that); the point is that no call reads or writes
out of bounds. Exits non-zero if a call raises where it should not.
"""
import argparse

import torch

from ssir_fast.ops import bin_feature_stats, bin_reduce, fds_calibrate, perturb


def run(device):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    n_calls = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for shape in ((7, 3, 17, 19), (1, 1), (5, 1001), (3, 150529)):
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

        for n in (1, 7, 1001, 100_003):
            p = (rnd(n).abs() + 0.5).to(dtype)
            y = (rnd(n).abs() + 0.5).to(dtype)
            mask = torch.rand(n, generator=g).to(device) < 0.5
            for bins in (1, 93, 5000):
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

        for n, c, b in ((1, 3, 4), (257, 67, 10), (1000, 130, 100)):
            f = rnd(n, c).to(dtype)
            idx = torch.randint(-1, b + 1, (n,), generator=g).to(device)
            count, mean, var = bin_feature_stats(f, idx, b)
            var[0] = 0  # a zero-variance bin (left unchanged by the calibration)
            fr = f.clone().requires_grad_(True)
            fds_calibrate(fr, idx, mean, var, mean + 0.1, var + 0.5).float().sum().backward()
            fds_calibrate(f[:, 1:], idx, mean[:, 1:], var[:, 1:], mean[:, 1:], var[:, 1:])
            n_calls += 3
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n_calls


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    print(f"ops_sanitizer: {run(args.device)} op calls on {args.device} completed")
