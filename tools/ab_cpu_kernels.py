"""Times the CPU perturb and bin_reduce cases of benchmarks/bench_perturb.py and
benchmarks/bench_bin_reduce.py (the op alone) with whatever ssir_fast is first on sys.path, and
the scalar (D = 1) Python paths around them: BinnedMetrics update + compute, SQINV + LDS
bin_weights, FDS end_epoch; prints JSON {case: fastest seconds}. tools/ab_cpu_kernels.sh runs it
for two builds in turn.

AB_THREADS (default 2): torch threads; AB_CLOCK=cpu: process CPU time instead of the wall clock."""
import json, os, time, torch
torch.set_num_threads(int(os.environ.get('AB_THREADS', '2')))
import ssir_fast
CLOCK = time.process_time if os.environ.get('AB_CLOCK') == 'cpu' else time.perf_counter
from ssir_fast.ops import perturb, bin_reduce
assert ssir_fast.HAS_EXTENSION
torch.manual_seed(0)
def fastest(fn, reps):
    fn(); ts = []
    for _ in range(reps):
        t = CLOCK(); fn(); ts.append(CLOCK() - t)
    return min(ts)  # the least-disturbed run: on a shared machine the median mostly measures load
res = {}
for name, shape, reps in (("perturb/image_64x3x224x224", (64, 3, 224, 224), 15),
                          ("perturb/features_4096x128", (4096, 128), 200)):
    x, g = torch.randn(shape), torch.randn(shape)
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    out = torch.empty_like(x)
    res[name] = fastest(lambda: perturb(x, g, 1e-3, lo, hi, out=out), reps)
n = 10_000_000
y = torch.round(torch.rand(n) ** 2 * 100); p = y + 6 * torch.randn(n)
res["bin_reduce/age_1e7"] = fastest(lambda: bin_reduce(p, y, 0.0, 1.0, 121), 7)
H, W = 480, 640
ramp = torch.linspace(0.0, 1.0, H).reshape(1, 1, H, 1)
off = torch.rand(16, 1, 1, 1)
yd = (0.7 + 9.29 * ((ramp * 0.6 + off * 0.4) ** 1.5)).expand(16, 1, H, W).contiguous()
pd = yd * (1 + 0.1 * torch.randn(yd.shape))
res["bin_reduce/depth_16x480x640"] = fastest(lambda: bin_reduce(pd, yd, 0.7, 0.1, 93), 9)
# the scalar Python paths (APIs unchanged since the stable-ABI port)
import numpy as np
from ssir_fast.imbalance import LabelBins, bin_weights
from ssir_fast.metrics import BinnedMetrics
from ssir_fast.fds import FDS
bins = LabelBins(0.0, 1.0, 121)
ages = np.clip(np.round(np.random.default_rng(0).gamma(6.0, 6.0, 1_000_000)), 0, 130)
counts = bins.counts(ages[:12_000])   # a long-tailed training set: all three shot groups
res["metrics/age_1e7_update_compute"] = fastest(
    lambda: BinnedMetrics(bins=bins, train_counts=counts).update(p, y).compute(), 7)
res["lds/bin_weights_age_1e6"] = fastest(lambda: bin_weights(ages, bins, "sqrt_inv", True), 9)
fds = FDS(512, bins)
fy, ff = y[:4096], torch.randn(4096, 512)
def fds_epoch():
    fds.update(ff, fy)
    fds.end_epoch(0)
res["fds/update_end_epoch_4096x512"] = fastest(fds_epoch, 15)
print(json.dumps(res))
