"""One SSIR training step (exact and each fast mode) vs a vanilla step vs the naive (literal
Algorithm 1) step, and the pass floor of exact SSIR.

    pytest benchmarks/bench_ssir_step.py --benchmark-only -s

Providers, timed round robin in the same process through `harness.Bench.cases` (the machine's
load hits them alike; each figure is the median over SSIR_BENCH_ROUNDS rounds, default 7, after
one warm-up round, and the fastest round, the one least disturbed by other jobs; one CPU thread;
one row per provider and per pass in benchmarks/results.jsonl, the exact step is the case
pytest-benchmark reports):
- vanilla: forward + weighted L1 + backward;
- exact: `SSIRLoss` (2 steps, the paper's Algorithm 1), and `naive`: the literal transcription;
- fast modes: n_steps=1; subset=0.5 (consistency on half the batch, rarity-weighted draw); bf16
  (steps 2..n under bf16 autocast, the model in fp32; on a GPU the model already runs bf16, so
  this mode is the same as exact there); n_steps=1 + subset=0.5; n_steps=1 + subset=0.25.
Cost model (forward 1, full backward 2, input-only backward 1; vanilla 3): exact 9 (3.0x),
n_steps=1 7 (2.33x), subset=0.5 6.5 (2.17x), n_steps=1 + subset=0.5 5.5 (1.83x), n_steps=1 +
subset=0.25 4.75 (1.58x). Goals: every mode's ratio reported; a fast mode at <= 2.2x vanilla on
the CPU model, <= 2.0x on the GPU (ResNet-50 224 px, bf16, batch SSIR_BENCH_BATCH).

The floor is the sum of the passes exact SSIR needs, each timed in this run on the same model and
batch: 3 forwards (with graph), 2 input-only backwards, and the full backward of the clean and the
adversarial graphs (2 full backwards). Goals: exact SSIR <= 1.10 x floor, >= 1.25 x faster than
naive. Model: a small CNN with BatchNorm on CPU (batch 128 x 3 x 32 x 32); ResNet-50 at 224 x 224,
batch SSIR_BENCH_BATCH (default 64), bf16 autocast on a GPU when torchvision is installed.
"""
import os

import pytest
import torch
from torch import nn

from harness import Bench
from ssir_fast import SSIRLoss
from ssir_fast.imbalance import LabelBins
from ssir_fast.losses import weighted_l1
from ssir_fast.reference import naive_ssir_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROUNDS = int(os.environ.get("SSIR_BENCH_ROUNDS", "7"))
FAST_MODES = {
    "n_steps=1": dict(n_steps=1),
    "subset=0.5": dict(subset=0.5),
    "bf16": dict(perturb_autocast=torch.bfloat16),
    "n_steps=1+subset=0.5": dict(n_steps=1, subset=0.5),
    "n_steps=1+subset=0.25": dict(n_steps=1, subset=0.25),
}


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
        torch.set_num_threads(1)   # steadier on a shared machine; the ratios are the subject
        model = small_cnn().to(device)
        x = torch.randn(128, 3, 32, 32, device=device)
        amp = torch.autocast("cpu", enabled=False)
    # long-tailed labels (exponential), so the subset draw has real rarity weights
    y = (torch.empty(x.shape[0], device=device).exponential_() * 15).clamp(max=99)
    return model.train(), x, y, amp


def pass_times(bench, model, x, y, amp):
    """Time each kind of pass SSIR needs, in isolation, on this model and batch (cases "forward",
    "input_backward" and "full_backward" of `bench`); returns their medians."""
    x_req = x.detach().requires_grad_(True)

    def fwd():
        with amp:
            return model(x_req)

    def loss():
        return weighted_l1(fwd().float().squeeze(1), y)

    t_fwd = bench.case("forward", fwd, repeats=5).median
    t_in = bench.case("input_backward", loss, mode="backward", repeats=5,
                      grad_inputs=(x_req,)).median
    t_full = bench.case("full_backward", loss, mode="backward", repeats=5, warmup=0).median
    model.zero_grad(set_to_none=True)
    return t_fwd, t_in, t_full


@pytest.mark.parametrize("device", DEVICES)
def test_ssir_step(benchmark, device):
    model, x, y, amp = setup_case(device)
    bins = LabelBins(0.0, 1.0, 100)
    counts = bins.counts(y.cpu())

    def vanilla():
        model.zero_grad(set_to_none=True)
        with amp:
            out = model(x)
        weighted_l1(out.float().squeeze(1), y).backward()

    def ssir_step(loss_fn):
        def step():
            model.zero_grad(set_to_none=True)
            with amp:
                res = loss_fn(model, x, y)
            res.loss.backward()
        return step

    def naive():
        model.zero_grad(set_to_none=True)
        with amp:
            loss, _, _ = naive_ssir_loss(model, x, y, bin_width=1.0, epsilon=1e-3, lam=0.1)
        loss.backward()

    common = dict(bin_width=1.0, epsilon=1e-3, lam=0.1, bins=bins, bin_counts=counts)
    exact = ssir_step(SSIRLoss(**common))
    providers = {"exact": exact, "vanilla": vanilla, "naive": naive}
    providers.update({name: ssir_step(SSIRLoss(**common, **kw)) for name, kw in FAST_MODES.items()})
    b = Bench(benchmark, f"ssir_step/{device}", device, batch=list(x.shape))
    ts = b.cases(providers, repeats=ROUNDS, warmup=1)
    t = {name: ts[name].median for name in providers}
    best = {name: ts[name].min for name in providers}
    t_fwd, t_in_bwd, t_full_bwd = pass_times(b, model, x, y, amp)
    floor = 3 * t_fwd + 2 * t_in_bwd + 2 * t_full_bwd
    fields = dict(rounds=ROUNDS,
                  **{f"{name}_ms": v * 1e3 for name, v in t.items()},
                  forward_ms=t_fwd * 1e3, input_backward_ms=t_in_bwd * 1e3,
                  full_backward_ms=t_full_bwd * 1e3, floor_ms=floor * 1e3,
                  **{f"{name}_over_vanilla": v / t["vanilla"] for name, v in t.items()
                     if name != "vanilla"},
                  **{f"{name}_over_vanilla_best": v / best["vanilla"] for name, v in best.items()
                     if name != "vanilla"},
                  floor_over_vanilla=floor / t["vanilla"], exact_over_floor=t["exact"] / floor,
                  naive_over_exact=t["naive"] / t["exact"],
                  images_per_s_vanilla=x.shape[0] / t["vanilla"],
                  images_per_s_exact=x.shape[0] / t["exact"])
    b.finish(**fields)
