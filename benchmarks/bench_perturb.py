"""perturb: the fused op vs eager PyTorch vs torch.compile, and GB/s vs a copy-bandwidth probe;
its backward (w.r.t. x and g) vs autograd through the eager version.

    pytest benchmarks/bench_perturb.py --benchmark-only          # CPU (and CUDA when present)

Every case is timed once, round robin, through `harness.Bench` (one row per case in
benchmarks/results.jsonl; the op's own case is the one pytest-benchmark reports). Minimum traffic
of the op is 4 tensor passes (g twice, x once, out once); GB/s below counts those bytes, and the
copy probe counts read + write of one copy of the same size, both in this run. The backward's
minimum traffic is 6 passes (g twice: the norm, then the projection and update; the incoming
gradient and x once; the gradients of x and g written once). On a GPU, test_perturb_kinds_speed
also covers every bound kind (none, scalar, per-channel [3], per-sample epsilon) and dtype (fp32,
bf16, fp16) at 256x3x224x224 (the GPU goals in BENCHMARKS.md).

SSIR_BENCH_PERTURB_BATCH (default 256) sets the batch of the image shape, for a short smoke run;
SSIR_BENCH_COMPILE=0 leaves out the torch.compile baseline (and its compile time per case).
"""
import os

import pytest
import torch

from harness import Bench, copy_bandwidth
from ssir_fast.ops import perturb
from ssir_fast.ops.perturb import perturb_torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMAGE_N = int(os.environ.get("SSIR_BENCH_PERTURB_BATCH", "256"))
SHAPES = {f"image_{IMAGE_N}x3x224x224": (IMAGE_N, 3, 224, 224), "features_4096x128": (4096, 128)}


def _compiled():
    if os.environ.get("SSIR_BENCH_COMPILE", "1") == "0":   # skip the baseline's compile time
        return None
    try:
        fn = torch.compile(perturb_torch, dynamic=False)
        return fn
    except Exception:  # pragma: no cover - platform without a working compiler
        return None


def _time_forward(bench, ours, eager, compiled_call):
    """ssir_fast, eager and (when inductor works) compiled, round robin; returns the medians of
    eager and compiled (None when unavailable)."""
    cases = {"ssir_fast": ours, "eager": eager}
    compiled_ok = False
    if compiled_call is not None:
        try:
            compiled_call()  # compile outside the timed calls; inductor may be unavailable
            cases["compiled"] = compiled_call
            compiled_ok = True
        except Exception as e:  # no C++ compiler for inductor, ...
            print(f"torch.compile baseline unavailable: {e}")
    ts = bench.cases(cases, warmup=3 if compiled_ok else 2)
    return ts["eager"].median, (ts["compiled"].median if compiled_ok else None)


def _figures(bench, nbytes, passes, copy_gbps, t_eager, t_compiled):
    t_ours = bench["ssir_fast"].median
    gbps = passes * nbytes / t_ours / 1e9
    return dict(ours_ms=t_ours * 1e3, eager_ms=t_eager * 1e3, speedup_vs_eager=t_eager / t_ours,
                compiled_ms=None if t_compiled is None else t_compiled * 1e3,
                speedup_vs_compiled=None if t_compiled is None else t_compiled / t_ours,
                gbps=gbps, copy_gbps=copy_gbps, fraction_of_copy=gbps / copy_gbps)


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
    compiled = _compiled()
    b = Bench(benchmark, f"perturb/{name}/{device}", device, shape=list(shape))
    t_eager, t_compiled = _time_forward(
        b, lambda: perturb(x, g, 1e-3, lo, hi, out=out), lambda: perturb_torch(x, g, 1e-3, lo, hi),
        None if compiled is None else (lambda: compiled(x, g, 1e-3, lo, hi)))
    nbytes = x.numel() * x.element_size()
    b.finish(**_figures(b, nbytes, 4, copy_bandwidth(nbytes, device), t_eager, t_compiled))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_perturb_backward_speed(benchmark, device, name):
    """The op's backward w.r.t. x and g (clip bounds +-1, so the clip mask is formed) vs autograd
    through perturb_torch; "backward" times the backward alone, "full" forward + backward."""
    shape = SHAPES[name]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, requires_grad=True)
    g = torch.randn(shape, device=device, requires_grad=True)
    lo = torch.tensor(-1.0, device=device)
    hi = torch.tensor(1.0, device=device)
    ours = lambda: perturb(x, g, 1e-3, lo, hi)  # noqa: E731
    eager = lambda: perturb_torch(x, g, 1e-3, lo, hi)  # noqa: E731
    b = Bench(benchmark, f"perturb_backward/{name}/{device}", device, shape=list(shape))
    bwd = b.cases({"ssir_fast": ours, "eager": eager}, mode="backward", grad_inputs=(x, g))
    full = b.cases({"ssir_fast full": ours, "eager full": eager}, mode="full", grad_inputs=(x, g))
    nbytes = x.numel() * x.element_size()
    figures = _figures(b, nbytes, 6, copy_bandwidth(nbytes, device), bwd["eager"].median, None)
    del figures["compiled_ms"], figures["speedup_vs_compiled"]
    b.finish(**figures, full_ours_ms=full["ssir_fast full"].median * 1e3,
             full_eager_ms=full["eager full"].median * 1e3,
             full_speedup_vs_eager=full["eager full"].median / full["ssir_fast full"].median)


CUDA = ["cuda"] if torch.cuda.is_available() else []
BOUNDS = ["none", "scalar", "per_channel", "per_sample_eps"]


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("bounds", BOUNDS)
def test_perturb_kinds_speed(benchmark, device, dtype, bounds):
    shape = (IMAGE_N, 3, 224, 224)
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
    eps_t = eps if isinstance(eps, float) else None
    args = (x, g, 1.0 if eps_t is None else eps_t, lo, hi, None if eps_t is not None else eps)
    compiled = _compiled()
    b = Bench(benchmark, f"perturb/{dtype}/{bounds}/{device}", device, shape=list(shape),
              dtype=dtype, bounds=bounds)
    t_eager, t_compiled = _time_forward(
        b, lambda: perturb(x, g, eps, lo, hi, out=out), lambda: perturb_torch(*args),
        None if compiled is None else (lambda: compiled(*args)))
    nbytes = x.numel() * x.element_size()
    b.finish(**_figures(b, nbytes, 4, copy_bandwidth(nbytes, device), t_eager, t_compiled))
