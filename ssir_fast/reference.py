"""Readable reference implementations, independent of the fused kernels.

- `perturb_reference`: the perturbation update in float64, one sample at a time.
- `naive_ssir_loss`: a literal transcription of Algorithm 1 as a research script would write it
  (a separate no-grad forward for the target, a fresh forward for step 1, parameter gradients
  computed by `.backward()` and thrown away). It is the correctness reference for SSIRLoss and the
  "naive" baseline of the benchmarks. It does not protect BatchNorm statistics or RNG streams.
"""
import torch

from .losses import distance_per_sample, weighted_l1

__all__ = ["perturb_reference", "naive_ssir_loss"]


def perturb_reference(x, g, epsilon, clip_min=None, clip_max=None):
    """float64: out_i = clip(x_i + eps * g_i / ||g_i||_2), r_i = 0 where ||g_i|| = 0."""
    xd, gd = x.detach().double(), g.detach().double()
    out = torch.empty_like(xd)
    for i in range(xd.shape[0]):
        norm = torch.sqrt((gd[i] * gd[i]).sum())
        r = gd[i] * (epsilon / norm) if norm > 0 else torch.zeros_like(gd[i])
        v = xd[i] + r
        for bound, op in ((clip_min, torch.maximum), (clip_max, torch.minimum)):
            if bound is None:
                continue
            b = torch.as_tensor(bound, dtype=torch.float64, device=xd.device)
            if b.numel() > 1:  # per channel: v has shape [C, ...]
                b = b.reshape((-1,) + (1,) * (v.dim() - 1))
            v = op(v, b)
        out[i] = v
    return out


def naive_ssir_loss(model, x, y, bin_width=1.0, epsilon=1e-3, lam=0.1, distance="l1", n_steps=2,
                    target="noisy", clip_min=None, clip_max=None, base_loss=None, weight=None,
                    noise=None, huber_beta=1.0):
    """Algorithm 1, literally. Returns (loss, pred, x_adv); call loss.backward() to train."""
    base_loss = base_loss or weighted_l1
    D = lambda a, b: distance_per_sample(distance, a, b, huber_beta).mean()  # noqa: E731

    with torch.no_grad():
        y_hat = model(x)
    if target == "noisy":
        z = noise if noise is not None else (torch.rand_like(y_hat) * 2 - 1) * bin_width
        y_tilde = y_hat + z
    else:
        y_tilde = y_hat

    def clip(v):
        if clip_min is None and clip_max is None:
            return v
        shape = (1, -1) + (1,) * (v.dim() - 2)
        lo = None if clip_min is None else torch.as_tensor(clip_min, dtype=v.dtype, device=v.device)
        hi = None if clip_max is None else torch.as_tensor(clip_max, dtype=v.dtype, device=v.device)
        lo = lo.reshape(shape) if lo is not None and lo.numel() > 1 else lo
        hi = hi.reshape(shape) if hi is not None and hi.numel() > 1 else hi
        return torch.clamp(v, lo, hi)

    def step(point):
        saved = [p.grad for p in model.parameters()]
        r = torch.zeros_like(point, requires_grad=True)
        D(model(point + r), y_tilde).backward()  # parameter gradients are computed, then dropped
        for p, s in zip(model.parameters(), saved):
            p.grad = s
        g = r.grad
        norm = g.reshape(g.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (g.dim() - 1))
        direction = torch.where(norm > 0, g / torch.where(norm > 0, norm, torch.ones_like(norm)),
                                torch.zeros_like(g))
        return clip(x + epsilon * direction).detach()

    x_adv = x
    for _ in range(n_steps):
        x_adv = step(x_adv)
    pred = model(x)
    supervised = base_loss(pred, y.reshape(pred.shape), weight)
    consistency = D(model(x_adv), y_tilde)
    return supervised + lam * consistency, pred, x_adv
