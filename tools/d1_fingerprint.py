"""SHA-256 fingerprint of the scalar-bin (D = 1) results: re-weighting (INV / SQINV, every LDS
kernel, both paddings, the depth recipe), BinnedMetrics (group metrics and the per-bin table) and
FDS (statistics and calibration), from fixed inputs. Run it under two trees to confirm that a
change left the D = 1 numbers identical to the last bit:

    for d in /path/to/old /path/to/new; do (cd /tmp && PYTHONPATH=$d python /path/to/new/tools/d1_fingerprint.py); done

(`tools/ab_cpu_kernels.sh` builds another commit the same way for the timings.)"""
import hashlib
import warnings

import numpy as np
import torch

from ssir_fast.fds import FDS
from ssir_fast.imbalance import DIR_RECIPES, LabelBins, bin_weights, sample_weights
from ssir_fast.metrics import BinnedMetrics

digest = hashlib.sha256()


def add(x):
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    digest.update(np.ascontiguousarray(a).tobytes())


warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
ages = np.clip(rng.gamma(6.0, 6.0, 20000), 0, 140)
bins = LabelBins.dir_age(121)
for reweight in ("inverse", "sqrt_inv"):
    for lds in (False, True):
        for kernel in ("gaussian", "triang", "laplace"):
            add(bin_weights(ages, bins, reweight, lds, kernel, 5, 2.0))
            add(bin_weights(ages, bins, reweight, lds, kernel, 9, 1.0, lds_padding="reflect",
                            inv_clip=None))
depth = (0.7 + 9.3 * rng.random((4, 48, 64)) ** 3).astype(np.float32)
add(sample_weights(torch.from_numpy(depth), LabelBins(0.7, 0.1, 93), "inverse", True,
                   **DIR_RECIPES["depth"]))

m = BinnedMetrics(bins=bins, train_labels=ages[:5000])
m.update(torch.tensor(ages[:3000] + rng.normal(0, 3, 3000)), torch.tensor(ages[:3000]))
res = m.compute()
for group in ("all", "many", "medium", "few"):
    for key in sorted(res[group]):
        add(np.float64(res[group][key]))
add(m.table)

torch.manual_seed(0)
fds = FDS(16, bins)
y, z = torch.tensor(ages[:2000], dtype=torch.float32), torch.randn(2000, 16)
fds.update(z, y)
fds.end_epoch(0)
fds.update(z * 1.1, y)
fds.end_epoch(1)
for name in ("last_mean", "last_var", "smoothed_mean", "smoothed_var"):
    add(getattr(fds, name))
fds.train()
add(fds(z, y, epoch=2))
print(digest.hexdigest())
