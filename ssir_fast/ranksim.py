"""RankSim (Gong et al. 2022): a regulariser that makes the ranking of feature similarities
follow the ranking of label similarities (docs/algorithm.md, section 5), with blackbox
differentiation of the ranks (Vlastelica et al. 2020). Label distances are |y_i - y_j|, or the
Euclidean ||y_i - y_j|| for vector targets [N, D]."""
import torch
import torch.nn.functional as F

__all__ = ["ranksim"]


def _rank_normalised(seq):
    """(rank + 1) / n along dim 1, rank 0 for the largest value. Ties as in the RankSim code
    (argsort(argsort(seq).flip(1)) with PyTorch's stable CPU sort): the later index ranks first,
    made deterministic on every device with a stable sort."""
    order = torch.argsort(seq, dim=1, stable=True).flip(1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(seq.shape[1], device=seq.device).expand_as(order))
    return (ranks + 1).to(seq.dtype) / seq.shape[1]


class _BlackboxRank(torch.autograd.Function):
    """Row-wise normalised ranks; backward by blackbox differentiation (Vlastelica et al. 2020):
    grad = -(rank(s) - rank(s + lam * grad_out)) / lam. The sign is the paper's: rank decreases
    as s grows, so a positive grad_out on an element yields a negative gradient (descent raises
    that element's similarity and lowers its rank); tests/test_losses.py checks it by hand."""

    @staticmethod
    def forward(ctx, seq, lam):
        rank = _rank_normalised(seq)
        ctx.lam = lam
        ctx.save_for_backward(seq, rank)
        return rank

    @staticmethod
    def backward(ctx, grad):
        seq, rank = ctx.saved_tensors
        perturbed = _rank_normalised(seq + ctx.lam * grad)
        return -(rank - perturbed) / (ctx.lam + 1e-8), None


def ranksim(features, y, gamma=100.0, lam=2.0, generator=None):
    """RankSim regulariser (Gong et al. 2022): gamma * sum_i mean_j (rank(S_i)_j - rank(-|y_i -
    y_j|)_j)^2 with S the cosine-similarity matrix of the features, over a sub-batch holding
    each distinct label once (a random representative per label; `generator` makes it
    reproducible). Vector targets y [N, D] use the Euclidean label distance ||y_i - y_j|| (a
    distinct label is a distinct row). Add it to the supervised loss; gradients flow into
    `features` only."""
    vector = isinstance(y, torch.Tensor) and y.dim() == 2 and y.shape[1] > 1 and \
        features.dim() >= 2 and y.shape[0] == features.shape[0]
    if not vector and (features.dim() < 2 or features.shape[0] != y.reshape(-1).shape[0]):
        raise ValueError(f"features must be [N, ...] with one label per row, got features "
                         f"{tuple(features.shape)} and y {tuple(y.shape)}")
    t = y if vector else y.reshape(-1)
    n = t.shape[0]
    uniq, inv = torch.unique(t, return_inverse=True, dim=0 if vector else None)
    if uniq.shape[0] < n:
        perm = torch.randperm(n, generator=generator).to(t.device)
        pos = torch.full((uniq.shape[0],), n, dtype=torch.long, device=t.device)
        pos.scatter_reduce_(0, inv[perm], torch.arange(n, device=t.device), "amin")
        pick = perm[pos]
        x, t = features[pick], t[pick]
    else:
        x = features
    z = F.normalize(x.reshape(x.shape[0], -1), dim=1)
    sim = z @ z.t()
    if vector:
        dist = ((t[:, None, :] - t[None, :, :]) ** 2).sum(dim=2).sqrt()
    else:
        dist = (t[:, None] - t[None, :]).abs()
    label_ranks = _rank_normalised(-dist.to(sim.dtype))
    feat_ranks = _BlackboxRank.apply(sim, float(lam))
    return gamma * ((feat_ranks - label_ranks) ** 2).mean(dim=1).sum()
