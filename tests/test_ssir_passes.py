"""What an SSIR step runs: each BatchNorm layer once per pass, no scratch copies of buffers no pass
writes, nothing read back from the device; the statistics' graph against float64 autograd."""
import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ssir_fast import SSIRLoss
from ssir_fast._batchnorm import _BatchStats
from ssir_fast.imbalance import LabelBins


def cnn(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1)).to(dtype).train()


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))

    def count(self, word, exclude="backward"):
        return sum(word in n and exclude not in n for n in self.names)


@pytest.mark.parametrize("kw, norms", [(dict(subset=0.5), 1), (dict(subset=0.5, n_steps=1), 1),
                                       (dict(), 3), (dict(n_steps=1), 2)])
def test_each_batchnorm_layer_runs_once_per_pass(kw, norms):
    # With subset, only the clean pass runs BatchNorm (its statistics, with graph, serve the
    # subset passes: no var_mean of their own); without, every pass runs it on its own batch.
    model = cnn()
    x, y = torch.randn(16, 3, 8, 8), torch.randn(16)
    with OpCount() as ops:
        res = SSIRLoss(epsilon=1e-2, **kw)(model, x, y)
        res.loss.backward()
    assert ops.count("batch_norm") == 2 * norms
    assert ops.count("var_mean") == 0 and ops.count("var") == 0


@pytest.mark.parametrize("kw", [dict(), dict(subset=0.5), dict(n_steps=1, subset=0.25)])
def test_perturbation_passes_leave_batchnorm_buffers_in_place(kw):
    # No pass writes a BatchNorm buffer but the clean one, so none gets a scratch copy: every pass
    # sees the model's own tensors, which end as after one clean forward.
    model, once = cnn(), cnn()
    x, y = torch.randn(16, 3, 8, 8), torch.randn(16)
    own = {id(b) for b in model.buffers()}
    seen = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(
                lambda mod, a: seen.extend(id(b) in own for b in mod.buffers()))
    SSIRLoss(epsilon=1e-2, **kw)(model, x, y).loss.backward()
    passes = 3 - ("n_steps" in kw)
    assert len(seen) == 2 * 3 * passes and all(seen)
    once(x)
    for (name, a), (_, b) in zip(model.named_buffers(), once.named_buffers()):
        assert torch.equal(a, b), name


def test_batchnorm_statistics_gradient_matches_autograd():
    # (mean, 1/sqrt(var + eps)) per channel: the hand-written backward against autograd through
    # var_mean in float64, with both gradients flowing.
    v = torch.randn(6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    dims, eps = (0, 2, 3), 1e-5

    def stats(t):
        var, mean = torch.var_mean(t, dims, correction=0)
        return mean, torch.rsqrt(var + eps)

    with torch.no_grad():
        mean, invstd = stats(v)
    gm, gi = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    ours = torch.autograd.grad(_BatchStats.apply(v, mean, invstd), v, (gm, gi))[0]
    ref = torch.autograd.grad(stats(v), v, (gm, gi))[0]
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


class OwnForwardBatchNorm(nn.BatchNorm2d):
    """A subclass with its own forward (as SyncBatchNorm): run as is, statistics from hooks."""

    def forward(self, v):
        return super().forward(v)


@pytest.mark.parametrize("layer", [nn.BatchNorm2d, OwnForwardBatchNorm])
def test_subset_step_equals_autograd_through_batchnorm_float64(layer):
    # eps = 0, no dropout: the subset loss is supervised + lam * mean_{i in idx} D(f(x)_i, y~_i) of
    # one plain forward, its gradient through the whole-batch statistics included; checked with
    # affine-free and momentum-free (cumulative average) BatchNorm layers too.
    model = cnn(torch.float64)
    model[1] = layer(8, affine=False, momentum=None).double()
    model[4] = layer(8).double()
    twin, once = copy.deepcopy(model), copy.deepcopy(model)
    x = torch.randn(12, 3, 6, 6, dtype=torch.float64)
    y = torch.randn(12, dtype=torch.float64)
    noise = torch.rand(12, 1, dtype=torch.float64) * 2 - 1
    rarity = torch.linspace(1, 5, 12)
    res = SSIRLoss(epsilon=0.0, lam=0.6, subset=0.5)(model, x, y, noise=noise, rarity=rarity)
    res.loss.backward()
    pred = twin(x)
    idx = res.index
    y_tilde = pred.detach() + noise
    ref = (pred - y[:, None]).abs().mean() + 0.6 * (pred[idx] - y_tilde[idx]).abs().mean()
    ref.backward()
    torch.testing.assert_close(res.loss, ref, rtol=1e-12, atol=0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
    once(x)
    for (name, a), (_, b) in zip(model.named_buffers(), once.named_buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kw", [dict(), dict(subset=0.5), dict(n_steps=1, subset=0.25),
                                dict(epsilon="auto"), dict(epsilon="auto", subset=0.5)])
def test_step_reads_nothing_back_from_the_device(kw):
    # The whole step on the meta device, where any host read (item, bool, tolist) fails: the
    # subset draw's checks, its floor for rows of rarity 0 and the BatchNorm passes read nothing.
    model = cnn().to("meta")
    x = torch.empty(16, 3, 8, 8, device="meta")
    y = torch.empty(16, device="meta")
    bins = LabelBins(0.0, 1.0, 10)
    kw = {"epsilon": 1e-2, **kw}
    loss_fn = SSIRLoss(validate=False, bins=bins, bin_counts=[3] * 10, **kw)
    loss_fn = loss_fn.to("meta")
    res = loss_fn(model, x, y)
    res.loss.backward()
    assert res.loss.device.type == "meta"
    assert all(p.grad is not None for p in model.parameters())


class _CountBackward(torch.autograd.Function):
    """Identity at the model's input that counts how often its backward runs."""
    calls = []

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _CountBackward.calls.append(1)
        return g


@pytest.mark.parametrize("kw", [dict(), dict(n_steps=1, subset=0.25)])
def test_result_backward_forms_no_clean_input_gradient(kw):
    # res.backward() differentiates the model's (and a module base loss's) parameters only: the
    # input-gradient pass through the clean graph runs for step 1 and for step 2 (autograd.grad)
    # and not again in the final backward; every parameter gradient equals a plain backward's.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))

        def forward(self, x):
            return self.body(_CountBackward.apply(x))

    class Scaled(nn.Module):   # a learnable base loss: its parameter gets its gradient too
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.tensor(1.5))

        def forward(self, pred, y, weight=None):
            return self.s * (pred - y).abs().mean()

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    runs = []
    for plain in (True, False):
        torch.manual_seed(1)
        net, base = Net().double(), Scaled().double()
        loss_fn = SSIRLoss(bin_width=1.0, epsilon=0.1, lam=0.5, base_loss=base, **kw)
        _CountBackward.calls.clear()
        torch.manual_seed(2)
        res = loss_fn(net, x, y)
        before = len(_CountBackward.calls)
        res.loss.backward() if plain else res.backward()
        runs.append((len(_CountBackward.calls) - before,
                     [p.grad.clone() for p in [*net.parameters(), base.s]]))
    (plain_calls, plain_grads), (calls, grads) = runs
    assert plain_calls == 1 and calls == 0
    for a, b in zip(plain_grads, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a leaf named in `inputs` is all that gets a gradient
    net = Net().double()
    res = SSIRLoss(bin_width=1.0, epsilon=0.1)(net, x, y)
    res.backward(inputs=[net.body[0].weight])
    assert net.body[0].weight.grad is not None and net.body[2].weight.grad is None
