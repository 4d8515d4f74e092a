"""perturb under torch.compile(fullgraph=True) and torch.export with every kind of clip bound
(None, float, int, list, tuple, 0-d tensor, 1-element tensor, per-channel [C] in float32 and
float64, module buffers) and per-sample radii, against the float64 reference; a NaN bound is
still refused in the traced graph; SSIRLoss with an inductor-compiled model over two batch sizes
equals the eager model."""
import pytest
import torch
from torch import nn

from ssir_fast import SSIRLoss
from ssir_fast.ops import perturb
from ssir_fast.reference import perturb_reference

C = 3
BOUNDS = {
    "none": (None, None), "float": (-0.7, 0.8), "int": (-1, 1),
    "list": ([-1.0, -0.2, 0.0], [1.0, 0.3, 0.5]),
    "tuple": ((-1.0, -0.2, 0.0), (1.0, 0.3, 0.5)), "0-d": (torch.tensor(-0.3), torch.tensor(0.4)),
    "1-element": (torch.tensor([-0.3]), torch.tensor([0.4])),
    "channels": (torch.tensor([-1.0, -0.2, 0.0]), torch.tensor([1.0, 0.3, 0.5])),
    "channels-f64": (torch.tensor([-1.0, -0.2, 0.0], dtype=torch.float64),
                     torch.tensor([1.0, 0.3, 0.5], dtype=torch.float64)),
    "one-sided": (torch.tensor([-1.0, -0.2, 0.0]), None)}


class Bounded(nn.Module):
    """The bounds as buffers (a model's normalisation limits, say)."""

    def __init__(self, lo, hi, eps):
        super().__init__()
        as_t = lambda b: None if b is None else torch.as_tensor(b, dtype=torch.float32)  # noqa: E731
        self.register_buffer("lo", as_t(lo))
        self.register_buffer("hi", as_t(hi))
        self.eps = eps

    def forward(self, x, g, eps_rows=None):
        return perturb(x, g, self.eps if eps_rows is None else eps_rows, self.lo, self.hi)


def _inputs(n=4):
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, C, 5, generator=g), torch.randn(n, C, 5, generator=g)


def _expect(x, g, eps, lo, hi):
    t = lambda b: None if b is None else torch.as_tensor(b, dtype=torch.float64)  # noqa: E731
    return perturb_reference(x, g, eps, t(lo), t(hi)).float()


@pytest.mark.parametrize("kind", list(BOUNDS))
def test_compile_fullgraph(kind):
    torch._dynamo.reset()
    lo, hi = BOUNDS[kind]
    backend = "inductor" if kind == "channels" else "aot_eager"
    fn = torch.compile(lambda x, g, eps: perturb(x, g, eps, lo, hi), fullgraph=True,
                       backend=backend)
    for n in (4, 7):                                     # a second shape recompiles
        x, g = _inputs(n)
        torch.testing.assert_close(fn(x, g, 0.5), _expect(x, g, 0.5, lo, hi))
        eps = torch.linspace(0.1, 0.9, n)
        torch.testing.assert_close(fn(x, g, eps), _expect(x, g, eps, lo, hi))
    # bounds as buffers of a compiled module
    mod = torch.compile(Bounded(lo, hi, 0.5), fullgraph=True, backend="aot_eager")
    x, g = _inputs()
    torch.testing.assert_close(mod(x, g), _expect(x, g, 0.5, lo, hi))


@pytest.mark.parametrize("kind", list(BOUNDS))
def test_export(kind):
    lo, hi = BOUNDS[kind]
    x, g = _inputs()
    eps = torch.linspace(0.1, 0.9, 4)
    program = torch.export.export(Bounded(lo, hi, 0.5), (x, g, eps))
    torch.testing.assert_close(program.module()(x, g, eps), _expect(x, g, eps, lo, hi))

    class Closure(nn.Module):                   # the bounds as constants of the program
        def forward(self, x, g):
            return perturb(x, g, 0.5, lo, hi)
    torch.testing.assert_close(torch.export.export(Closure(), (x, g)).module()(x, g),
                               _expect(x, g, 0.5, lo, hi))


def test_traced_nan_bound_is_refused():
    torch._dynamo.reset()
    x, g = _inputs()
    fn = torch.compile(lambda x, g, lo: perturb(x, g, 0.5, lo, None), fullgraph=True,
                       backend="aot_eager")
    fn(x, g, torch.zeros(C))
    with pytest.raises(RuntimeError, match="clip_min contains NaN"):
        fn(x, g, torch.tensor([0.0, float("nan"), 0.0]))
    program = torch.export.export(Bounded([-1.0] * C, None, 0.5), (x, g)).module()
    program.lo.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="clip_min contains NaN"):
        program(x, g)


def test_ssir_loss_with_an_inductor_compiled_model_and_two_batch_sizes():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    compiled = torch.compile(model)
    loss_fn = SSIRLoss(bin_width=1.0, epsilon=1e-2, clip_min=-2.0, clip_max=2.0)
    for n in (32, 20):
        x, y, z = torch.randn(n, 8), torch.randn(n), torch.rand(n, 1) - 0.5
        model.zero_grad()
        loss_fn(compiled, x, y, noise=z).loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        loss_fn(model, x, y, noise=z).loss.backward()
        for a, b in zip(got, (p.grad for p in model.parameters())):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
