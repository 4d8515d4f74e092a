"""Full training step on the default data set: vanilla vs SSIR vs naive SSIR, images/s.

    pytest benchmarks/bench_train.py --benchmark-only -s

One step = next batch from the default data loader (16 px rotated digits, batch 128, no
augmentation: the `ssir-fast train` default) + forward + loss + backward + Adam step, with the
default model (the narrow CNN of `ssir_fast.train.models`, width 16). Providers:
- vanilla: weighted L1;
- ssir: `ssir_fast.SSIRLoss` (clean-graph step 1, fused perturbation op, scratch buffers);
- naive: `ssir_fast.reference.naive_ssir_loss` (literal Algorithm 1: no-grad forward for y~, a fresh
  forward per step, parameter gradients computed and thrown away).
The three run interleaved (round robin, `harness.Bench.cases`) in the same process, so the
machine's load affects them alike; each figure is the median over rounds. On a GPU (when present) the same step runs
ResNet-50 (torchvision's, else the built-in one) at 224 x 224, batch SSIR_BENCH_BATCH (default
256), bf16 autocast, channels_last, on random inputs (the loader is not the subject there).
"""
import os

import pytest
import torch

from harness import Bench
from ssir_fast import SSIRLoss
from ssir_fast.losses import weighted_l1
from ssir_fast.reference import naive_ssir_loss

ROUNDS = int(os.environ.get("SSIR_BENCH_ROUNDS", "12"))


def _cpu_case():
    from ssir_fast.data import load_dataset, make_loader
    from ssir_fast.train.models import build_model
    torch.set_num_threads(1)   # as `ssir-fast train` on the default data (--threads 1)
    ds = load_dataset("default", image_size=16, progress=False)
    loader = make_loader(ds, "train", 128, backend="torch", augment=False, num_workers=0)
    torch.manual_seed(0)
    model = build_model("cnn", (3, 16, 16), 16)
    model.set_output_range(float(ds.train_labels.mean()), float(ds.train_labels.std()))
    batches = iter_forever(loader)
    lo, hi = (torch.tensor(b) for b in ds.clip_bounds())
    return model.train(), (lambda: next(batches)), torch.autocast("cpu", enabled=False), lo, hi, 128


def iter_forever(loader):
    while True:
        yield from loader


def _gpu_case():
    # ResNet-50 (torchvision's when installed, else the built-in one of ssir_fast.train.models)
    from ssir_fast.train.models import build_model
    n = int(os.environ.get("SSIR_BENCH_BATCH", "256"))
    model = build_model("resnet50", (3, 224, 224)).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(n, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.rand(n, 1, device="cuda") * 100
    w = torch.ones_like(y)
    return (model.train(), lambda: (x, y, w), torch.autocast("cuda", dtype=torch.bfloat16),
            -1.0, 1.0, n)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_train_step(benchmark, device):
    model, next_batch, amp, lo, hi, n = _cpu_case() if device == "cpu" else _gpu_case()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ssir = SSIRLoss(1.0, 1e-3, 0.1, clip_min=lo, clip_max=hi)

    def step(kind):
        x, y, w = next_batch()
        opt.zero_grad(set_to_none=True)
        with amp:
            if kind == "vanilla":
                loss = weighted_l1(model(x).float(), y, w)
            elif kind == "ssir":
                loss = ssir(model, x, y, weight=w).loss
            else:
                loss = naive_ssir_loss(model, x, y, 1.0, 1e-3, 0.1, clip_min=lo, clip_max=hi,
                                       weight=w)[0]
        loss.backward()
        opt.step()

    kinds = ("ssir", "vanilla", "naive")
    b = Bench(benchmark, f"train_step/{device}", device, batch=n)
    ts = b.cases({k: (lambda k=k: step(k)) for k in kinds}, repeats=ROUNDS)
    med = {k: t.median for k, t in ts.items()}
    b.finish(rounds=ROUNDS, **{f"images_per_s_{k}": n / med[k] for k in kinds},
             ssir_over_vanilla=med["ssir"] / med["vanilla"],
             naive_over_vanilla=med["naive"] / med["vanilla"],
             naive_over_ssir=med["naive"] / med["ssir"])
