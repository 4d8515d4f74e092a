"""The DIR augmentation and the sample order, shared by the DALI and torch backends.

Training augmentation (DIR): resize to (H, W), random crop (H, W) from the image zero-padded by
``pad`` = 16 on each side, horizontal flip with p = 0.5, then normalise x' = (x / 255 - mean) / std
(mean = std = 0.5: x' = (x - 127.5) / 127.5). Test/val: resize and normalise only.

The random draws (crop offset, flip) are made here in numpy, per epoch, from (seed, epoch), and
handed to whichever backend runs: both backends therefore apply the *same* augmentation to the same
sample, and image/depth pairs share them by construction.

Order: an epoch permutes the split with ``default_rng([seed, epoch])`` (or keeps file order when not
shuffling), then shard ``rank`` of ``world`` takes the contiguous block
``order[rank*n//world : (rank+1)*n//world]``; shards are disjoint and cover the split exactly.
"""
import functools

import numpy as np

__all__ = ["epoch_order", "aug_params", "check_image_bytes", "crop_pad", "normalize_uint8",
           "normalize_batch"]

PAD = 16


def epoch_order(n, seed, epoch, shuffle, rank=0, world=1, even=False):
    """Indices of this shard for this epoch (int64 numpy). With ``even=True`` every shard gets
    ceil(n / world) entries, the short ones topped up by repeating their first indices (the loader
    gives those repeats weight 0 and counts them)."""
    if not (0 <= rank < world):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got "
                         f"({rank}, {world})")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    lo, hi = rank * n // world, (rank + 1) * n // world
    mine = order[lo:hi].astype(np.int64)
    if even:
        short = -(-n // world) - len(mine)
        if short > 0:
            return np.concatenate([mine, np.resize(mine if len(mine) else order, short)]), short
    return mine, 0


def shard_batches(n, batch_size, rank=0, world=1, even=False):
    """Number of batches `epoch_order`'s shard of n samples makes (last partial batch kept)."""
    m = -(-n // world) if even else (rank + 1) * n // world - rank * n // world
    return -(-m // batch_size)


def aug_params(n, seed, epoch, pad=PAD):
    """Crop anchors (y, x) in [-pad, pad] and flips (0/1) for all n samples of an epoch.

    The anchor is the crop's top-left corner in the unpadded image, so offset o in the padded image
    (torchvision's RandomCrop(padding=pad)) is anchor = o - pad."""
    rng = np.random.default_rng([seed, epoch, 0x5eed])
    anchors = rng.integers(-pad, pad + 1, size=(n, 2)).astype(np.int32)
    flips = rng.integers(0, 2, size=n).astype(np.int32)
    return anchors, flips


def check_image_bytes(data):
    """Cheap structural check of an encoded image, run by both backends before decoding: returns
    None if plausible, else the reason. Catches empty, non-image and truncated JPEG/PNG files."""
    if len(data) < 8:
        return f"file too short ({len(data)} bytes) to be an image"
    if data[:2] == b"\xff\xd8":
        # a complete JPEG ends with the EOI marker (some writers append a few padding bytes)
        if b"\xff\xd9" not in data[-64:]:
            return "truncated or corrupt JPEG (no end-of-image marker)"
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            return "truncated or corrupt PNG (no IEND chunk)"
        return None
    if data[:2] in (b"BM",) or data[:4] in (b"RIFF", b"II*\x00", b"MM\x00*"):
        return None
    return "not a JPEG/PNG/BMP/TIFF/WebP image (unrecognised header)"


def crop_pad(arr, anchor, size):
    """Crop [H, W, ...] to ``size`` with top-left ``anchor`` (may be negative / overhanging), zero
    fill outside the image."""
    h, w = size
    ay, ax = int(anchor[0]), int(anchor[1])
    out = np.zeros((h, w) + arr.shape[2:], dtype=arr.dtype)
    sy0, sx0 = max(ay, 0), max(ax, 0)
    sy1, sx1 = min(ay + h, arr.shape[0]), min(ax + w, arr.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - ay:sy1 - ay, sx0 - ax:sx1 - ax] = arr[sy0:sy1, sx0:sx1]
    return out


def normalize_uint8(arr, mean, std):
    """uint8 [H, W, C] -> float32 [C, H, W], (x / 255 - mean) / std per channel."""
    import torch
    t = torch.from_numpy(np.require(arr, requirements=['C', 'W'])).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0
    return (t - m) / s


def normalize_batch(x, mean, std, device, channels_last=False):
    """uint8 [B, H, W, C] batch -> float32 [B, C, H, W] on ``device``, (x / 255 - mean) / std.

    The uint8 batch crosses to the device first (a quarter of the float32 bytes; ``non_blocking``
    from pinned memory), and the conversion runs there. The result is a permuted view of the HWC
    data, i.e. channels_last in memory; ``channels_last=False`` makes it NCHW-contiguous. Same
    arithmetic as `normalize_uint8`, so both give identical values."""
    import torch
    device = torch.device(device)
    x = x.to(device, non_blocking=x.is_pinned()).permute(0, 3, 1, 2)
    m, s = _scales(tuple(mean), tuple(std), device)
    out = x.float().sub_(m).div_(s)
    return out if channels_last else out.contiguous()


@functools.lru_cache(maxsize=16)
def _scales(mean, std, device):
    # made once per device: a per-batch host-to-device copy of 3 floats would wait for the host
    import torch
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).mul_(255.0)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).mul_(255.0)
    return m.to(device), s.to(device)
