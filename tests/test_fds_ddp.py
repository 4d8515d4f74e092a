"""FDS statistics merged across DDP ranks: 2 gloo CPU processes, each fed part of the data, end
with the same statistics as one process fed everything."""
import os

import torch

from ssir_fast.fds import FDS
from ssir_fast.imbalance import LabelBins

BINS = LabelBins(0.0, 1.0, 12)
C = 5
STATE = ("running_mean", "running_var", "last_mean", "last_var", "smoothed_mean", "smoothed_var",
         "num_samples_tracked", "epoch")


def _data(epoch):
    """Per epoch: features with a large common offset (a naive sum-of-squares merge would lose
    digits) and labels over bins 0..9 (bins 10, 11 stay empty, filled from neighbours)."""
    g = torch.Generator().manual_seed(100 + epoch)
    n = 300
    y = torch.randint(0, 10, (n,), generator=g).double() + torch.rand(n, generator=g, dtype=torch.float64)
    f = 1e3 + torch.randn(n, C, generator=g) * (1 + y[:, None].float()) + y[:, None].float()
    return f, y


def _split(epoch, rank):
    """Uneven split: rank 0 gets ~3/4 of the samples, and every sample of bins 0 and 9 (so rank 1
    has empty bins); per-rank means weighted equally would be wrong."""
    f, y = _data(epoch)
    b = BINS.index(y)
    r = torch.arange(y.numel())
    to0 = (r % 4 != 3) | (b == 0) | (b == 9)
    keep = to0 if rank == 0 else ~to0
    return f[keep], y[keep]


def _make():
    return FDS(C, BINS, ks=5, sigma=2.0, start_update=0, start_smooth=1)


def _run_epochs(fds, rank, use_collect):
    for epoch in range(2):
        f, y = _split(epoch, rank) if rank is not None else _data(epoch)
        if use_collect:  # identity encoder over a loader of uneven batches
            loader = [(f[i:i + 37], y[i:i + 37]) for i in range(0, y.numel(), 37)]
            fds.collect(torch.nn.Identity(), loader, epoch)
        else:
            for i in range(0, y.numel(), 64):
                fds.update(f[i:i + 64], y[i:i + 64])
            fds.end_epoch(epoch)


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for use_collect in (False, True):
            fds = _make()
            _run_epochs(fds, rank, use_collect)
            torch.save({k: getattr(fds, k).clone() for k in STATE},
                       os.path.join(out_dir, f"rank{rank}_{int(use_collect)}.pt"))
    finally:
        dist.destroy_process_group()


def test_fds_statistics_merged_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp
    # the split really is uneven and leaves rank 1 with empty bins
    y1 = _split(0, 1)[1]
    assert 0 < y1.numel() < _split(0, 0)[1].numel() / 2
    assert (torch.bincount(BINS.index(y1), minlength=12)[[0, 9]] == 0).all()

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = _make()
    _run_epochs(single, None, use_collect=False)
    # the single-process statistics themselves against float64 per-bin formulas (epoch 1 blends
    # 0.9 * epoch 0 + 0.1 * epoch 1, unbiased variances)
    stats = []
    for epoch in range(2):
        f, y = _data(epoch)
        b = BINS.index(y)
        m = torch.stack([f[b == k].double().mean(0) for k in range(10)])
        v = torch.stack([f[b == k].double().var(0) for k in range(10)])
        stats.append((m, v))
    exp_m = 0.9 * stats[0][0] + 0.1 * stats[1][0]
    exp_v = 0.9 * stats[0][1] + 0.1 * stats[1][1]
    torch.testing.assert_close(single.running_mean[:10].double(), exp_m, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(single.running_var[:10].double(), exp_v, rtol=1e-5, atol=1e-5)

    for use_collect in (0, 1):
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}_{use_collect}.pt")
            for k in STATE:
                ref = getattr(single, k)
                if ref.dtype.is_floating_point:
                    torch.testing.assert_close(got[k], ref, rtol=1e-5, atol=1e-4,
                                               msg=lambda s, k=k: f"{k}: {s}")
                else:
                    assert torch.equal(got[k], ref), k
            # calibration with the merged statistics is the single-process calibration
            f, y = _data(1)
            a, b = _make(), single
            a.load_state_dict(got, strict=False)
            a.window.copy_(single.window)
            a.train(), b.train()
            torch.testing.assert_close(a(f, y, epoch=2), b(f, y, epoch=2), rtol=1e-5, atol=1e-3)
