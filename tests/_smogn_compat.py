"""Run the PyPI `smogn` package (0.1.2) under NumPy 2 for comparisons: it calls
np.quantile(interpolation=...) (removed) and int()/float() on 1-element arrays (now errors).
We swap the `np` its modules see for a shim; its algorithm is untouched, except that
np.ndarray(shape) (uninitialised memory) returns zeros: the package reads the synthetic target
slot before writing it (its distance loop ends on the target column), so without this its output
depends on garbage memory and is sometimes NaN ("oops! synthetic data contains missing values")."""
import sys, types, numpy as np

class _One(np.ndarray):
    def __int__(self):
        return int(self.reshape(-1)[0])

    def __float__(self):
        return float(self.reshape(-1)[0])

def _choice(*args, **kw):
    out = np.random.choice(*args, **kw)
    if isinstance(out, np.ndarray) and out.shape == (1,):
        return out.view(_One)
    return out

def _normal(*args, **kw):
    out = np.random.normal(*args, **kw)
    if isinstance(out, np.ndarray) and out.shape == (1,):
        return out.view(_One)
    return out

def _shim():
    ns = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    ns.quantile = lambda a, q, interpolation="linear", **kw: np.quantile(a, q, method=interpolation, **kw)
    rnd = types.SimpleNamespace(**{k: getattr(np.random, k) for k in dir(np.random) if not k.startswith("__")})
    rnd.choice = _choice
    rnd.normal = _normal
    ns.random = rnd
    ns.ndarray = lambda shape, *a, **kw: np.zeros(shape)
    return ns

def patch_smogn():
    import smogn  # noqa
    for m in ("smogn.box_plot_stats", "smogn.over_sampling", "smogn.smoter"):
        sys.modules[m].np = _shim()
