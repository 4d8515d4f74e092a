"""The one benchmark harness: every benchmark file times its cases through `Bench`.

A case is timed once, by this harness: `repeats` calls after `warmup` calls, each call timed with
CUDA events on a GPU (kernel time, no host round trip in the figure) and with `perf_counter` around a
synchronised call on the CPU. The result of a case is a `Timing` with quantiles and the peak memory
of the timed calls (CUDA allocator peak on a GPU, resident-set growth on the CPU).

Modes say what one call is:
- ``forward``: `fn()`;
- ``backward``: the backward of `fn()`'s output only (the forward, and the ones tensor seeding the
  backward, are made untimed before each call);
- ``full``: forward and backward.
A backward goes into every leaf that needs a gradient (``.backward()``, gradients accumulate), or,
with ``grad_inputs=(t1, t2, ...)``, only into those tensors (``torch.autograd.grad``: nothing
accumulates, and no other gradient is formed, e.g. an input-only backward through a model).

Every case becomes one row of ``benchmarks/results.jsonl`` (one schema, below), and the first case
of a `Bench` (the one under test) is handed to pytest-benchmark, so ``--benchmark-only`` reports it
with the same samples instead of timing it a second time. BENCHMARKS.md tables are made from the
rows (``python benchmarks/harness.py results.jsonl`` prints them as Markdown).

Row schema: bench, case, mode, device, n, median_ms, q25_ms, q75_ms, min_ms, max_ms, peak_mem_mb,
torch, time, plus the bench's own fields (sizes, bytes, ratios against the baseline cases).
"""
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

MODES = ("forward", "backward", "full")
RESULTS = os.environ.get("SSIR_BENCH_RESULTS",
                         os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl"))


@dataclasses.dataclass
class Timing:
    """Seconds of each timed call, and the peak memory of the timed calls in bytes."""
    samples: list
    peak_mem: int = 0

    def quantile(self, q):
        """Linear interpolation between order statistics (numpy's default rule)."""
        s = sorted(self.samples)
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    @property
    def median(self):
        return statistics.median(self.samples)

    @property
    def min(self):
        return min(self.samples)

    def row(self):
        ms = 1e3
        return dict(n=len(self.samples), median_ms=self.median * ms, q25_ms=self.quantile(0.25) * ms,
                    q75_ms=self.quantile(0.75) * ms, min_ms=self.min * ms,
                    max_ms=max(self.samples) * ms, peak_mem_mb=self.peak_mem / 2**20)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device="cpu"):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def _rss_bytes():
    # ru_maxrss is the process's peak resident set (KiB on Linux); its growth over the timed calls
    # is the memory they needed beyond what the process had already touched.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _differentiable(out):
    """The tensor to differentiate: `out`, or the first tensor of a tuple/structure that needs a
    gradient."""
    if torch.is_tensor(out):
        return out
    return next(o for o in (out if isinstance(out, (tuple, list)) else vars(out).values())
                if torch.is_tensor(o) and o.requires_grad)


def _backward(out, seed=None, grad_inputs=None):
    """Backward of `out` (see _differentiable) with `seed` (ones by default) as its gradient, into
    the leaves (.backward()) or, given grad_inputs, only into those (torch.autograd.grad)."""
    out = _differentiable(out)
    seed = torch.ones_like(out) if seed is None else seed
    if grad_inputs is None:
        out.backward(seed)
    else:
        torch.autograd.grad(out, grad_inputs, seed)


def measure(fn, device="cpu", mode="forward", repeats=10, warmup=2, grad_inputs=None):
    """Time `fn` once per call as `mode` says; returns a Timing (see the module docstring)."""
    return measure_interleaved({"fn": fn}, device, mode, repeats, warmup, grad_inputs)["fn"]


def measure_interleaved(fns, device="cpu", mode="forward", repeats=10, warmup=2,
                        grad_inputs=None):
    """Time several functions round robin (call 1 of each, then call 2 of each, ...), so that a
    shared machine's load falls on all of them alike; returns {name: Timing}. The peak memory of
    each is the growth over the calls so far (on the CPU the process peak can only grow)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if grad_inputs is not None and mode == "forward":
        raise ValueError("grad_inputs needs mode 'backward' or 'full'")
    cuda = torch.device(device).type == "cuda"

    def call(fn, timer):
        if mode == "forward":
            with timer:
                fn()
        elif mode == "full":
            with timer:
                _backward(fn(), grad_inputs=grad_inputs)
        else:
            out = fn()
            seed = torch.ones_like(_differentiable(out))
            sync(device)
            with timer:
                _backward(out, seed, grad_inputs)

    for _ in range(warmup):
        for fn in fns.values():
            call(fn, _NullTimer())
    sync(device)
    samples = {name: [] for name in fns}
    peaks = dict.fromkeys(fns, 0)
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                base = _rss_bytes()
            timer = _CudaTimer() if cuda else _HostTimer(device)
            call(fn, timer)
            samples[name].append(timer.seconds())
            peak = (torch.cuda.max_memory_allocated(device) if cuda else _rss_bytes()) - base
            peaks[name] = max(peaks[name], int(peak))
    return {name: Timing(samples[name], peaks[name]) for name in fns}


class _NullTimer:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _HostTimer:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.dt = time.perf_counter() - self.t0
        return False

    def seconds(self):
        return self.dt


class _CudaTimer:
    def __enter__(self):
        self.start, self.end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        self.start.record()
        return self

    def __exit__(self, *exc):
        self.end.record()
        return False

    def seconds(self):
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3


def copy_bandwidth(nbytes, device="cpu", repeats=5):
    """GB/s of dst.copy_(src) for a buffer of `nbytes`: bytes read + bytes written per second."""
    src = torch.empty(max(1, nbytes // 4), dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, repeats=repeats, warmup=1)
    return 2 * src.numel() * 4 / t.min / 1e9


def record(row, **fields):
    """Append one row to results.jsonl (and print it): `record({"bench": ..., ...})`, or
    `record(bench_name, **fields)` (the form of the former conftest helper)."""
    row = {"bench": row, **fields} if isinstance(row, str) else {**row, **fields}
    row = {**row, "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return row


class Bench:
    """The cases of one benchmark, each timed once, written as rows of one schema.

        b = Bench(benchmark, "perturb/image", device)
        t = b.case("ssir_fast", fn)                    # the first case: also reported to pytest-benchmark
        b.case("eager", eager_fn)                      # baselines measured in the same run
        b.finish(speedup_vs_eager=b["eager"].median / t.median)
    """

    def __init__(self, benchmark, name, device="cpu", repeats=10, warmup=2, **fields):
        self.benchmark, self.name, self.device = benchmark, name, str(device)
        self.repeats, self.warmup = repeats, warmup
        self.fields = dict(device_name=device_name(device), **fields)
        self.timings, self.modes = {}, {}

    def __getitem__(self, case):
        return self.timings[case]

    def _new(self, cases):
        for case in cases:
            if case in self.timings:
                raise ValueError(f"case {case!r} of {self.name} is already timed")

    def case(self, case, fn, mode="forward", repeats=None, warmup=None, grad_inputs=None):
        self._new([case])
        t = measure(fn, self.device, mode, repeats or self.repeats,
                    self.warmup if warmup is None else warmup, grad_inputs)
        if not self.timings and self.benchmark is not None:
            _report_to_pytest_benchmark(self.benchmark, t)
        self.timings[case], self.modes[case] = t, mode
        return t

    def cases(self, fns, mode="forward", repeats=None, warmup=None, grad_inputs=None):
        """Several cases timed round robin (see measure_interleaved); the first is the one under
        test when this is the bench's first call."""
        self._new(fns)
        ts = measure_interleaved(fns, self.device, mode, repeats or self.repeats,
                                 self.warmup if warmup is None else warmup, grad_inputs)
        if not self.timings and self.benchmark is not None:
            _report_to_pytest_benchmark(self.benchmark, next(iter(ts.values())))
        for case, t in ts.items():
            self.timings[case], self.modes[case] = t, mode
        return ts

    def finish(self, **fields):
        """Write one row per case; `fields` (ratios, GB/s, ...) go into every row of this bench."""
        self.fields.update(fields)
        if self.benchmark is not None:
            self.benchmark.extra_info.update(self.fields)
        return [record(dict(bench=self.name, case=case, mode=self.modes[case], device=self.device,
                            **t.row(), **self.fields))
                for case, t in self.timings.items()]


def _report_to_pytest_benchmark(benchmark, timing):
    # pytest-benchmark has no public call for samples timed elsewhere; its stats object takes
    # them one by one, exactly as its own timer would hand them over. Without that hook
    # (another version), the figures still reach results.jsonl and extra_info.
    make = getattr(benchmark, "_make_stats", None)
    if make is None or getattr(benchmark, "disabled", False):
        return
    stats = make(1)
    for s in timing.samples:
        stats.update(s)
    benchmark._mode = "ssir_fast harness"


def markdown(path=RESULTS, bench_prefix=""):
    """A Markdown table of the rows in `path` (the newest row per bench/case/device wins)."""
    rows = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("bench", "").startswith(bench_prefix) and "median_ms" in r:
                rows[(r["bench"], r["case"], r.get("device"), r.get("mode"))] = r
    lines = ["| bench | case | mode | device | median ms | q25-q75 ms | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for (bench, case, _, mode), r in sorted(rows.items()):
        lines.append(f"| {bench} | {case} | {mode} | {r.get('device_name', r.get('device'))} | "
                     f"{r['median_ms']:.3f} | {r['q25_ms']:.3f}-{r['q75_ms']:.3f} | "
                     f"{r['peak_mem_mb']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python benchmarks/harness.py [results.jsonl] [bench prefix]
    print(markdown(*(sys.argv[1:3] or [RESULTS])))
