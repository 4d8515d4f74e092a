"""One SSIR training step in every mode vs a vanilla step, each against its pass-count cost model;
the naive (literal Algorithm 1) step and the pass floor of exact SSIR.

    pytest benchmarks/bench_ssir_step.py --benchmark-only -s

Cases, all in one run: `mlp` (CPU, no BatchNorm), `cnn` (CPU, a small CNN with BatchNorm, the
case the subset modes' BatchNorm handling is about) and `resnet50` (a GPU: ResNet-50 at 224 px,
bf16 autocast, channels_last, batch SSIR_BENCH_BATCH, default 256; skipped without a GPU or
torchvision). Providers are timed round robin in one process through `harness.Bench.cases` (the
machine's load hits them alike); each figure is the median over SSIR_BENCH_ROUNDS rounds (default
7) after one warm-up round; one CPU thread. One row per provider in benchmarks/results.jsonl:

- vanilla: forward + weighted L1 + backward; exact: `SSIRLoss` (2 steps, Algorithm 1), its
  backward as `res.backward()` (the model's parameters, as the training step; a plain
  `res.loss.backward()` also forms the clean pass's input gradient, timed once more for
  n_steps=1 + subset=0.25 as `plain_backward`, and with the step's diagnostics read, which
  are formed when first read, as `diagnostics_read`); minimal: that mode's passes written out with
  nothing else (uniform draw, no clipping, no diagnostics, no state kept, the subset's own
  BatchNorm statistics): what the hardware charges for the passes, against which `SSIRLoss`'s
  own work shows; naive: the literal transcription; the fast modes: n_steps=1, subset=0.5
  (consistency on half the batch, rarity-weighted draw), bf16 (steps 2..n under bf16 autocast, the model in fp32; on the GPU case
  the model already runs bf16, so it is the same as exact there), n_steps=1 + subset=0.5,
  n_steps=1 + subset=0.25.
- Cost model (forward 1, full backward 2, input-only backward 1; vanilla 3): a step of n steps on
  a fraction rho of the batch (1 without subset) costs 4 + rho (3 + 2 (n - 1)): the clean forward,
  step 1's input backward from the clean graph and the clean graph's full backward (4), then on
  rho of the batch a forward + input backward per further step and the consistency forward + full
  backward. Exact 9 (3.00x), n_steps=1 7 (2.33x), subset=0.5 6.5 (2.17x), n_steps=1 + subset=0.5
  5.5 (1.83x), n_steps=1 + subset=0.25 4.75 (1.58x).
- Per mode the row holds `over_vanilla` (measured), `model` (the cost model's ratio) and
  `overhead` = over_vanilla / model (`overhead_best`: the same from each provider's fastest
  round), and `over_floor`: the step against its passes priced at this run's measured pass times
  (`pass_floor`). Goals: overhead <= 1.10 for every mode on both CPU models; on the GPU case the
  fastest mode <= 2.0x vanilla.
- CPU memory: SSIR_BENCH_HEAP=keep makes glibc keep freed memory for the next step
  (`ssir_fast.cpu_heap.keep_freed_memory`, which `ssir-fast train` applies on the CPU); by
  default the figures include the page faults of memory mapped afresh every step.
- The floor of exact SSIR: the passes it needs, each timed in this run on the same model and batch
  (3 forwards, 2 input-only backwards, 2 full backwards); exact / floor and naive / exact.
"""
import os

import pytest
import torch
from torch import nn

from harness import Bench
from ssir_fast import SSIRLoss
from ssir_fast.cpu_heap import keep_freed_memory
from ssir_fast.imbalance import LabelBins
from ssir_fast.losses import weighted_l1
from ssir_fast.reference import naive_ssir_loss

ROUNDS = int(os.environ.get("SSIR_BENCH_ROUNDS", "7"))
MODES = {
    "exact": dict(),
    "n_steps=1": dict(n_steps=1),
    "subset=0.5": dict(subset=0.5),
    "bf16": dict(perturb_autocast=torch.bfloat16),
    "n_steps=1+subset=0.5": dict(n_steps=1, subset=0.5),
    "n_steps=1+subset=0.25": dict(n_steps=1, subset=0.25),
}
CASES = [("cpu", "mlp"), ("cpu", "cnn"), ("cuda", "resnet50")]
# the fastest mode once more with a plain `res.loss.backward()` (it also forms the clean pass's
# input gradient, which nothing reads): what `res.backward()` saves
PLAIN_MODE = "n_steps=1+subset=0.25"
PLAIN = "plain_backward"
# and once more reading the step's diagnostics (formed when first read), as the training CLI does
READ = "diagnostics_read"


HEAP = os.environ.get("SSIR_BENCH_HEAP", "default")
if HEAP == "keep" and not keep_freed_memory():
    HEAP = "default (mallopt unavailable)"


def cost_model(n_steps=2, subset=None, **_):
    """Step cost / vanilla cost: (4 + rho (3 + 2 (n_steps - 1))) / 3 (module docstring)."""
    rho = 1.0 if subset is None else subset
    return (4 + rho * (3 + 2 * (n_steps - 1))) / 3


def pass_floor(t_fwd, t_in, t_full, n_steps=2, subset=None, **_):
    """The same count with this run's measured pass times (the model with the hardware's own
    prices: on a CPU an input-only backward through BatchNorm and pooling costs more than a
    forward): (1 + rho n) forwards, (1 + rho (n - 1)) input backwards, (1 + rho) full backwards,
    a pass on rho of the batch taken as rho of a whole-batch pass."""
    rho = 1.0 if subset is None else subset
    return t_fwd * (1 + rho * n_steps) + t_in * (1 + rho * (n_steps - 1)) + t_full * (1 + rho)


def small_cnn():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(3, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.MaxPool2d(2), *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 1))


def mlp():
    return nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1))


def setup_case(device, name):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the ResNet-50 step benchmark needs a CUDA device")
    torch.manual_seed(0)
    if name == "resnet50":
        try:
            import torchvision
        except ImportError:
            pytest.skip("the ResNet-50 step benchmark needs torchvision")
        model = torchvision.models.resnet50(num_classes=1).to(device, memory_format=torch.channels_last)
        n = int(os.environ.get("SSIR_BENCH_BATCH", "256"))
        x = torch.randn(n, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        torch.set_num_threads(1)   # steadier on a shared machine; the ratios are the subject
        model, x = (small_cnn(), torch.randn(128, 3, 32, 32)) if name == "cnn" else \
            (mlp(), torch.randn(256, 128))
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


@pytest.mark.parametrize("device,name", CASES)
def test_ssir_step(benchmark, device, name):
    model, x, y, amp = setup_case(device, name)
    bins = LabelBins(0.0, 1.0, 100)
    counts = bins.counts(y.cpu())

    def vanilla():
        model.zero_grad(set_to_none=True)
        with amp:
            out = model(x)
        weighted_l1(out.float().squeeze(1), y).backward()

    def ssir_step(loss_fn, plain=False, read=False):
        def step():
            model.zero_grad(set_to_none=True)
            with amp:
                res = loss_fn(model, x, y)
            # res.backward(): the model's parameters only, as the training step's backward
            res.loss.backward() if plain else res.backward()
            if read:   # the diagnostics, formed when read, as the training CLI reads them
                return res.similarity, res.perturbation, res.output_change
        return step

    def naive():
        model.zero_grad(set_to_none=True)
        with amp:
            loss, _, _ = naive_ssir_loss(model, x, y, bin_width=1.0, epsilon=1e-3, lam=0.1)
        loss.backward()

    params = [p for p in model.parameters() if p.requires_grad]
    k = int(round(0.25 * x.shape[0]))

    def minimal():
        # n_steps=1 + subset=0.25 written out with nothing but its passes: clean forward, step
        # 1's input gradient, a uniform draw, x + eps g / ||g||, the subset's forward (its own
        # BatchNorm statistics) and one backward for the parameters
        model.zero_grad(set_to_none=True)
        x_in = x.detach().requires_grad_(True)
        with amp:
            pred = model(x_in).float()
        y_t = pred.detach() + (torch.rand_like(pred) * 2 - 1)
        sup = weighted_l1(pred.squeeze(1), y)
        (g,) = torch.autograd.grad((pred - y_t).abs().sum(), x_in, retain_graph=True)
        rows = torch.randperm(x.shape[0], device=x.device)[:k]
        xk, gk = x[rows], g[rows].reshape(k, -1)
        x_adv = xk + (1e-3 * gk / gk.norm(dim=1, keepdim=True)).reshape(xk.shape)
        with amp:
            adv = model(x_adv).float()
        (sup + 0.1 * (adv - y_t[rows]).abs().mean()).backward(inputs=params)

    # as the training step builds it: no per-call label check (a host read on a GPU)
    common = dict(bin_width=1.0, epsilon=1e-3, lam=0.1, bins=bins, bin_counts=counts,
                  validate=False)
    providers = {mode: ssir_step(SSIRLoss(**common, **kw)) for mode, kw in MODES.items()}
    providers = {"exact": providers.pop("exact"), "vanilla": vanilla, "naive": naive, **providers,
                 PLAIN: ssir_step(SSIRLoss(**common, **MODES[PLAIN_MODE]), plain=True),
                 READ: ssir_step(SSIRLoss(**common, **MODES[PLAIN_MODE]), read=True),
                 "minimal": minimal}
    b = Bench(benchmark, f"ssir_step/{name}/{device}", device, batch=list(x.shape), model=name,
              heap=HEAP)
    ts = b.cases(providers, repeats=ROUNDS, warmup=1)
    t = {mode: ts[mode].median for mode in providers}
    best = {mode: ts[mode].min for mode in providers}
    t_fwd, t_in_bwd, t_full_bwd = pass_times(b, model, x, y, amp)
    floor = 3 * t_fwd + 2 * t_in_bwd + 2 * t_full_bwd
    per_mode = {}
    for mode, kw in MODES.items():
        ratio, model_ratio = t[mode] / t["vanilla"], cost_model(**kw)
        per_mode.update({f"{mode}_over_vanilla": ratio, f"{mode}_model": model_ratio,
                         f"{mode}_overhead": ratio / model_ratio,
                         f"{mode}_overhead_best": best[mode] / best["vanilla"] / model_ratio,
                         f"{mode}_over_floor":
                             t[mode] / pass_floor(t_fwd, t_in_bwd, t_full_bwd, **kw)})
    print(f"\n{name}/{device} (heap: {HEAP}): vanilla {t['vanilla'] * 1e3:.1f} ms; "
          f"forward {t_fwd * 1e3:.1f}, input backward {t_in_bwd * 1e3:.1f}, full backward {t_full_bwd * 1e3:.1f} ms")
    print(f"{'mode':24s} {'x vanilla':>9s} {'model':>6s} {'overhead':>8s} {'(fastest)':>9s} "
          f"{'/ floor':>7s}")
    plain, read = t[PLAIN] / t["vanilla"], t[READ] / t["vanilla"]
    low = t["minimal"] / t["vanilla"]
    per_mode.update(plain_backward_over_vanilla=plain,
                    plain_backward_overhead=plain / cost_model(**MODES[PLAIN_MODE]),
                    diagnostics_read_over_vanilla=read,
                    diagnostics_read_overhead=read / cost_model(**MODES[PLAIN_MODE]),
                    minimal_over_vanilla=low, minimal_overhead=low / cost_model(**MODES[PLAIN_MODE]),
                    fastest_over_minimal=t[PLAIN_MODE] / t["minimal"])
    for mode in MODES:
        print(f"{mode:24s} {per_mode[f'{mode}_over_vanilla']:9.2f} {per_mode[f'{mode}_model']:6.2f} "
              f"{per_mode[f'{mode}_overhead']:8.2f} {per_mode[f'{mode}_overhead_best']:9.2f} "
              f"{per_mode[f'{mode}_over_floor']:7.2f}")
    print(f"{'  the same, loss.backward()':24s} {plain:9.2f} {cost_model(**MODES[PLAIN_MODE]):6.2f} "
          f"{per_mode['plain_backward_overhead']:8.2f}")
    print(f"{'  the same, diagnostics read':24s} {read:9.2f} {cost_model(**MODES[PLAIN_MODE]):6.2f} "
          f"{per_mode['diagnostics_read_overhead']:8.2f}")
    print(f"{'  its passes alone':24s} {low:9.2f} {cost_model(**MODES[PLAIN_MODE]):6.2f} "
          f"{per_mode['minimal_overhead']:8.2f}   (SSIRLoss / passes alone: "
          f"{per_mode['fastest_over_minimal']:.3f})")
    b.finish(rounds=ROUNDS, **{f"{mode}_ms": v * 1e3 for mode, v in t.items()}, **per_mode,
             naive_over_vanilla=t["naive"] / t["vanilla"], forward_ms=t_fwd * 1e3,
             input_backward_ms=t_in_bwd * 1e3, full_backward_ms=t_full_bwd * 1e3,
             floor_ms=floor * 1e3, floor_over_vanilla=floor / t["vanilla"],
             naive_over_exact=t["naive"] / t["exact"],
             fastest_over_vanilla=min(t[m] for m in MODES) / t["vanilla"],
             images_per_s_vanilla=x.shape[0] / t["vanilla"],
             images_per_s_exact=x.shape[0] / t["exact"])
