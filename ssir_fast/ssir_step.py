"""The pieces of one SSIR step around `SSIRLoss` (ssir.py): what a step returns (`SSIRResult`),
the step-1 input gradient taken from the clean graph without giving it up, the per-dimension
widths of vector targets, the rarity-proportional subset draw of the fast mode, the checks of
a step's arguments and of what the clean pass returned, whether a CPU has matrix kernels for
bf16 passes, and the perturbation call of each step."""
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .losses import check_weight
from .ops._common import require_positive, under_transform, use_kernel
from .ops.perturb import perturb, perturb_kernel, perturb_torch

__all__ = ["SSIRResult", "widths", "no_donated_buffers", "input_grad", "draw_subset",
           "check_inputs", "check_outputs", "cpu_has_kernels", "perturb_step"]


@dataclass
class SSIRResult:
    """What one SSIR step computed. `loss` = supervised + lam * consistency.

    The diagnostics `similarity`, `perturbation`, `output_change` and `radius` are formed when
    first read (then kept): about fifteen small tensor ops, which on a CPU cost as much as a
    5 % larger model, and which a loop that never reads them does not pay. They read the step's
    tensors (the batch rows, x~, f(x~), f(x)) as they were: one changed in place since the step
    raises instead of giving a wrong value."""
    loss: torch.Tensor
    pred: torch.Tensor          # clean predictions f(x), with graph
    supervised: torch.Tensor    # mean_i w_i D_R(pred_i, y_i)
    consistency: torch.Tensor   # mean_i D(f(x~_i), y~_i)
    x_adv: torch.Tensor         # the perturbed inputs x~ (detached; the subset's rows)
    target: torch.Tensor        # y~ = stopgrad(f(x)) + z (all rows)
    index: Optional[torch.Tensor] = None  # rows of the batch in x_adv (subset), None = all
    features: Optional[torch.Tensor] = None  # what the clean call returned next to pred (`call`)
    # the modules whose parameters `backward()` differentiates (the model, a learnable base loss)
    owners: tuple = field(default=(), repr=False)
    # () -> (similarity, perturbation, output_change, radius), and the tensors it reads
    diagnose: Optional[Callable] = field(default=None, repr=False, compare=False)
    reads: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        self._versions = tuple(t._version for t in self.reads)
        self._diagnostics = None

    def _diagnosed(self, k):
        if self._diagnostics is None:
            if self.diagnose is None:
                raise AttributeError("this SSIRResult has no diagnostics")
            if tuple(t._version for t in self.reads) != self._versions:
                raise RuntimeError("SSIRResult: a tensor of the step (the batch x, x~, f(x) or "
                                   "f(x~)) was changed in place after the step, so its "
                                   "diagnostics can no longer be formed; read them before "
                                   "changing it")
            self._diagnostics = self.diagnose()
            self.diagnose, self.reads = None, ()
        return self._diagnostics[k]

    @property
    def similarity(self) -> torch.Tensor:
        """Fraction of perturbed samples with D(f(x), f(x~)) < delta (Definition 1)."""
        return self._diagnosed(0)

    @property
    def perturbation(self) -> torch.Tensor:
        """mean_i ||x~_i - x_i|| / ||x_i|| (||x~_i - x_i|| where x_i = 0)."""
        return self._diagnosed(1)

    @property
    def output_change(self) -> torch.Tensor:
        """mean_i mean_j |f(x~)_ij - f(x)_ij| / dy_j."""
        return self._diagnosed(2)

    @property
    def radius(self) -> torch.Tensor:
        """eps per perturbed sample [k] (float32; eps_i with epsilon="auto")."""
        return self._diagnosed(3)

    def backward(self, inputs=None):
        """`loss.backward()` for the trained parameters only: `inputs` (default: every parameter
        of the model, and of `base_loss` if it is a module, that requires grad). Step 1 took the
        input gradient of the clean pass from the same graph, so a plain `loss.backward()` also
        forms d loss / d x there (the first layer's input-gradient product), which nothing reads;
        naming the parameters skips it. A leaf outside those modules that should get a gradient
        goes in `inputs`."""
        if inputs is None:
            inputs = [p for m in self.owners for p in m.parameters() if p.requires_grad]
        self.loss.backward(inputs=list(inputs) or None)


def widths(value, name):
    """A positive number (float), or a sequence of them (tuple: one per output dimension)."""
    if isinstance(value, (tuple, list, torch.Tensor)):
        vals = value.tolist() if isinstance(value, torch.Tensor) else list(value)
        if not isinstance(vals, list):   # a 0-d tensor: one number
            return require_positive(vals, name)
        if not vals:
            raise ValueError(f"{name} must be a number or a non-empty sequence of numbers, got "
                             f"{value!r}")
        vals = tuple(require_positive(v, f"{name}[{k}]") for k, v in enumerate(vals))
        return vals[0] if len(vals) == 1 else vals   # one dimension: the scalar rule
    return require_positive(value, name)


class no_donated_buffers:
    """torch.compile'd backwards compiled inside keep their buffers (retain_graph works). The
    flag set and put back by hand: `config.patch` costs ~30 us, twice per SSIR step. Nothing to
    do while torch's compiler was never loaded (torch.compile loads it when it wraps a model or
    function): then nothing in the process is compiled."""

    def __enter__(self):
        self.before = False
        if not _compiler_loaded():
            return self
        import torch._functorch.config as functorch_config   # here: 20 ms of `import ssir_fast`
        self.config, self.before = functorch_config, functorch_config.donated_buffer
        if self.before:
            functorch_config.donated_buffer = False
        return self

    def __exit__(self, *exc):
        if self.before:
            self.config.donated_buffer = self.before
        return False


def _compiler_loaded():
    return "torch._dynamo" in sys.modules


def input_grad(d1, x_in, cotangent=None):
    """grad of d1 w.r.t. x_in (d1 a scalar, or any output with its `cotangent`), keeping the
    graph for the final backward. Called inside `no_donated_buffers` (SSIRLoss.forward's scope):
    a backward compiled lazily, at this first call, keeps its buffers."""
    try:
        return torch.autograd.grad(d1, x_in, cotangent, retain_graph=True)
    except RuntimeError as e:
        if "donated buffers" not in str(e):
            raise
        raise RuntimeError(
            "SSIRLoss: the model's compiled backward donates its buffers, so the clean graph "
            "cannot be kept for the SSIR steps. It was compiled outside SSIRLoss (SSIRLoss "
            "compiles its own calls without donated buffers): set "
            "torch._functorch.config.donated_buffer = False before the first compiled call, or "
            "let the first training call go through SSIRLoss") from e


def draw_subset(rarity, fraction, generator=None, check=True, floor=True):
    """k = max(1, round(fraction * N)) distinct row indices (sorted), drawn one after another,
    each with probability proportional to `rarity` among the rows not drawn yet (successive
    sampling, `torch.multinomial` without replacement). Rows of rarity 0 are drawn last (a floor
    of 1e-12 of the largest weight keeps them drawable; all zero: uniform). `check`: refuse NaN,
    inf and negative weights (one host read; the draw itself reads nothing back). `floor=False`
    for weights known to be positive (bin rarities 1 / max(count, 1)): no floor is added."""
    if rarity.dim() != 1 or rarity.requires_grad or rarity.dtype != torch.float32:
        rarity = rarity.detach().reshape(-1).float()
    n = rarity.numel()
    k = max(1, int(round(fraction * n)))
    if k >= n:
        return torch.arange(n, device=rarity.device)
    if check and not bool((torch.isfinite(rarity) & (rarity >= 0)).all()):
        raise ValueError("rarity must be finite and >= 0")
    w = rarity
    if floor:
        top = rarity.max()
        w = rarity + torch.where(top > 0, top * 1e-12, 1.0)
    # torch.multinomial(w, k, replacement=False) written out: its algorithm (the k largest
    # w_i / q_i, q_i ~ Exp(1): successive sampling), the same random draws and so the same
    # rows, without its validity checks, which read the data back (two device syncs on a GPU)
    q = torch.empty_like(w).exponential_(1, generator=generator)
    return torch.topk(w / q, k).indices.sort().values


def check_inputs(model, x, y, call):
    """The arguments of an SSIR step before any pass runs."""
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    if call is None and not callable(model):
        raise TypeError(f"model must be a callable module, got {type(model).__name__}")


def check_outputs(x, y, pred, noise, weight, validate):
    """What the clean pass returned against the labels, noise and weights of the step (the
    values of y, x and weight read only with `validate`: a host read)."""
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"SSIRLoss: the model returned a {type(pred).__name__}; it must "
                        f"return the prediction tensor (for a model that returns more, pass "
                        f"call=lambda x, rows, clean: (prediction, features))")
    if y.numel() != pred.numel():
        raise ValueError(f"y has {y.numel()} elements but the model's output has shape "
                         f"{tuple(pred.shape)}")
    if y.dim() > 0 and y.shape[0] != pred.shape[0]:
        # same size, different batch: reshaping would pair labels with the wrong samples
        raise ValueError(f"y has shape {tuple(y.shape)} but the model's output has shape "
                         f"{tuple(pred.shape)}: y needs one row per sample ({pred.shape[0]})")
    if validate and not bool(torch.isfinite(y).all() & torch.isfinite(x).all()):
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or inf labels")
        raise ValueError("x contains NaN or inf inputs (the perturbation would be NaN)")
    if noise is not None and noise.shape != pred.shape:
        raise ValueError(f"noise must have the shape of the model's output "
                         f"{tuple(pred.shape)}, got {tuple(noise.shape)}")
    if weight is not None:
        check_weight(weight, pred, validate)


def _native_cpu_kernels(dtype):
    """Whether oneDNN has matrix kernels for `dtype` on this CPU (AVX512 / AVX512-BF16 / AMX);
    True where torch cannot tell."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported",
             torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return True


def cpu_has_kernels(dtype):
    """Whether this CPU runs `dtype` matrix products natively (perturb_autocast's passes). Where
    it does not, they would run emulated at several times the cost of float32 (measured 8x on the
    benchmark MLP on an AVX2 CPU): SSIRLoss keeps its passes in float32 there and says so once."""
    if _native_cpu_kernels(dtype):
        return True
    warnings.warn(f"SSIRLoss(perturb_autocast={dtype}): this CPU has no native {dtype} matrix "
                  f"kernels ({torch.backends.cpu.get_cpu_capability()}); emulated, the "
                  f"perturbation passes would be slower than float32, so they run in float32 "
                  f"here. The option speeds up GPUs and CPUs with AVX512 (BF16) or AMX",
                  RuntimeWarning, stacklevel=6)   # the caller of SSIRLoss(...)(model, x, y)
    return False


def perturb_step(x, g, eps, lo, hi):
    """x~ = clip(x + eps_i g / ||g||) for an SSIR step. Per-sample radii (epsilon="auto") off the
    CPU take the eager formula: the kernel checks a radius tensor on the host (a device sync per
    step), and SSIRLoss.radius makes them finite and >= 0 by construction."""
    radii = isinstance(eps, torch.Tensor)
    if radii and x.device.type != "cpu":
        return perturb_torch(x, g, 1.0, lo, hi, eps)
    if use_kernel(x.device) and not torch.compiler.is_compiling() and not under_transform(x, g):
        # x and g need no gradient and the bounds are converted already: the kernel directly,
        # without `perturb`'s argument conversion and the op's autograd layer (18 of 27 us a
        # call on a [64, 128] batch)
        return perturb_kernel(x, g, 1.0 if radii else float(eps), lo, hi, eps if radii else None)
    return perturb(x, g, eps, lo, hi)
