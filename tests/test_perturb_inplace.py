"""perturb(..., out=...) under autograd: the write is recorded (version counter, history), a
backward through an overwritten value is refused as after torch's own in-place ops, a leaf that
requires grad is refused, and gradients through an in-place perturb are those of the functional
op."""
import pytest
import torch

from ssir_fast.ops import perturb

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", DEVICES)
def test_backward_through_overwritten_value_is_refused(device):
    a = torch.randn(2, 3, device=device, requires_grad=True)
    x = a * 1.0
    y = (x * x).sum()     # saves x
    perturb(x, torch.randn(2, 3, device=device), 0.5, out=x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("device", DEVICES)
def test_version_counter_is_bumped(device):
    x, g = torch.randn(2, 3, device=device), torch.randn(2, 3, device=device)
    out = torch.empty_like(x)
    v_x, v_out = x._version, out._version
    perturb(x, g, 0.5, out=x)
    perturb(x, g, 0.5, out=out)
    assert x._version > v_x and out._version > v_out


@pytest.mark.parametrize("device", DEVICES)
def test_leaf_requiring_grad_is_refused(device):
    a = torch.randn(2, 3, device=device, requires_grad=True)
    before = a.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        perturb(a, torch.randn(2, 3, device=device), 0.5, out=a)
    assert torch.equal(a.detach(), before)
    with torch.no_grad():   # allowed, as for torch's in-place ops
        perturb(a, torch.randn(2, 3, device=device), 0.5, out=a)
    assert not torch.equal(a.detach(), before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("into", ["x", "g", "other"])
def test_gradients_match_the_functional_op(device, clip, into):
    torch.manual_seed(0)
    bounds = dict(clip_min=-0.3, clip_max=0.4) if clip else {}
    a0, b0 = torch.randn(4, 6, device=device), torch.randn(4, 6, device=device)
    w = torch.randn(4, 6, device=device)

    def grads(inplace):
        a, b = a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        x, g = a * 2.0, b * 3.0
        if not inplace:
            out = perturb(x, g, 0.7, **bounds)
        else:
            target = {"x": x, "g": g, "other": torch.empty_like(x)}[into]
            out = perturb(x, g, 0.7, out=target, **bounds)
            assert out is target
        (out * w).sum().backward()
        return out.detach(), a.grad, b.grad

    ref, ga, gb = grads(False)
    out, ga2, gb2 = grads(True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ga2, ga)
    torch.testing.assert_close(gb2, gb)
