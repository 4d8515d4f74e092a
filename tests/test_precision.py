"""Mixed precision of the training loop (ssir_fast.train.precision): the dtype chosen per GPU
(capability check monkeypatched, so it runs on the CPU) and the fp16 + GradScaler mechanics,
run with CPU autocast against a float32 reference."""
import warnings

import pytest
import torch

from ssir_fast.train import precision as P


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device whose bf16 support the test decides (no GPU needed)."""
    def install(has_bf16, name="Tesla T4", cc=(7, 5)):
        monkeypatch.setattr(P, "bf16_supported", lambda device: has_bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: cc)
    return install


def test_bf16_where_supported(fake_gpu):
    fake_gpu(True, "NVIDIA A100", (8, 0))
    p = P.choose_precision("cuda:0", amp=True)
    assert p.dtype == torch.bfloat16 and p.scaler is None and p.name == "bf16"


def test_fp16_with_scaler_where_bf16_is_unsupported(fake_gpu):
    fake_gpu(False)
    said = []
    with warnings.catch_warnings():     # without a GPU the scaler disables itself, saying so
        warnings.simplefilter("ignore", UserWarning)
        p = P.choose_precision("cuda:0", amp=True, log=said.append)
    assert p.dtype == torch.float16 and p.name == "fp16"
    assert isinstance(p.scaler, torch.amp.GradScaler)
    assert "Tesla T4 has no bf16" in said[0] and "gradient scaler" in said[0]


def test_bf16_asked_for_on_an_old_gpu_is_refused(fake_gpu):
    fake_gpu(False, "Tesla V100", (7, 0))
    with pytest.raises(P.PrecisionError, match=r"Tesla V100 \(compute capability 7.0\) has "
                       r"no bf16"):
        P.choose_precision("cuda:0", amp=True, amp_dtype="bf16")


def test_off_on_cpu_or_without_amp(fake_gpu):
    fake_gpu(False)
    assert P.choose_precision("cpu", amp=True).dtype is None
    assert P.choose_precision("cuda:0", amp=False).dtype is None


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def test_fp16_scaler_steps_follow_fp32_and_skip_infinite_grads():
    """CPU fp16 autocast + GradScaler (the CUDA path's mechanics): the scaled-and-unscaled SGD
    step equals the float32 step to fp16 accuracy, and a step whose gradients overflow is
    skipped with the scale halved."""
    torch.manual_seed(0)   # fp16 accuracy is a tolerance: not whatever state earlier tests left
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    ref, amp = _model(), _model()
    p = P.Precision("cpu", torch.float16)
    o_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    o_amp = torch.optim.SGD(amp.parameters(), lr=0.1)
    for _ in range(3):
        o_ref.zero_grad()
        torch.nn.functional.mse_loss(ref(x), y).backward()
        o_ref.step()
        o_amp.zero_grad()
        with p.autocast():
            out = amp(x)
        assert out.dtype == torch.float16
        p.backward(torch.nn.functional.mse_loss(out.float(), y))
        p.step(o_amp)
    for a, b in zip(ref.parameters(), amp.parameters()):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)
    scale = p.scaler.get_scale()
    before = [t.detach().clone() for t in amp.parameters()]
    o_amp.zero_grad()
    with p.autocast():
        out = amp(x)
    p.backward(torch.nn.functional.mse_loss(out.float(), y) * float("inf"))
    p.step(o_amp)
    assert all(torch.equal(a, b) for a, b in zip(before, amp.parameters()))   # step skipped
    assert p.scaler.get_scale() == scale / 2
    state = p.state_dict()                          # plain values: goes into last.pt
    q = P.Precision("cpu", torch.float16)
    q.load_state_dict(state)
    assert q.scaler.get_scale() == scale / 2
