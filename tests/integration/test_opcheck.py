"""torch.library.opcheck (schema, autograd registration, fake tensor, AOT dispatch with dynamic
shapes) over every op, every dtype, and empty, 1-D and non-contiguous inputs (with gradients
where the op is differentiable). bin_feature_stats and fds_calibrate take 2-D features only:
their "1-D" case is one feature column."""
import pytest
import torch

import ssir_fast

pytestmark = pytest.mark.skipif(not ssir_fast.HAS_EXTENSION, reason="needs the compiled ops")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["empty", "1-D", "non-contiguous"]
OPS = torch.ops.ssir_fast


def _t(shape, dtype, layout, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if layout == "non-contiguous":       # every other column of a wider tensor
        wide = list(shape)
        wide[-1] *= 2
        t = torch.randn(wide, generator=g).to(dtype)[..., ::2]
        assert not t.is_contiguous()
    else:
        t = torch.randn(shape, generator=g).to(dtype)
    return t.requires_grad_(grad)


def _shape(layout, two_d=False):
    return {"empty": (0, 4), "1-D": ((6, 1) if two_d else (6,)),
            "non-contiguous": (5, 3)}[layout]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_perturb(dtype, layout):
    shape = _shape(layout)
    x, g = _t(shape, dtype, layout, True, 1), _t(shape, dtype, layout, True, 2)
    channels = shape[1] if len(shape) > 1 else 1
    lo = torch.full((channels,), -0.5) if len(shape) > 1 else torch.tensor(-0.5)
    eps = torch.rand(shape[0])
    for args in ((x, g, 0.4, lo, torch.tensor(0.6), None), (x, g, 1.0, None, None, eps)):
        torch.library.opcheck(OPS.perturb.default, args)
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        out = torch.empty(shape, dtype=dtype)
        torch.library.opcheck(OPS.perturb_out.default, (*plain[:5], out, plain[5]))
        if layout != "non-contiguous":   # in place on a contiguous copy
            torch.library.opcheck(OPS.perturb_.default, (plain[0].clone(), *plain[1:]))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bin_reduce(dtype, layout):
    shape = _shape(layout)
    pred, target = _t(shape, dtype, layout, seed=3), _t(shape, dtype, layout, seed=4).abs() * 5
    mask = torch.ones(shape, dtype=torch.bool)
    torch.library.opcheck(OPS.bin_reduce.default, (pred, target, 0.0, 1.0, 6, None, 1e-8, False))
    torch.library.opcheck(OPS.bin_reduce.default, (pred, target, 0.7, 0.1, 9, mask, 1e-8, True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bin_feature_stats(dtype, layout):
    shape = _shape(layout, two_d=True)
    f = _t(shape, dtype, layout, seed=5)
    idx = torch.arange(shape[0]) % 3 - (1 if shape[0] else 0)      # includes -1 (ignored)
    for unbiased in (True, False):
        torch.library.opcheck(OPS.bin_feature_stats.default, (f, idx, 4, unbiased))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fds_calibrate(dtype, layout):
    shape = _shape(layout, two_d=True)
    f = _t(shape, dtype, layout, grad=True, seed=6)
    c = shape[1]
    g = torch.Generator().manual_seed(7)
    stats = [torch.randn(4, c, generator=g), torch.rand(4, c, generator=g) + 0.1,
             torch.randn(4, c, generator=g), torch.rand(4, c, generator=g) + 0.1]
    idx = torch.arange(shape[0]) % 5 - 1                              # -1 and 4: pass through
    torch.library.opcheck(OPS.fds_calibrate.default, (f, idx, *stats, 0.1, 10.0))
