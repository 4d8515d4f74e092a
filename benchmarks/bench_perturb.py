"""perturb: the fused op vs eager PyTorch vs torch.compile, and GB/s vs a copy-bandwidth probe.

    pytest benchmarks/bench_perturb.py --benchmark-only          # CPU (and CUDA when present)

Minimum traffic of the op is 4 tensor passes (g twice, x once, out once); GB/s below counts those
bytes, and the copy probe counts read + write of one copy of the same size, both in this run.
On a GPU, test_perturb_kinds_speed also covers every bound kind (none, scalar, per-channel [3],
per-sample epsilon) and dtype (fp32, bf16, fp16) at 256x3x224x224 (issue 10's goals).
"""

import pytest
import torch

from conftest import copy_bandwidth, device_name, median_time, record, sync
from ssir_fast.ops import perturb
from ssir_fast.ops.perturb import perturb_torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = {"image_256x3x224x224": (256, 3, 224, 224), "features_4096x128": (4096, 128)}


def _compiled():
    try:
        fn = torch.compile(perturb_torch, dynamic=False)
        return fn
    except Exception:  # pragma: no cover - platform without a working compiler
        return None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_perturb_speed(benchmark, device, name):
    shape = SHAPES[name]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    g = torch.randn(shape, device=device)
    lo = torch.tensor(-1.0, device=device)
    hi = torch.tensor(1.0, device=device)
    out = torch.empty_like(x)
    ours = lambda: perturb(x, g, 1e-3, lo, hi, out=out)  # noqa: E731
    eager = lambda: perturb_torch(x, g, 1e-3, lo, hi)  # noqa: E731
    t_ours = median_time(ours, device)
    t_eager = median_time(eager, device)
    compiled = _compiled()
    t_compiled = None
    if compiled is not None:
        try:
            t_compiled = median_time(lambda: compiled(x, g, 1e-3, lo, hi), device, warmup=3)
        except Exception as e:  # inductor may be unavailable (no C++ compiler for it)
            print(f"torch.compile baseline unavailable: {e}")
    nbytes = x.numel() * x.element_size()
    copy_gbps = copy_bandwidth(nbytes, device)
    gbps = 4 * nbytes / t_ours / 1e9
    fields = dict(device=device_name(device), shape=list(shape), ours_ms=t_ours * 1e3,
                  eager_ms=t_eager * 1e3, speedup_vs_eager=t_eager / t_ours,
                  compiled_ms=None if t_compiled is None else t_compiled * 1e3,
                  speedup_vs_compiled=None if t_compiled is None else t_compiled / t_ours,
                  gbps=gbps, copy_gbps=copy_gbps, fraction_of_copy=gbps / copy_gbps)
    record(f"perturb/{name}/{device}", **fields)
    benchmark.extra_info.update(fields)
    benchmark.pedantic(ours, rounds=5, iterations=1, warmup_rounds=1,
                       setup=lambda: sync(device))


CUDA = ["cuda"] if torch.cuda.is_available() else []
BOUNDS = ["none", "scalar", "per_channel", "per_sample_eps"]


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("bounds", BOUNDS)
def test_perturb_kinds_speed(benchmark, device, dtype, bounds):
    shape = (256, 3, 224, 224)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    x = torch.randn(shape, device=device).to(dt)
    g = torch.randn(shape, device=device).to(dt)
    out = torch.empty_like(x)
    eps = 1e-3
    lo = hi = None
    if bounds == "scalar":
        lo, hi = torch.tensor(-1.0, device=device), torch.tensor(1.0, device=device)
    elif bounds in ("per_channel", "per_sample_eps"):
        lo = torch.tensor([-2.1, -2.0, -1.8], device=device)
        hi = torch.tensor([2.2, 2.4, 2.6], device=device)
    if bounds == "per_sample_eps":
        eps = torch.rand(shape[0], device=device) * 1e-3
    ours = lambda: perturb(x, g, eps, lo, hi, out=out)  # noqa: E731
    eps_t = eps if isinstance(eps, float) else None
    eager = lambda: perturb_torch(x, g, 1.0 if eps_t is None else eps_t, lo, hi,  # noqa: E731
                                  None if eps_t is not None else eps)
    t_ours = median_time(ours, device)
    t_eager = median_time(eager, device)
    compiled, t_compiled = _compiled(), None
    if compiled is not None:
        try:
            t_compiled = median_time(lambda: compiled(x, g, 1.0 if eps_t is None else eps_t, lo, hi,
                                                      None if eps_t is not None else eps),
                                     device, warmup=3)
        except Exception as e:
            print(f"torch.compile baseline unavailable: {e}")
    nbytes = x.numel() * x.element_size()
    copy_gbps = copy_bandwidth(nbytes, device)
    gbps = 4 * nbytes / t_ours / 1e9
    fields = dict(device=device_name(device), shape=list(shape), dtype=dtype, bounds=bounds,
                  ours_ms=t_ours * 1e3, eager_ms=t_eager * 1e3, speedup_vs_eager=t_eager / t_ours,
                  compiled_ms=None if t_compiled is None else t_compiled * 1e3,
                  speedup_vs_compiled=None if t_compiled is None else t_compiled / t_ours,
                  gbps=gbps, copy_gbps=copy_gbps, fraction_of_copy=gbps / copy_gbps)
    record(f"perturb/{dtype}/{bounds}/{device}", **fields)
    benchmark.extra_info.update(fields)
    benchmark.pedantic(ours, rounds=3, iterations=1, warmup_rounds=1, setup=lambda: sync(device))
