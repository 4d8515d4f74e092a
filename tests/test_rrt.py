"""RRT: only the last linear layer is re-initialised and trained; BatchNorm state is frozen."""
import functools

import pytest
import torch

from ssir_fast.imbalance import LabelBins, bin_weights, lookup_weights
from ssir_fast.rrt import last_linear, rrt_mode, rrt_prepare, rrt_train


def _model():
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))


def test_rrt_trains_only_the_head_and_freezes_bn():
    torch.manual_seed(0)
    model = _model()
    x = torch.randn(256, 3)
    y = (x[:, 0] * 3 + 10).clamp(0, 19.9)
    model.train()
    model(x)  # some BN history
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bins = LabelBins(0, 1, 20)
    wfn = functools.partial(lookup_weights, weights_per_bin=bin_weights(y, bins, "sqrt_inv", lds=True),
                            bins=bins)
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    head = rrt_train(model, loader, lambda t: wfn(t).reshape(-1), epochs=3, lr=1e-2)
    assert head is model[4]
    after = model.state_dict()
    for k in before:
        if k.startswith("4."):
            assert not torch.equal(before[k], after[k]), k     # re-initialised and trained
        else:
            assert torch.equal(before[k], after[k]), k         # encoder + BN buffers untouched
    assert model.training and model[1].training                # modes restored
    assert all(not p.requires_grad for p in model[0].parameters())


def test_rrt_mode_restores_and_bn_eval():
    model = _model().eval()
    with rrt_mode(model):
        assert model.training and not model[1].training and model[3].training
    assert not model.training and not model[1].training


def test_rrt_prepare_and_errors():
    model = _model()
    w = model[4].weight.clone()
    head = rrt_prepare(model)
    assert head.weight.requires_grad and not torch.equal(head.weight, w)
    assert last_linear(model, "0") is model[0]
    with pytest.raises(ValueError, match="nn.Linear"):
        last_linear(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(ValueError, match="not an nn.Linear"):
        last_linear(model, "1")
