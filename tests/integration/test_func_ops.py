"""torch.func over every op against its pure-PyTorch path (and, for the tangents, a central
finite difference of the op itself). perturb and fds_calibrate are differentiable: grad,
jacrev, jvp and vmap give the pure path's numbers; bin_reduce and bin_feature_stats are
statistics: grad/jacrev/jvp raise, vmap equals one call per sample."""
import pytest
import torch
from torch.func import grad, jacrev, jvp, vmap

from ssir_fast import ops
from ssir_fast.ops.bin_feature_stats import bin_feature_stats_torch
from ssir_fast.ops.bin_reduce import bin_reduce_torch
from ssir_fast.ops.fds_calibrate import fds_calibrate_torch
from ssir_fast.ops.perturb import clip_bound, perturb_torch

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


BOUNDS = {"none": (None, None), "float": (-0.8, 0.9),
          "channels": (torch.tensor([-0.5, -1.0, -0.2], dtype=D),
                       torch.tensor([0.6, 1.0, 0.4], dtype=D))}


@pytest.mark.parametrize("bounds", list(BOUNDS))
@pytest.mark.parametrize("per_sample_eps", [False, True])
def test_perturb(bounds, per_sample_eps):
    g0 = _gen(1)
    x, g, v = (torch.randn(4, 3, 5, generator=g0, dtype=D) for _ in range(3))
    lo, hi = BOUNDS[bounds]
    eps = torch.rand(4, generator=g0, dtype=D) + 0.2 if per_sample_eps else 0.6
    op = lambda x, g: ops.perturb(x, g, eps, lo, hi)  # noqa: E731
    ref = lambda x, g: perturb_torch(x, g, 1.0 if per_sample_eps else eps,  # noqa: E731
                                     clip_bound(lo, "lo"), clip_bound(hi, "hi"),
                                     eps if per_sample_eps else None)
    loss = lambda f: (lambda *a: (f(*a) ** 2).sum())  # noqa: E731
    for argnums in (0, 1):
        torch.testing.assert_close(grad(loss(op), argnums)(x, g), grad(loss(ref), argnums)(x, g))
        torch.testing.assert_close(jacrev(op, argnums)(x, g), jacrev(ref, argnums)(x, g))
    for argnums in (0, 1):
        a = [x, g]
        move = lambda t: op(*[t if i == argnums else a[i] for i in range(2)])  # noqa: E731
        tangent = jvp(move, (a[argnums],), (v,))[1]
        torch.testing.assert_close(tangent, jvp(lambda t: ref(*[t if i == argnums else a[i]
                                                                for i in range(2)]),
                                                (a[argnums],), (v,))[1])
        h = 1e-6
        fd = (move(a[argnums] + h * v) - move(a[argnums] - h * v)) / (2 * h)
        torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-6)
    # vmap over a leading dimension of independent batches: one kernel call per batch
    xs, gs = torch.randn(2, 4, 3, 5, generator=g0, dtype=D), torch.randn(2, 4, 3, 5,
                                                                         generator=g0, dtype=D)
    torch.testing.assert_close(vmap(op)(xs, gs), torch.stack([op(a, b) for a, b in zip(xs, gs)]))
    torch.testing.assert_close(vmap(grad(loss(op), 1))(xs, gs),
                               torch.stack([grad(loss(ref), 1)(a, b) for a, b in zip(xs, gs)]))


def _fds_args(seed=0, dtype=D):
    g = _gen(seed)
    m, sm = torch.randn(5, 3, generator=g, dtype=dtype), torch.randn(5, 3, generator=g, dtype=dtype)
    v, sv = (torch.rand(5, 3, generator=g, dtype=dtype) + 0.1 for _ in range(2))
    v[2, 1] = 0.0                                     # a dimension left unchanged
    return torch.tensor([0, 1, 2, 4, 7, -1]), m, v, sm, sv


def test_fds_calibrate():
    idx, m, v, sm, sv = _fds_args()
    z, t = (torch.randn(6, 3, generator=_gen(2), dtype=D) for _ in range(2))
    op = lambda z: ops.fds_calibrate(z, idx, m, v, sm, sv, 0.1, 10.0)  # noqa: E731
    ref = lambda z: fds_calibrate_torch(z, idx, m, v, sm, sv, 0.1, 10.0)  # noqa: E731
    torch.testing.assert_close(grad(lambda z: op(z).pow(2).sum())(z),
                               grad(lambda z: ref(z).pow(2).sum())(z))
    torch.testing.assert_close(jacrev(op)(z), jacrev(ref)(z))
    tangent = jvp(op, (z,), (t,))[1]
    torch.testing.assert_close(tangent, jvp(ref, (z,), (t,))[1])
    torch.testing.assert_close(tangent, (op(z + 1e-6 * t) - op(z - 1e-6 * t)) / 2e-6)
    zs = torch.randn(3, 6, 3, generator=_gen(3), dtype=D)
    torch.testing.assert_close(vmap(op)(zs), torch.stack([ref(a) for a in zs]))


def test_bin_reduce():
    g = _gen(4)
    p = torch.randn(2, 16, generator=g, dtype=D) * 3 + 5
    y = torch.rand(2, 16, generator=g, dtype=D) * 10
    op = lambda p, y: ops.bin_reduce(p, y, 0.0, 1.0, 10)  # noqa: E731
    torch.testing.assert_close(vmap(op)(p, y), torch.stack([bin_reduce_torch(a, b, 0.0, 1.0, 10)
                                                            for a, b in zip(p, y)]))
    for transform in (lambda f: grad(lambda p: f(p, y[0])[:, 1].sum())(p[0]),
                      lambda f: jacrev(lambda p: f(p, y[0]))(p[0]),
                      lambda f: jvp(lambda p: f(p, y[0]), (p[0],), (p[0],))):
        with pytest.raises(RuntimeError, match="bin_reduce is not differentiable"):
            transform(op)


def test_bin_feature_stats():
    g = _gen(5)
    f = torch.randn(2, 12, 3, generator=g, dtype=D)
    idx = torch.tensor([0, 1, 1, 2, 4, -1, 3, 3, 0, 2, 9, 1])
    op = lambda f: ops.bin_feature_stats(f, idx, 5)  # noqa: E731
    for got, want in zip(vmap(op)(f), zip(*[bin_feature_stats_torch(a, idx, 5) for a in f])):
        torch.testing.assert_close(got, torch.stack(want))
    for transform in (lambda: grad(lambda f: op(f)[1].sum())(f[0]),
                      lambda: jacrev(lambda f: op(f)[1])(f[0]),
                      lambda: jvp(lambda f: op(f)[2], (f[0],), (f[0],))):
        with pytest.raises(RuntimeError, match="bin_feature_stats is not differentiable"):
            transform()
