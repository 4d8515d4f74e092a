"""The paper's two-Gaussian motivation data (paper Section 3 / Appendix 8.5).

    x1 ~ N(mu1 * 1_d, sigma2 * I),  x2 ~ N(mu2 * 1_d, sigma2 * I),  y = w^T x

with mu1 = 10, mu2 = -10, sigma2 = 25 (variance), d = 100 and w ~ N(0, I_d / d) drawn once from
the seed. Training: N1 = ``n_major`` samples of component 1 and N2 = round(N1 / R) of component 2
(imbalance ratio R = N1 / N2); val and test are balanced (``n_test`` per component each).
"""
import numpy as np

from .tabular import TabularDataset, TabularSplit

__all__ = ["two_gaussians"]


def two_gaussians(ratio=10, d=100, n_major=1000, n_test=500, mu=(10.0, -10.0), var=25.0, seed=0,
                  num_bins=100, normalize=False):
    """The two-Gaussian data set with imbalance ratio ``ratio`` (R in {1, 2, 4, 6, 8, 10, 100})."""
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1 (N1 / N2), got {ratio}")
    if d < 1 or n_major < 1 or n_test < 1:
        raise ValueError(f"d, n_major and n_test must be >= 1, got {d}, {n_major}, {n_test}")
    if not (np.isfinite(var) and var > 0):
        raise ValueError(f"var (the variance of each Gaussian) must be > 0, got {var}")
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0 / np.sqrt(d), size=d)
    sd = float(np.sqrt(var))

    def draw(n1, n2):
        x = np.concatenate([rng.normal(mu[0], sd, (n1, d)), rng.normal(mu[1], sd, (n2, d))])
        comp = np.concatenate([np.zeros(n1, np.int64), np.ones(n2, np.int64)])
        return x.astype(np.float32), (x @ w).astype(np.float32), comp

    n_minor = max(1, int(round(n_major / ratio)))
    splits = {}
    for name, (n1, n2) in (("train", (n_major, n_minor)), ("val", (n_test, n_test)),
                           ("test", (n_test, n_test))):
        x, y, comp = draw(n1, n2)
        splits[name] = TabularSplit(name, x, y)
        splits[name].component = comp
    ds = TabularDataset(f"two_gaussians(R={ratio})", splits, num_bins=num_bins, normalize=normalize)
    ds.w = w.astype(np.float32)
    ds.ratio = ratio
    return ds
