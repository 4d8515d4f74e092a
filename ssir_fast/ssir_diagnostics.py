"""The diagnostics of one SSIR step (`SSIRResult` forms them when first read), over the k rows
that got the consistency term, from f(x~) (`adv`) and f(x) (`ref`, all rows; `index` picks the
perturbed ones):

    similarity    = (1/k) #{i : D(f(x~_i), f(x_i)) < delta}           (Definition 1)
    output_change = (1/k) sum_i mean_j |f(x~)_ij - f(x)_ij| / dy_j
    perturbation  = (1/k) sum_i ||x~_i - x_i|| / ||x_i||             (||x~_i - x_i|| where x_i = 0)
    radius        = eps_i per row (float32)

Vector outputs [k, D]: D is the mean over the D outputs, a pair is similar when every dimension
is within its delta_j (similarity="dims") or when ||f(x~_i) - f(x_i)||_2 < delta ("euclidean").
"""
import torch

from .losses import _elementwise, is_vector

__all__ = ["diagnostics", "similar"]


def similar(loss, adv, ref):
    """(mean |f(x~) - f(x)| / dy, Definition 1 per row) for `loss` (an `SSIRLoss`)."""
    if not is_vector(adv):
        one = adv.numel() == adv.shape[0]   # one output per row: no per-row mean to take

        def dist(kind):
            return _elementwise(kind, adv, ref, loss.huber_beta) if one else \
                loss._dist(adv, ref, kind)
        l1 = dist("l1")
        d = l1 if loss.distance == "l1" else dist(loss.distance)
        return l1.mean() / loss.bin_width, d < loss.delta
    dtype = torch.promote_types(torch.promote_types(adv.dtype, ref.dtype), torch.float32)
    adv, ref = adv.to(dtype), ref.to(dtype)
    change = ((adv - ref).abs() / loss._per_dim("bin_width", ref)).mean()
    if loss.similarity == "euclidean":
        return change, (adv - ref).norm(dim=1) < loss.delta
    d = _elementwise(loss.distance, adv, ref, loss.huber_beta)
    return change, (d < loss._per_dim("delta", ref)).all(dim=1)


@torch.no_grad()
def diagnostics(loss, adv, ref, index, x, x_adv, eps):
    """(similarity, perturbation, output_change, radius) of a step of `loss` (module docstring);
    x and x_adv are the perturbed rows, eps the radius (a float or per-row tensor)."""
    ref_t = ref if index is None else ref.index_select(0, index)
    change, close = similar(loss, adv, ref_t)
    similarity = close.float().mean()
    n = x.shape[0]
    xf, xa = (_f32(t if t.dim() == 2 else t.reshape(n, -1)) for t in (x, x_adv))
    moved = torch.linalg.vector_norm(xa - xf, dim=1)
    size = torch.linalg.vector_norm(xf, dim=1)
    # (moved / 0 is inf or NaN in the rows where() does not take)
    perturbation = torch.where(size > 0, moved / size, moved).mean()
    radius = (eps.float() if isinstance(eps, torch.Tensor)
              else torch.full((n,), eps, device=x.device))
    return similarity, perturbation, change, radius


def _f32(t):
    """t in float32 (no call where it is already)."""
    return t if t.dtype == torch.float32 else t.float()
