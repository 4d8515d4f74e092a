"""One SSIR training step vs a vanilla step vs the naive (literal Algorithm 1) step, and the floor.

    pytest benchmarks/bench_ssir_step.py --benchmark-only

The floor is the sum of the passes SSIR needs, each timed in this run on the same model and batch:
3 forwards (with graph), 2 input-only backwards, and the full backward of the clean and the
adversarial graphs (2 full backwards). Goals: SSIR step <= 1.10 x floor, >= 1.25 x faster than naive.
Model: a small CNN with BatchNorm on CPU (batch 128 x 3 x 32 x 32); ResNet-50 at 224 x 224, batch
SSIR_BENCH_BATCH (default 64), bf16 autocast on a GPU when torchvision is installed.
"""
import os
import time

import pytest
import torch
from torch import nn

from conftest import device_name, median_time, record, sync
from ssir_fast import SSIRLoss
from ssir_fast.losses import weighted_l1
from ssir_fast.reference import naive_ssir_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def small_cnn():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(3, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.MaxPool2d(2), *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 1))


def setup_case(device):
    torch.manual_seed(0)
    if device == "cuda":
        try:
            import torchvision
        except ImportError:
            pytest.skip("ResNet-50 GPU step benchmark needs torchvision")
        model = torchvision.models.resnet50(num_classes=1).to(device, memory_format=torch.channels_last)
        n = int(os.environ.get("SSIR_BENCH_BATCH", "64"))
        x = torch.randn(n, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        model = small_cnn().to(device)
        x = torch.randn(128, 3, 32, 32, device=device)
        amp = torch.autocast("cpu", enabled=False)
    y = torch.rand(x.shape[0], device=device) * 100
    return model.train(), x, y, amp


def pass_times(model, x, y, amp, device):
    """Time each kind of pass SSIR needs, in isolation, on this model and batch."""
    x_req = x.detach().requires_grad_(True)

    def fwd():
        with amp:
            return model(x_req)

    t_fwd = median_time(fwd, device)

    def timed_backward(input_only):
        ts = []
        for _ in range(5):
            out = fwd()
            loss = weighted_l1(out.float().squeeze(1), y)
            sync(device)
            t0 = time.perf_counter()
            if input_only:
                torch.autograd.grad(loss, x_req)
            else:
                loss.backward()
            sync(device)
            ts.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        return sorted(ts)[2]

    timed_backward(True)  # warm-up
    return t_fwd, timed_backward(True), timed_backward(False)


@pytest.mark.parametrize("device", DEVICES)
def test_ssir_step(benchmark, device):
    model, x, y, amp = setup_case(device)
    loss_fn = SSIRLoss(bin_width=1.0, epsilon=1e-3, lam=0.1)

    def vanilla():
        model.zero_grad(set_to_none=True)
        with amp:
            out = model(x)
        weighted_l1(out.float().squeeze(1), y).backward()

    def ssir():
        model.zero_grad(set_to_none=True)
        with amp:
            res = loss_fn(model, x, y)
        res.loss.backward()

    def naive():
        model.zero_grad(set_to_none=True)
        with amp:
            loss, _, _ = naive_ssir_loss(model, x, y, bin_width=1.0, epsilon=1e-3, lam=0.1)
        loss.backward()

    t_vanilla = median_time(vanilla, device)
    t_ssir = median_time(ssir, device)
    t_naive = median_time(naive, device)
    t_fwd, t_in_bwd, t_full_bwd = pass_times(model, x, y, amp, device)
    floor = 3 * t_fwd + 2 * t_in_bwd + 2 * t_full_bwd
    fields = dict(device=device_name(device), batch=list(x.shape),
                  vanilla_ms=t_vanilla * 1e3, ssir_ms=t_ssir * 1e3, naive_ms=t_naive * 1e3,
                  forward_ms=t_fwd * 1e3, input_backward_ms=t_in_bwd * 1e3,
                  full_backward_ms=t_full_bwd * 1e3, floor_ms=floor * 1e3,
                  ssir_over_vanilla=t_ssir / t_vanilla, floor_over_vanilla=floor / t_vanilla,
                  ssir_over_floor=t_ssir / floor, naive_over_ssir=t_naive / t_ssir,
                  images_per_s_vanilla=x.shape[0] / t_vanilla, images_per_s_ssir=x.shape[0] / t_ssir)
    record(f"ssir_step/{device}", **fields)
    benchmark.extra_info.update(fields)
    benchmark.pedantic(ssir, rounds=3, iterations=1, warmup_rounds=1)
