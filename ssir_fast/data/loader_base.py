"""What both image backends share: epochs, shards, weights, skip accounting, reading a sample,
whether the main script can be re-imported by spawned workers."""
import ast
import os
import warnings

import numpy as np
import torch

from .datasets import DataError, read_depth
from .transforms import (aug_params, check_image_bytes, epoch_order, normalize_batch,
                         shard_batches)

__all__ = ["ImageLoaderBase", "read_image_bytes", "read_sample_depth", "sample_test_mask",
           "has_main_guard"]


def has_main_guard(path):
    """True if the script at ``path`` has a top-level ``if __name__ == "__main__":``, so that
    worker processes started by spawn or forkserver can import it again without re-running it."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left] + list(node.test.comparators)
            if any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and \
                    any(isinstance(n, ast.Constant) and n.value == "__main__" for n in names):
                return True
    return False


def read_image_bytes(view, i):
    """Encoded bytes of sample i (uint8 numpy), checked for plausibility; DataError names file/row."""
    path = view.paths[i]
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{view.where(i)}: image file not found: {path}") from None
    except OSError as e:
        raise DataError(f"{view.where(i)}: cannot read image file {path}: {e}") from None
    why = check_image_bytes(data.tobytes() if data.size < 64 else
                            data[:8].tobytes() + data[-64:].tobytes())
    if why is not None:
        raise DataError(f"{view.where(i)}: {why}: {path}")
    return data


def read_sample_depth(dataset, view, i):
    """Depth map (float32 metres [H, W]) of sample i of a depth data set's split ``view``."""
    return read_depth(view.depth_paths[i], dataset.depth_scale, where=view.where(i))


def sample_test_mask(dataset, split, i):
    """The balanced-pixel mask of test sample i (NYUD2 test split), else None."""
    if dataset.kind == "depth" and split == "test":
        return dataset.test_mask()[i]
    return None


class ImageLoaderBase:
    """Iterable over (inputs, targets, weights) batches of one split; one pass = one epoch.

    Images come out normalised, (x / 255 - mean) / std, float32: on CUDA channels_last (the torch
    backend ships uint8 and normalises on the device, `normalize_batch`; DALI in its pipeline),
    elsewhere NCHW-contiguous (normalised by the torch workers or the DALI CPU pipeline). Worker
    processes / pipelines are started once per loader and reused by every epoch; `close()` stops
    them early.

    ``len(loader)`` is the number of batches of this shard; the last batch keeps the remainder
    (never dropped, never padded unless ``even_shards=True``, where the repeated samples get weight
    0 and are counted in ``stats["padded"]``). ``set_epoch(e)`` picks the epoch of the next pass
    (it otherwise advances by one per pass). ``stats`` holds the skipped samples of the last epoch.
    """

    backend = None

    def __init__(self, dataset, split, batch_size, *, device="cpu", shard=(0, 1), seed=0,
                 shuffle=None, augment=None, size=None, num_workers=None, prefetch=2,
                 on_error="raise", sample_weights=None, bin_weights=None, even_shards=False):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.split = split
        self.view = dataset.split(split)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.rank, self.world = (int(shard[0]), int(shard[1]))
        self.seed = int(seed)
        self.shuffle = (split == "train") if shuffle is None else bool(shuffle)
        self.augment = (split == "train") if augment is None else bool(augment)
        size = dataset.image_size if size is None else size
        self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.prefetch = max(1, int(prefetch))
        self.on_error = on_error
        self.even_shards = bool(even_shards)
        n = len(self.view)
        if sample_weights is not None:
            sample_weights = np.asarray(sample_weights, np.float32).reshape(-1)
            if sample_weights.shape[0] != n:
                raise ValueError(f"sample_weights must have one weight per {split} sample ({n}), "
                                 f"got {sample_weights.shape[0]}")
        if bin_weights is not None:
            bin_weights = np.asarray(bin_weights, np.float32).reshape(-1)
            if bin_weights.shape[0] != dataset.bins.size:
                raise ValueError(f"bin_weights must have one weight per bin "
                                 f"({dataset.bins.size}), got {bin_weights.shape[0]}")
        self.sample_weights, self.bin_weights = sample_weights, bin_weights
        epoch_order(n, 0, 0, False, self.rank, self.world)   # validates shard
        self.epoch = 0
        self.stats = {"epoch": None, "skipped": 0, "skipped_items": [], "padded": 0}

    # --------------------------------------------------------------- epoch plan
    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _plan(self, epoch=None):
        """(positions -> sample index, number padded, crop anchors, flips) of ``epoch`` (default:
        the coming one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.view)
        order, padded = epoch_order(n, self.seed, epoch, self.shuffle, self.rank, self.world,
                                    self.even_shards)
        anchors, flips = aug_params(n, self.seed, epoch)
        return order, padded, anchors, flips

    def epoch_key(self, epoch=None):
        """What the plan of ``epoch`` depends on: the epoch when shuffling or augmenting, else
        nothing (every val/test pass is the same). Equal keys = identical passes."""
        epoch = self.epoch if epoch is None else epoch
        return epoch if (self.shuffle or self.augment) else None

    def close(self):
        """Stop this loader's worker processes / pipeline (a later pass starts them again)."""

    def __len__(self):
        return shard_batches(len(self.view), self.batch_size, self.rank, self.world,
                             self.even_shards)

    def _begin_epoch(self, plan=None):
        plan = self._plan() if plan is None else plan
        self.stats = {"epoch": self.epoch, "skipped": 0, "skipped_items": [], "padded": plan[1]}
        return plan

    def _skip(self, msg):
        if self.on_error == "raise":
            raise DataError(msg)
        self.stats["skipped"] += 1
        self.stats["skipped_items"].append(msg)

    def _end_epoch(self):
        s = self.stats
        if s["skipped"]:
            shown = "; ".join(s["skipped_items"][:5]) + (" ..." if s["skipped"] > 5 else "")
            warnings.warn(f"{self.dataset.name} {self.split} epoch {s['epoch']}: skipped "
                          f"{s['skipped']} bad sample(s): {shown}", stacklevel=3)
        self.epoch += 1

    # --------------------------------------------------------------- targets and weights
    def _finish(self, inputs, positions, order, depth=None, mask=None):
        """Targets and weights for a batch whose samples sit at ``positions`` of the epoch order;
        uint8 [B, H, W, C] inputs are normalised on the device. Host tensors travel pinned and
        ``non_blocking`` to a CUDA device, so no step waits for a copy."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        idx = order[positions]
        real = torch.from_numpy((positions < len(order) - self.stats["padded"]).astype(np.float32))
        if self.dataset.kind == "depth":
            targets = depth
            if mask is not None:
                weights = mask.float()
            elif self.bin_weights is not None:
                bw = self._device_bin_weights(targets.device)
                weights = bw[self.dataset.bins.index(targets)]
            else:
                weights = torch.ones_like(targets)
            if mask is None:
                weights = weights * (targets > 0)   # invalid depth and crop padding
            real = self._to_device(real) if weights.is_cuda else real
            weights = weights * real.view(-1, 1, 1, 1)
        else:
            y = self.view.targets[idx]
            targets = torch.from_numpy(y.astype(np.float32)).view(len(idx), -1)   # [B, 1] / [B, D]
            if self.sample_weights is not None:
                w = self.sample_weights[idx]
            elif self.bin_weights is not None:
                w = self.bin_weights[self.dataset.bins.index(y)]
            else:
                w = np.ones(len(idx), np.float32)
            weights = torch.from_numpy(np.asarray(w, np.float32)).view(-1, 1) * real.view(-1, 1)
        cuda = self.device.type == "cuda"
        if inputs.dtype == torch.uint8:
            inputs = normalize_batch(inputs, self.dataset.mean, self.dataset.std, self.device,
                                     channels_last=cuda)
        return (inputs.to(self.device), self._to_device(targets), self._to_device(weights))

    def _device_bin_weights(self, device):
        if getattr(self, "_bw_cache", None) is None or self._bw_cache.device != device:
            self._bw_cache = torch.from_numpy(self.bin_weights).to(device)
        return self._bw_cache

    def _to_device(self, t):
        if self.device.type != "cuda" or t.is_cuda:
            return t.to(self.device)
        return (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True)
