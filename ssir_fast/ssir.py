"""The SSIR loss: supervised loss + lambda * consistency under a bounded adversarial perturbation.

Algorithm 1 of the paper (docs/algorithm.md, section 3), for a batch of M samples:

    z   ~ U(-dy, dy)                     (target="noisy"; z = 0 for target="clean", Eq. 13)
    y^  = f(x),   y~ = stopgrad(y^) + z
    g1  = grad_x D(f(x), y~)             taken from the clean forward's graph (no extra forward)
    x1  = clip(x + eps * g1 / ||g1||)
    g2  = grad_x1 D(f(x1), y~)           input gradient only: no parameter gradients
    x~  = clip(x + eps * g2 / ||g2||)    from x, so ||x~ - x|| <= eps
    L   = mean_i w_i D_R(y^_i, y_i) + lam * mean_i D(f(x~_i), y~_i)

Options beyond the paper (each opt-in; the defaults are Algorithm 1):

- epsilon=0: x~ = x, so the consistency term is D(f(x), y~) = D(f(x), f(x) + z), the output noise
  alone (an ablation: what part of any gain comes from the perturbation).
- epsilon="auto": a radius per sample from the step-1 gradient, eps_i = rho * delta / ||g1_i||
  (capped at eps_max), so to first order D_i changes by at most rho * delta in any direction
  (Cauchy-Schwarz; docs/algorithm.md, section 3). No extra pass: g1 is already computed.
- n_steps=1: x~ = x1 (one forward and one input-only backward fewer).
- subset=rho: steps 2..n and the consistency forward run on k = max(1, round(rho * M)) samples
  drawn without replacement, each draw with probability proportional to the sample's rarity (the
  inverse training count of its label bin; successive sampling), so rare labels get the
  consistency term more often. The consistency mean is over the drawn samples.
- perturb_autocast=torch.bfloat16: steps 2..n (the passes that only find the direction) run under
  autocast in that dtype when the model trains in fp32; the consistency pass stays in the model's
  precision. On a CPU without matrix kernels for the dtype they stay fp32 (warned once).

Diagnostics returned with every step, formed when first read (over the samples that got the
consistency term): similarity rate (Definition 1), mean ||x~ - x|| / ||x|| and mean
|f(x~) - f(x)| / dy (`ssir_fast.ssir_diagnostics`).

Vector targets (outputs [N, D], D > 1): D(a, b) is the mean over the D outputs, `bin_width` (and
`delta`) may be one width per dimension, and z_ij ~ U(-dy_j, dy_j) per dimension. A pair is
similar (Definition 1) when every dimension is within its bin, D(f(x~)_j, f(x)_j) < delta_j for
all j (similarity="dims", the default), or when ||f(x~) - f(x)||_2 < delta (similarity=
"euclidean", delta one number, default the smallest bin width). Auto-epsilon uses the tightest
threshold of the rule: min_j delta_j ("dims") or delta ("euclidean").

The perturbation passes (f(x1), f(x~)) run on scratch copies of the model's buffers and with the
RNG state of the clean forward (`ssir_fast._state`), so BatchNorm running statistics, num_batches_tracked, any other
buffer and the RNG streams end exactly as after the clean forward alone, and dropout draws the
same masks in every pass (with subset, the passes see only the drawn rows: their dropout masks
are fresh draws, and every training-mode BatchNorm layer normalises them with the clean forward's
whole-batch statistics, which that forward's BatchNorm computed: `ssir_fast._batchnorm`).
"""
import contextlib
from typing import Callable, Optional

import torch

from ._batchnorm import batchnorm_layers, batchnorm_passes
from ._state import RngSnapshot, scratch_buffers
from .losses import DISTANCES, _elementwise, distance_per_sample, weighted_l1
from .ops.perturb import clip_bound
from .ops._common import require_finite_nonneg, require_positive
from .ssir_diagnostics import diagnostics
from .ssir_step import SSIRResult, check_inputs, check_outputs, draw_subset, input_grad, \
    no_donated_buffers, perturb_step, cpu_has_kernels, widths

__all__ = ["SSIRLoss", "SSIRResult", "scratch_buffers", "draw_subset"]


class SSIRLoss(torch.nn.Module):
    """Self-supervised imbalanced regression loss (drop-in next to a supervised loss).

    Args:
        bin_width: label bin length dy (1 year for age, 0.1 m for depth); the noise range and
            the default similarity threshold delta. For vector outputs [N, D] a number (every
            dimension) or a sequence of D widths.
        epsilon: perturbation radius (L2 per sample), >= 0, or "auto" (eps_i = rho * delta /
            ||g1_i||, see the module docstring). Paper: 1e-3 (age), 5e-4 (depth).
        lam: weight of the consistency term. Paper: 0.1 (SQINV+SSIR), 1.0, 2.5.
        distance: consistency distance D: "l1", "mse" or "huber" (mean over output elements).
        n_steps: adversarial steps (>= 1; 2 in the paper).
        target: "noisy" (Algorithm 1) or "clean" (Eq. 13, z = 0; the step-1 gradient of an L1/MSE
            distance is then zero at r = 0, so x~ = x: kept for ablations).
        clip_min, clip_max: valid input range: None, floats or per-channel [C] tensors.
        base_loss: supervised loss `base_loss(pred, y, weight)`; default weighted L1.
        delta: similarity threshold of Definition 1 (default: bin_width); for vector outputs a
            number or one per dimension (similarity="dims"), a number ("euclidean").
        similarity: rule of Definition 1 for vector outputs: "dims" (every dimension within its
            delta_j) or "euclidean" (||f(x~) - f(x)||_2 < delta); scalar outputs: both are
            D(f(x~), f(x)) < delta.
        huber_beta: beta of the Huber distance.
        preserve_state: run perturbation passes on scratch buffers and replayed RNG (default True).
        validate: check y for NaN/inf each call (one host sync on GPU).
        rho: auto-epsilon fraction of delta, in (0, 1]. Default 0.5: the first-order output change
            then equals the mean output noise E|z| = dy / 2, and the factor 2 left to the bound
            delta absorbs the second-order term (measured: BENCHMARKS.md, SSIR study).
        eps_max: optional cap on the auto radius (a tiny ||g1_i|| would otherwise give a huge
            radius, where the first-order model no longer holds).
        subset: None (every sample) or a fraction in (0, 1] of the batch for the consistency term.
        bins, bin_counts: label bins (`ssir_fast.imbalance.LabelBins`) and their training counts;
            the rarity 1 / max(count, 1) of each sample's bin weights the subset draw (uniform
            without them, or pass `rarity=` to forward).
        perturb_autocast: None or a dtype (torch.bfloat16): autocast for steps 2..n.
    """

    def __init__(self, bin_width=1.0, epsilon=1e-3, lam=0.1, distance="l1", n_steps=2,
                 target="noisy", clip_min=None, clip_max=None,
                 base_loss: Optional[Callable] = None, delta=None, huber_beta=1.0,
                 preserve_state=True, validate=True, rho=0.5, eps_max=None, subset=None,
                 bins=None, bin_counts=None, perturb_autocast=None, similarity="dims"):
        super().__init__()
        self.bin_width = widths(bin_width, "bin_width")
        if similarity not in ("dims", "euclidean"):
            raise ValueError(f"similarity must be 'dims' or 'euclidean', got {similarity!r}")
        self.similarity = similarity
        if isinstance(epsilon, str):
            if epsilon != "auto":
                raise ValueError(f"epsilon must be a float >= 0 or 'auto', got {epsilon!r}")
            self.epsilon = "auto"
        else:
            self.epsilon = require_finite_nonneg(epsilon, "epsilon")
        self.rho = require_positive(rho, "rho")
        if self.rho > 1:
            raise ValueError(f"rho must be in (0, 1] (a fraction of delta), got {rho}")
        self.eps_max = None if eps_max is None else require_positive(eps_max, "eps_max")
        if subset is not None:
            subset = require_positive(subset, "subset")
            if subset > 1:
                raise ValueError(f"subset must be a fraction in (0, 1], got {subset}")
        self.subset = subset
        self.bins = bins
        if (bins is None) != (bin_counts is None):
            raise ValueError("bins and bin_counts go together: give both or neither")
        if bins is not None:
            counts = torch.as_tensor(bin_counts, dtype=torch.float64).reshape(-1)
            if counts.numel() != bins.size:
                raise ValueError(f"bin_counts must have one count per bin ({bins.size}), got "
                                 f"{counts.numel()}")
            self.register_buffer("bin_rarity", 1.0 / counts.clamp(min=1.0), persistent=False)
        else:
            self.bin_rarity = None
        if perturb_autocast is not None and perturb_autocast not in (torch.bfloat16, torch.float16):
            raise ValueError(f"perturb_autocast must be None, torch.bfloat16 or torch.float16, got "
                             f"{perturb_autocast!r}")
        self.perturb_autocast = perturb_autocast
        self.lam = require_finite_nonneg(lam, "lam")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance = distance
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        self.n_steps = n_steps
        if target not in ("noisy", "clean"):
            raise ValueError(f"target must be 'noisy' or 'clean', got {target!r}")
        self.target = target
        self.clip_min = self._bound(clip_min, "clip_min")
        self.clip_max = self._bound(clip_max, "clip_max")
        if self.clip_min is not None and self.clip_max is not None:
            lo, hi = torch.broadcast_tensors(self.clip_min, self.clip_max)
            if bool((lo > hi).any()):
                raise ValueError(f"clip_min must be <= clip_max, got clip_min="
                                 f"{self.clip_min.tolist()} and clip_max={self.clip_max.tolist()}")
        if base_loss is not None and not callable(base_loss):
            raise TypeError(f"base_loss must be callable(pred, y, weight), got {base_loss!r}")
        self.base_loss = base_loss or weighted_l1
        if similarity == "euclidean":
            if isinstance(delta, (tuple, list, torch.Tensor)):
                raise ValueError(f"delta must be one number with similarity='euclidean' (a "
                                 f"radius), got {delta!r}")
            width = self.bin_width
            self.delta = (min(width) if isinstance(width, tuple) else width) if delta is None \
                else require_positive(delta, "delta")
        else:
            self.delta = self.bin_width if delta is None else widths(delta, "delta")
        if isinstance(self.bin_width, tuple) and isinstance(self.delta, tuple) and \
                len(self.delta) != len(self.bin_width):
            raise ValueError(f"delta must have one entry per dimension ({len(self.bin_width)}), "
                             f"got {len(self.delta)}")
        # auto-epsilon bounds the change by the tightest threshold of the rule
        self._auto_delta = min(self.delta) if isinstance(self.delta, tuple) else self.delta
        self.huber_beta = require_positive(huber_beta, "huber_beta")
        self.preserve_state = preserve_state
        self.validate = validate
        self._bounds_on = {}
        self._constants_on = {}
        self._cpu_native = None   # perturb_autocast on a CPU: whether it has kernels for it

    # The one conversion of clip bounds, shared with ops.perturb: CPU float32 [] or [C].
    _bound = staticmethod(clip_bound)

    def _bounds(self, device):
        # Bounds live on the input's device; converted once per device, not per call.
        if device not in self._bounds_on:
            move = lambda t: None if t is None else t.to(device)  # noqa: E731
            self._bounds_on[device] = (move(self.clip_min), move(self.clip_max))
        return self._bounds_on[device]

    def _on(self, device, name, make):
        # a constant moved to `device` once, not per step (a host-to-device copy waits for the
        # device)
        key = (name, device)
        if key not in self._constants_on:
            self._constants_on[key] = make()
        return self._constants_on[key]

    def _dist(self, a, b, distance=None):
        # fp32 at least (bf16/fp16 outputs under autocast), fp64 kept for fp64 models: the
        # distances widen their inputs themselves.
        return distance_per_sample(distance or self.distance, a, b, self.huber_beta)

    def _mean_dist(self, a, b):
        """mean_i D(a_i, b_i); with one output per row the mean of the elementwise distance (the
        same sum, without the per-row view)."""
        if a.numel() == a.shape[0]:
            return _elementwise(self.distance, a, b, self.huber_beta).mean()
        return self._dist(a, b).mean()

    def _per_dim(self, name, ref):
        """`bin_width` or `delta` as a multiplier of ref [N, D]: the float itself, or the per-dim
        tuple as a [D] tensor on ref's device (made once per device and dtype)."""
        value = getattr(self, name)
        if not isinstance(value, tuple):
            return value
        if ref.dim() != 2 or ref.shape[1] != len(value):
            raise ValueError(f"bin_width/delta give {len(value)} dimensions; the model's output "
                             f"must then be [N, {len(value)}], got {tuple(ref.shape)}")
        return self._on(ref.device, (name, ref.dtype),
                        lambda: torch.tensor(value, dtype=ref.dtype, device=ref.device))

    def _context(self, buffered, rng, layers, mode, stats):
        """Context for a perturbation pass: BatchNorm run the `mode` way (`ssir_fast._batchnorm`),
        scratch copies of the buffers the pass may write (`buffered`: the model's modules that
        have buffers), replayed RNG. A model with neither: the RNG replayed, nothing to enter."""
        if layers or buffered:
            return self._state_context(buffered, rng, layers, mode, stats)
        if self.preserve_state:
            rng.restore()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _state_context(self, buffered, rng, layers, mode, stats):
        with batchnorm_passes(layers, mode, stats) as untouched:
            if not self.preserve_state:
                yield
                return
            rng.restore()
            # eval-mode BatchNorm and the layers run without running statistics write no buffer
            owners = [m for m in buffered if m not in untouched and not (
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.training)]
            with scratch_buffers(None, owners):
                yield

    def _noisy_target(self, ref, noise):
        """y~ = ref + z with target="noisy": z given (`noise`) or drawn from U(-dy, dy); y~ = ref
        with target="clean" (a given noise is not used)."""
        if self.target != "noisy":
            return ref
        if noise is not None:
            return ref + noise.to(device=ref.device, dtype=ref.dtype)
        width = self._per_dim("bin_width", ref)
        if isinstance(width, float) and ref.dtype == torch.float32:
            # one op for (U * 2 - 1) * dy: the same draws and, in float32, the same values (the
            # kernel forms dy (2U - 1) exactly in float64 and rounds once, as the product does)
            return torch.empty_like(ref).uniform_(-width, width).add_(ref)
        return ref + (torch.rand_like(ref) * 2 - 1) * width

    def _step1_grad(self, pred, ref, y_tilde, x_in):
        """grad_x sum_i D(f(x_i), y~_i) from the clean graph. For L1 and one output per sample
        the cotangent sign(f(x) - y~) is formed directly (the values autograd would form through
        the distance, cast to pred's dtype as autograd casts it): 8 ops fewer a step."""
        if self.distance == "l1" and pred.numel() == pred.shape[0]:
            cotangent = torch.sign(ref - y_tilde).to(pred.dtype)
            return input_grad(pred, x_in, cotangent)
        return input_grad(self._dist(pred, y_tilde).sum(), x_in)

    def rarity(self, y):
        """Per-sample rarity: 1 / training count of the label's bin (mean over the elements of a
        dense label); all ones without bins."""
        n = y.shape[0]
        if self.bin_rarity is None:
            return torch.ones(n, device=y.device)
        # float32 (as the draw takes it), moved once per device
        table = self._on(y.device, "rarity", lambda: self.bin_rarity.to(y.device, torch.float32))
        if getattr(self.bins, "vector", False):   # a grid: one flat bin per row [N, D]
            return table.index_select(0, self.bins.index(y.detach().reshape(n, self.bins.dim)))
        y = y.detach() if y.requires_grad else y
        if y.numel() == n:   # one label per sample: its bin's rarity
            return table.index_select(0, self.bins.index(y.reshape(n)))
        idx = self.bins.index(y.reshape(n, -1))
        # a dense label: the mean over its elements, in float64 as the table
        wide = self._on(y.device, "rarity64", lambda: self.bin_rarity.to(y.device))
        return wide[idx].mean(dim=1).float()

    def radius(self, g):
        """The perturbation radius: epsilon, or with "auto" eps_i = rho * delta / ||g_i|| (0 where
        g_i = 0), capped at eps_max; a float32/float64 tensor [N] then."""
        if self.epsilon != "auto":
            return self.epsilon
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        norm = g.reshape(g.shape[0], -1).to(acc).norm(dim=1)
        eps = torch.where(norm > 0, self.rho * self._auto_delta / norm.clamp(min=1e-30),
                          torch.zeros_like(norm))
        if self.eps_max is not None:
            eps = eps.clamp(max=self.eps_max)
        return eps

    def _fast(self, device):
        """autocast for steps 2..n; none on a CPU without kernels for the dtype (asked once)."""
        if self.perturb_autocast is None:
            return contextlib.nullcontext()
        if device.type == "cpu":
            if self._cpu_native is None:
                self._cpu_native = cpu_has_kernels(self.perturb_autocast)
            if not self._cpu_native:
                return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.perturb_autocast)

    def forward(self, model, x, y, weight=None, noise=None, rarity=None,
                call=None) -> SSIRResult:
        """One SSIR step on batch (x, y). `weight`: re-weighting factors [N] (or y's shape);
        `noise`: z (default drawn); `rarity`: subset draw weights [N] (default from the bins).

        `model` is any nn.Module ``model(x) -> prediction``. `call(x, rows, clean)` says how each
        pass runs it, for models that take more than x (default ``(model(x), None)``): it
        returns the pair (prediction, features or None). `rows` are the rows of the batch that
        x holds (None: all of them; a subset pass sees fewer), `clean` is True for the clean
        forward only. The training step's call, for example, gives FDS the labels of `rows` in
        every pass (calibration with the current statistics) and asks for the features in the
        clean pass alone; they come back as `SSIRResult.features`. Nothing in any pass collects
        statistics: the perturbation passes run on scratch buffers (see the module docstring)
        and their features are not returned."""
        check_inputs(model, x, y, call)
        lo, hi = self._bounds(x.device)
        x = x.detach()
        rng_before = RngSnapshot(x.device) if self.preserve_state else None

        # Clean forward, keeping the graph w.r.t. x for step 1.
        x_in = x.detach().requires_grad_(True)  # an alias of x: no copy
        subset = self.subset is not None and self.subset < 1
        # BatchNorm once per pass: the clean forward's own statistics (with graph) serve the
        # subset passes; without subset the perturbation passes use their batch's statistics.
        modules = list(model.modules())   # one walk a step
        layers, bn_stats = batchnorm_layers(model, modules), {}
        buffered = [m for m in modules if m._buffers]
        mode = "use" if subset else "batch"
        if call is None:
            call = lambda inputs, rows, clean: (model(inputs), None)  # noqa: E731
        # Step 1 backpropagates through this graph with retain_graph=True, which a torch.compile'd
        # backward with donated buffers refuses: whatever compiles from the clean call to step 1
        # (a new shape recompiles) keeps its buffers. One scope for both: 10 us a scope.
        with no_donated_buffers():
            with batchnorm_passes(layers, "record" if subset else None, bn_stats):
                pred, features = call(x_in, None, True)
            check_outputs(x, y, pred, noise, weight, self.validate)
            # The supervised loss in at least float32 with the labels in their own precision: under
            # bf16 autocast, casting y to pred's dtype would round 301 to 300.
            acc = torch.promote_types(torch.promote_types(pred.dtype, y.dtype), torch.float32)
            y = y.reshape(pred.shape).to(acc)
            ref = pred.detach().to(torch.promote_types(pred.dtype, torch.float32))
            for name in ("bin_width", "delta"):   # per-dimension values need [N, D]: said now
                if isinstance(getattr(self, name), tuple):
                    self._per_dim(name, ref)
            y_tilde = self._noisy_target(ref, noise)
            supervised = self.base_loss(pred.to(acc), y, weight)
            rng_after = RngSnapshot(x.device) if self.preserve_state else None

            # Step 1: input gradient from the clean graph (kept for the final backward).
            (g,) = self._step1_grad(pred, ref, y_tilde, x_in)
        index = None
        if subset:
            # rarity from the bins is positive and finite by construction; a given one is checked
            # with validate (a host read) and floored (rows of rarity 0 stay drawable)
            index = draw_subset(self.rarity(y) if rarity is None else rarity, self.subset,
                                check=rarity is not None and self.validate,
                                floor=rarity is not None)
            # index_select: a third of x[index]'s cost on a [256, 128] batch
            x, g = x.index_select(0, index), g.index_select(0, index)
        y_t = y_tilde if index is None else y_tilde.index_select(0, index)
        eps = self.radius(g)
        x_adv = perturb_step(x, g, eps, lo, hi)

        # Steps 2..n: fresh forward at the current point, input gradient only.
        for _ in range(1, self.n_steps):
            xk = x_adv.requires_grad_(True)
            with self._context(buffered, rng_before, layers, mode, bn_stats), self._fast(x.device):
                dk = self._dist(call(xk, index, False)[0], y_t).sum()
                (g,) = torch.autograd.grad(dk, xk)
            x_adv = perturb_step(x, g, eps, lo, hi)

        # Consistency at x~ (parameters get gradients through this graph).
        x_adv = x_adv.detach()
        with self._context(buffered, rng_before, layers, mode, bn_stats):
            adv = call(x_adv, index, False)[0]
        if rng_after is not None:
            rng_after.restore()
        consistency = self._mean_dist(adv, y_t)
        loss = supervised + self.lam * consistency
        # the diagnostics, formed when first read (SSIRResult)
        adv = adv.detach()
        return SSIRResult(loss=loss, pred=pred, supervised=supervised, consistency=consistency,
                          x_adv=x_adv, target=y_tilde, index=index, features=features,
                          owners=tuple(m for m in (model, self.base_loss)
                                       if isinstance(m, torch.nn.Module)),
                          diagnose=lambda: diagnostics(self, adv, ref, index, x, x_adv, eps),
                          reads=(adv, ref, x, x_adv))
