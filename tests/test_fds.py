"""FDS ops (bin_feature_stats, fds_calibrate) and the FDS module."""
import numpy as np
import pytest
import torch

import ssir_fast
from ssir_fast.fds import FDS, feature_balance, fill_empty_bins, plot_feature_balance, smooth_statistics
from ssir_fast.imbalance import LabelBins, lds_kernel
from ssir_fast.ops import bin_feature_stats, fds_calibrate
from ssir_fast.ops.bin_feature_stats import bin_feature_stats_torch
from ssir_fast.ops.fds_calibrate import fds_calibrate_torch
from ssir_fast.reference import bin_feature_stats_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_ext = pytest.mark.skipif(not ssir_fast.HAS_EXTENSION, reason="extension not built")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12),
                                       (torch.bfloat16, 1e-5), (torch.float16, 1e-5)])
@pytest.mark.parametrize("N,C,B", [(0, 5, 3), (1, 3, 4), (257, 67, 10), (1000, 130, 100)])
def test_bin_feature_stats_vs_loop(device, dtype, tol, N, C, B):
    g = torch.Generator().manual_seed(N + C)
    f = (torch.randn(N, C, generator=g) * 3 + 50).to(dtype).to(device)  # |mean| >> std
    idx = torch.randint(-1, B + 1, (N,), generator=g).to(device)         # some ignored
    count, mean, var = bin_feature_stats(f, idx, B)
    rc, rm, rv = bin_feature_stats_reference(f, idx, B)
    assert torch.equal(count.cpu(), rc)
    torch.testing.assert_close(mean.cpu().double(), rm, rtol=tol, atol=tol * 50)
    torch.testing.assert_close(var.cpu().double(), rv, rtol=tol * 10, atol=tol * 10)
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == want and var.dtype == want
    ec, em, ev = bin_feature_stats_torch(f, idx, B)
    assert torch.equal(ec.cpu(), rc)
    torch.testing.assert_close(em.cpu().double(), rm, rtol=tol, atol=tol * 50)


def test_reference_module_agrees():
    from ssir_fast.reference import fds_calibrate_reference
    f = torch.randn(50, 6, dtype=torch.float64)
    idx = torch.randint(-1, 5, (50,))
    mean, var, smean, svar = _stats(4, 6)
    var[0, 0], svar[0, 0], var[1, 1], svar[1, 1] = 0.0, 0.0, 0.0, 1.0
    torch.testing.assert_close(fds_calibrate(f, idx, mean, var, smean, svar, 0.1, 10.0),
                               fds_calibrate_reference(f, idx, mean, var, smean, svar, 0.1, 10.0))


def test_bin_feature_stats_hand_values():
    f = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, -2.0], [7.0, 0.0]])
    idx = torch.tensor([0, 0, 2, -1])
    count, mean, var = bin_feature_stats(f, idx, 3)
    assert count.tolist() == [2, 0, 1]
    assert mean.tolist() == [[2.0, 10.0], [0.0, 0.0], [5.0, -2.0]]
    assert var.tolist() == [[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    _, _, pop = bin_feature_stats(f, idx, 3, unbiased=False)
    assert pop.tolist()[0] == [1.0, 0.0]


def _stats(B, C, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, C, generator=g, dtype=dtype)
    var = torch.rand(B, C, generator=g, dtype=dtype) + 0.05
    smean = mean + 0.3 * torch.randn(B, C, generator=g, dtype=dtype)
    svar = var * (torch.rand(B, C, generator=g, dtype=dtype) * 30 + 0.01)  # exercises the clamp
    return mean, var, smean, svar


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,C", [(0, 4), (33, 7), (300, 130)])
def test_fds_calibrate_vs_float64_formula(device, dtype, N, C):
    B = 6
    mean, var, smean, svar = _stats(B, C)
    f = torch.randn(N, C, dtype=torch.float64)
    idx = torch.randint(-1, B + 1, (N,))
    out = fds_calibrate(f.to(dtype).to(device), idx.to(device), mean.to(device), var.to(device),
                        smean.to(device), svar.to(device), 0.1, 10.0)
    fin = f.to(dtype).double()
    want = fin.clone()
    for n in range(N):  # the calibration formula, one sample at a time
        b = int(idx[n])
        if 0 <= b < B:
            want[n] = (fin[n] - mean[b]) * torch.sqrt(torch.clamp(svar[b] / var[b], 0.1, 10)) + smean[b]
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.cpu().double(), want, rtol=tol, atol=tol * 10)
    assert out.dtype == dtype


def test_fds_calibrate_identity_and_zero_variance():
    mean, var, _, _ = _stats(4, 5)
    f = torch.randn(20, 5, dtype=torch.float64)
    idx = torch.randint(0, 4, (20,))
    torch.testing.assert_close(fds_calibrate(f, idx, mean, var, mean, var), f, rtol=0, atol=1e-13)
    z = torch.zeros(4, 5, dtype=torch.float64)
    one = torch.ones(4, 5, dtype=torch.float64)
    # zero running variance: unchanged (official DIR code), whatever the smoothed variance
    for sv in (z, one):
        assert torch.equal(fds_calibrate(f, idx, z, z, z, sv, 0.1, 10), f)
        assert torch.equal(fds_calibrate(f, idx, one, z, 3 * one, sv, 0.1, 10), f)


def _official_calibrate(matrix, m1, v1, m2, v2, clip_min, clip_max):
    """calibrate_mean_var of the official DIR code (agedb-dir/utils.py), transcribed in float64."""
    matrix = matrix.clone()
    if torch.sum(v1) < 1e-10:
        return matrix
    if (v1 == 0.).any():
        valid = v1 != 0.
        factor = torch.clamp(v2[valid] / v1[valid], clip_min, clip_max)
        matrix[:, valid] = (matrix[:, valid] - m1[valid]) * torch.sqrt(factor) + m2[valid]
        return matrix
    factor = torch.clamp(v2 / v1, clip_min, clip_max)
    return (matrix - m1) * torch.sqrt(factor) + m2


def _official_smooth(f, idx, mean, var, smean, svar, lo, hi):
    """The official FDS.smooth loop over the labels of a batch (bins in [0, B) only)."""
    out = f.clone()
    for b in torch.unique(idx).tolist():
        if 0 <= b < mean.shape[0]:
            sel = idx == b
            out[sel] = _official_calibrate(f[sel], mean[b], var[b], smean[b], svar[b], lo, hi)
    return out


def _zero_variance_stats(C=6):
    """Bins: 0 ordinary; 1 some zero-variance dims; 2 all zero (a single-sample bin);
    3 variances summing to < 1e-10; 4 summing to just above 1e-10 with one zero dim."""
    mean, var, smean, svar = _stats(5, C, seed=4)
    var[1, [0, 3]] = 0
    var[2] = 0
    var[3] = 1e-12
    var[4] = 0.5e-10
    var[4, 0] = 0
    svar[1:] = 2.5  # positive smoothed variances: x/0 used to be scaled by sqrt(hi)
    return mean, var, smean, svar


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fds_calibrate_zero_variance_follows_official_code(device, dtype):
    mean, var, smean, svar = _zero_variance_stats()
    f = torch.randn(40, 6, dtype=torch.float64)
    idx = torch.arange(40) % 6 - 1  # bins -1..4
    want = _official_smooth(f, idx, mean, var, smean, svar, 0.1, 10.0)
    out = fds_calibrate(f.to(dtype).to(device), idx.to(device), *(t.to(device) for t in
                        (mean, var, smean, svar)), 0.1, 10.0)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.cpu().double(), want, rtol=tol, atol=tol)
    # the rows the rule is about are bit-for-bit unchanged
    for b, dims in ((1, [0, 3]), (2, range(6)), (3, range(6)), (4, [0])):
        rows = (idx == b).to(device)
        assert torch.equal(out[rows][:, list(dims)], f.to(dtype).to(device)[rows][:, list(dims)])
    # the Python fallback and the float64 reference follow the same rule
    from ssir_fast.reference import fds_calibrate_reference
    torch.testing.assert_close(fds_calibrate_reference(f, idx, mean, var, smean, svar, 0.1, 10.0),
                               want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fds_calibrate_torch(f, idx, mean, var, smean, svar, 0.1, 10.0),
                               want, rtol=1e-12, atol=1e-12)


def test_fds_calibrate_single_sample_bins_end_to_end():
    # Bins seen with one sample have running variance 0: their features must not be scaled.
    f = torch.randn(7, 5, dtype=torch.float64)
    idx = torch.tensor([0, 0, 0, 1, 2, 2, 3])  # bins 1 and 3 hold one sample each
    count, mean, var = bin_feature_stats(f, idx, 4)
    assert count.tolist() == [3, 1, 2, 1] and (var[[1, 3]] == 0).all()
    smean, svar = mean + 0.5, var.mean(0, keepdim=True).expand_as(var).contiguous()
    out = fds_calibrate(f, idx, mean, var, smean, svar, 0.1, 10.0)
    assert torch.equal(out[[3, 6]], f[[3, 6]])
    torch.testing.assert_close(out, _official_smooth(f, idx, mean, var, smean, svar, 0.1, 10.0),
                               rtol=1e-12, atol=1e-12)
    # backward: gradient 1 on the unchanged rows
    x = f.clone().requires_grad_(True)
    fds_calibrate(x, idx, mean, var, smean, svar, 0.1, 10.0).sum().backward()
    assert torch.equal(x.grad[[3, 6]], torch.ones(2, 5, dtype=torch.float64))


def test_fds_calibrate_gradcheck_and_opcheck():
    mean, var, smean, svar = _stats(5, 4)
    f = torch.randn(17, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(-1, 6, (17,))
    fn = lambda x: fds_calibrate(x, idx, mean, var, smean, svar, 0.2, 5.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f,))
    assert torch.autograd.gradgradcheck(fn, (f,))
    f32 = torch.randn(17, 4, requires_grad=True)
    out = fds_calibrate(f32, idx, mean, var, smean, svar, 0.2, 5.0)
    out.sum().backward()
    ref = f32.detach().clone().requires_grad_(True)
    fds_calibrate_torch(ref, idx, mean.float(), var.float(), smean.float(), svar.float(), 0.2, 5.0).sum().backward()
    torch.testing.assert_close(f32.grad, ref.grad)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    mean, var, smean, svar = (t.float().to(device) for t in _stats(5, 8))
    f = torch.randn(21, 8, device=device, requires_grad=True)
    idx = torch.randint(-1, 6, (21,), device=device)
    torch.library.opcheck(torch.ops.ssir_fast.fds_calibrate.default, (f, idx, mean, var, smean, svar, 0.1, 10.0))
    torch.library.opcheck(torch.ops.ssir_fast.bin_feature_stats.default, (f.detach(), idx, 5, True))


@needs_ext
def test_compile_fullgraph():
    mean, var, smean, svar = (t.float() for t in _stats(5, 8))
    idx = torch.randint(0, 5, (9,))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        c, m, v = torch.ops.ssir_fast.bin_feature_stats.default(x, idx, 5, True)
        return torch.ops.ssir_fast.fds_calibrate.default(x, idx, mean, var, smean, svar, 0.1, 10.0), m

    x = torch.randn(9, 8)
    out, m = f(x)
    torch.testing.assert_close(out, fds_calibrate(x, idx, mean, var, smean, svar))


@pytest.mark.parametrize("bad,match", [
    (dict(features=torch.zeros(3)), "2-D"),
    (dict(bin_index=torch.zeros(3)), "integer"),
    (dict(bin_index=torch.zeros(4, dtype=torch.long)), "shape"),
    (dict(num_bins=0), "num_bins"),
])
def test_bin_feature_stats_bad_input(bad, match):
    args = dict(features=torch.zeros(3, 2), bin_index=torch.zeros(3, dtype=torch.long), num_bins=2)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        bin_feature_stats(**args)


def test_fill_empty_and_smoothing():
    mean = torch.tensor([[0.0], [0.0], [4.0], [0.0], [0.0], [10.0], [0.0]])
    count = torch.tensor([0, 0, 3, 0, 0, 2, 0])
    m, _ = fill_empty_bins(mean, mean.clone(), count)
    assert m[:, 0].tolist() == [4.0, 4.0, 4.0, 6.0, 8.0, 10.0, 10.0]
    w = torch.as_tensor(lds_kernel("gaussian", 5, 2) / lds_kernel("gaussian", 5, 2).sum(), dtype=torch.float32)
    x = torch.randn(9, 3)
    s = smooth_statistics(x, w)
    padded = np.pad(x.numpy(), ((2, 2), (0, 0)), mode="reflect")
    want = np.stack([padded[i:i + 5].T @ w.numpy() for i in range(9)])
    np.testing.assert_allclose(s.numpy(), want, rtol=1e-5, atol=1e-6)


class _Net(torch.nn.Module):
    def __init__(self, bins):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
        self.fds = FDS(8, bins, start_smooth=1)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x, y=None, epoch=None):
        z = self.enc(x)
        return self.head(self.fds(z, y, epoch) if y is not None else z)


def test_fds_module_end_to_end():
    torch.manual_seed(0)
    bins = LabelBins(0, 1, 10)
    net = _Net(bins)
    x, y = torch.randn(200, 4), torch.randint(0, 8, (200,)).float()  # bins 8, 9 stay empty
    loader = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    net.train()
    out0 = net(x[:10], y[:10], epoch=0)
    assert torch.equal(out0, net.head(net.enc(x[:10])))  # epoch 0 < start_smooth: identity
    bn = {k: v.clone() for k, v in net.enc[1].state_dict().items()}
    net.fds.collect(net.enc, loader, epoch=0)
    for k, v in net.enc[1].state_dict().items():  # BatchNorm untouched by the collection pass
        assert torch.equal(v, bn[k]), k
    assert net.fds.num_samples_tracked[:8].sum() == 200 and int(net.fds.epoch) == 0
    # statistics are those of the train-mode features, copied (not aliased) into last_*
    with torch.no_grad(), ssir_fast.ssir.scratch_buffers(net.enc):  # same batches, BN batch stats
        feats = torch.cat([net.enc(xb) for xb, _ in loader])
    c, m, v = bin_feature_stats(feats, bins.index(y), 10)
    torch.testing.assert_close(net.fds.running_mean[:8], m[:8])
    assert net.fds.last_mean.data_ptr() != net.fds.running_mean.data_ptr()
    assert torch.equal(net.fds.last_mean[8], net.fds.last_mean[7])  # empty bins filled
    # training from start_smooth: calibrated, differentiable, no in-place edits
    out = net(x[:32], y[:32], epoch=1)
    out.sum().backward()
    assert net.enc[0].weight.grad is not None
    net.eval()
    assert torch.equal(net(x[:5], y[:5], epoch=3), net.head(net.enc(x[:5])))
    # momentum: second epoch blends 0.9 old + 0.1 new
    old = net.fds.running_mean.clone()
    net.fds.update(feats + 1.0, y)
    net.fds.end_epoch(1)
    torch.testing.assert_close(net.fds.running_mean[:8], 0.9 * old[:8] + 0.1 * (m[:8] + 1.0))
    # checkpoints carry the state
    fresh = _Net(bins)
    fresh.load_state_dict(net.state_dict())
    for name in ("running_mean", "running_var", "smoothed_mean", "smoothed_var", "last_var",
                 "num_samples_tracked", "epoch"):
        assert torch.equal(getattr(fresh.fds, name), getattr(net.fds, name)), name


def test_fds_identity_with_one_tap_window():
    bins = LabelBins(0, 1, 5)
    fds = FDS(3, bins, ks=1)
    f, y = torch.randn(40, 3), torch.randint(0, 5, (40,)).float()
    fds.update(f, y)
    fds.end_epoch(0)
    fds.train()
    torch.testing.assert_close(fds(f, y, epoch=1), f)


def test_feature_balance_and_plot(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    bins = LabelBins(0, 1, 4)
    f = torch.tensor([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [5.0, 5.0]])
    v, c = feature_balance(f, torch.tensor([0.5, 0.5, 2.5, 3.5]), bins)
    assert v[0] == pytest.approx((2.0 + 8.0) / 2) and np.isnan(v[1]) and np.isnan(v[2])
    assert c.tolist() == [2, 0, 1, 1]
    ax = plot_feature_balance(v, bins, c)
    ax.figure.savefig(tmp_path / "fb.png")
    assert (tmp_path / "fb.png").stat().st_size > 0


@pytest.mark.parametrize("use_ext", [True, False])
@pytest.mark.parametrize("bad, exc, match", [
    (dict(features=torch.zeros(3)), ValueError, "2-D"),
    (dict(features=torch.zeros(3, 2, dtype=torch.int32)), TypeError, "features must be float"),
    (dict(bin_index=torch.zeros(3)), TypeError, "integer"),
    (dict(bin_index=torch.zeros(4, dtype=torch.long)), ValueError, r"shape \[N\] = \[3\]"),
    (dict(var=torch.ones(2, 3)), ValueError, "var must have shape"),
    (dict(smoothed_var=torch.ones(2, 2, dtype=torch.int64)), TypeError, "smoothed_var must be a float"),
    (dict(lo=-1.0), ValueError, "lo must be finite"),
    (dict(lo=2.0, hi=1.0), ValueError, "hi must be >= lo"),
])
def test_fds_calibrate_bad_input_same_on_kernel_and_fallback(monkeypatch, use_ext, bad, exc, match):
    # one contract: the C++ checks and the fallback's torch._check raise the same errors
    from ssir_fast import _extension
    if not use_ext:
        monkeypatch.setattr(_extension, "HAS_EXTENSION", False)
    args = dict(features=torch.zeros(3, 2), bin_index=torch.zeros(3, dtype=torch.long),
                mean=torch.zeros(2, 2), var=torch.ones(2, 2), smoothed_mean=torch.zeros(2, 2),
                smoothed_var=torch.ones(2, 2), lo=0.1, hi=10.0)
    args.update(bad)
    with pytest.raises(exc, match=match):
        fds_calibrate(**args)


@pytest.mark.parametrize("use_ext", [True, False])
def test_bin_feature_stats_bad_input_same_on_kernel_and_fallback(monkeypatch, use_ext):
    from ssir_fast import _extension
    if not use_ext:
        monkeypatch.setattr(_extension, "HAS_EXTENSION", False)
    f, idx = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="num_bins must be >= 1"):
        bin_feature_stats(f, idx, 0)
    with pytest.raises(TypeError, match="num_bins must be an integer"):
        bin_feature_stats(f, idx, 2.5)
    with pytest.raises(ValueError, match="2-D"):
        bin_feature_stats(torch.zeros(3), idx, 2)
    with pytest.raises(TypeError, match="features must be float"):
        bin_feature_stats(f.long(), idx, 2)


def test_fds_calibrate_under_torch_func_equals_the_pure_pytorch_path():
    from torch.func import grad, jacrev, jvp, vmap
    from ssir_fast.ops import fds_calibrate
    from ssir_fast.ops.fds_calibrate import fds_calibrate_torch
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    idx = torch.tensor([0, 1, 2, 4, 7, -1])
    m, sm = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    v, sv = (torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    op = lambda z: fds_calibrate(z, idx, m, v, sm, sv)  # noqa: E731
    ref = lambda z: fds_calibrate_torch(z, idx, m, v, sm, sv, 0.1, 10.0)  # noqa: E731
    torch.testing.assert_close(jacrev(op)(z), jacrev(ref)(z))
    torch.testing.assert_close(grad(lambda z: op(z).sum())(z), grad(lambda z: ref(z).sum())(z))
    tangent = jvp(op, (z,), (torch.ones_like(z),))[1]
    # the Jacobian is diagonal: the tangent along ones is the per-element scale (1 where unchanged)
    torch.testing.assert_close(tangent, jacrev(ref)(z).sum((2, 3)))
    assert tangent.abs().min() > 0
    zs = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(vmap(op)(zs), torch.stack([ref(a) for a in zs]))


def test_statistics_ops_refuse_torch_func_differentiation():
    from torch.func import grad, jvp, vmap
    from ssir_fast.ops import bin_feature_stats, bin_reduce
    p, y = torch.randn(8), torch.rand(8) * 5
    with pytest.raises(RuntimeError, match="bin_reduce is not differentiable"):
        grad(lambda p: bin_reduce(p, y, 0.0, 1.0, 5)[:, 1].sum())(p)
    with pytest.raises(RuntimeError, match="bin_reduce is not differentiable"):
        jvp(lambda p: bin_reduce(p, y, 0.0, 1.0, 5), (p,), (p,))
    f, idx = torch.randn(6, 3), torch.tensor([0, 1, 1, 2, 4, -1])
    with pytest.raises(RuntimeError, match="bin_feature_stats is not differentiable"):
        grad(lambda f: bin_feature_stats(f, idx, 5)[1].sum())(f)
    # vmap is exact (one call per sample), and a detached input inside grad is fine
    ps = torch.randn(3, 8)
    torch.testing.assert_close(vmap(lambda p: bin_reduce(p, y, 0.0, 1.0, 5))(ps),
                               torch.stack([bin_reduce(a, y, 0.0, 1.0, 5) for a in ps]))
    out = grad(lambda p: (p * p).sum() + 0 * bin_reduce(p.detach(), y, 0.0, 1.0, 5).sum())(p)
    torch.testing.assert_close(out, 2 * p)


# ---- non-finite features keep NaN variances; scratch grows with the bins present -------------
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_inf_features_give_nan_variance(device):
    f = torch.tensor([[float("inf"), 1.0], [1.0, 2.0], [0.5, 0.5]], device=device)
    idx = torch.tensor([0, 0, 1], device=device)
    count, mean, var = bin_feature_stats(f, idx, 2)
    c_ref, m_ref, v_ref = bin_feature_stats_torch(f.cpu(), idx.cpu(), 2)
    assert torch.isnan(var[0, 0]), var  # inf - inf: never hidden as a zero variance
    assert torch.equal(torch.isnan(var.cpu()), torch.isnan(v_ref))
    assert torch.allclose(var.cpu()[~torch.isnan(v_ref)], v_ref[~torch.isnan(v_ref)])


@needs_ext
def test_stats_scratch_is_bounded_by_the_bins_present():
    """64 samples in 100,000 bins: the outputs ([B, C] mean and var, 205 MB) are the only
    allocation that grows with num_bins (the scratch used to be 3 * B * 256 doubles per task)."""
    import subprocess
    import sys
    code = """
import resource, torch, ssir_fast
torch.set_num_threads(2)
f = torch.randn(64, 256); idx = torch.randint(0, 100_000, (64,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count, mean, var = ssir_fast.ops.bin_feature_stats(f, idx, 100_000)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
ref = ssir_fast.ops.bin_feature_stats.__wrapped__ if hasattr(ssir_fast.ops.bin_feature_stats, '__wrapped__') else None
b = idx[0]
sel = f[idx == b]
assert torch.allclose(mean[b], sel.mean(0), atol=1e-5) and int(count.sum()) == 64
print(f"grown {grown:.0f} MB")
assert grown < 350, grown
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stats_cuda_scratch_is_bounded_by_the_bins_present():
    f = torch.randn(256, 512, device="cuda")
    idx = torch.randint(0, 100_000, (256,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    count, mean, var = bin_feature_stats(f, idx, 100_000)
    torch.cuda.synchronize()
    outputs = count.nbytes + mean.nbytes + var.nbytes
    extra = torch.cuda.max_memory_allocated() - base - outputs
    assert extra < 64 * 2**20, extra / 2**20  # was (N/128 + B) * C * 16 bytes = 820 MB
    c_ref, m_ref, v_ref = bin_feature_stats_torch(f.cpu(), idx.cpu(), 100_000)
    assert torch.equal(count.cpu(), c_ref)
    assert torch.allclose(mean.cpu(), m_ref, atol=1e-5)


# ---- FDS.forward reads nothing back from the device -----------------------------------------
def test_fds_forward_reads_no_device_value(monkeypatch):
    bins = LabelBins(0, 1, 10)
    fds = FDS(4, bins, start_smooth=1)
    fds.update(torch.randn(50, 4), torch.randint(0, 10, (50,)).float())
    fds.end_epoch(0)
    fds.train()
    feats, labels = torch.randn(8, 4), torch.randint(0, 10, (8,)).float()
    expected = fds(feats, labels, 1)
    reads = []
    for name in ("__int__", "__bool__", "item", "__float__", "__index__"):
        orig = getattr(torch.Tensor, name)
        def spy(self, *a, _orig=orig, _name=name, **k):
            reads.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    labels_cuda_like = labels  # CPU labels are checked (free there); the epoch is not read back
    out = fds(feats, labels_cuda_like, 1)
    out2 = fds(feats, labels_cuda_like)  # the default epoch: last finished + 1
    monkeypatch.undo()
    assert torch.equal(out, expected) and torch.equal(out2, expected)
    assert reads.count("__int__") == 0 and reads.count("item") == 0, reads
    # a checkpoint load refreshes the host copy of the epoch
    state = fds.state_dict()
    state["epoch"] = torch.tensor(-1)
    fds.load_state_dict(state)
    assert not fds.active()
