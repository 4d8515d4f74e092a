"""PyTorch DataLoader backend: PIL decoding in worker processes, the DIR augmentation of
`transforms` with the same per-sample draws as the DALI backend.

One ``DataLoader`` per loader, built on the first pass, with persistent workers: every epoch (and
every validation/test pass) reuses the same processes. The batch sampler reads the order and the
crop/flip draws of the coming epoch, so they still change per epoch. For a CUDA device the
workers return uint8 HWC images: the batch travels as uint8 in pinned memory, is copied
``non_blocking`` and normalised on the GPU (`transforms.normalize_batch`). For a CPU device the
workers normalise (float32 CHW) themselves: the CPU is the device there, and the conversion in the
main process would serialise work the workers do in parallel (measured on the 2-core machine: 150
ms per batch of 64 images at 224 px, as long as the decoding). The first batch of every pass is
cut into one chunk per worker, so all workers build it together. The sampler streams pass after
pass (epoch e, then e + 1, which is what training asks for next), so the workers start on the
next pass while the current one is consumed; a pass of another epoch restarts the stream with
the DataLoader's reset, which also drops whatever a pass left half-way had queued.

Worker start method: forkserver (a forked worker can deadlock on a lock that another thread of the
parent held at fork time), with this module preloaded in the server so that workers start in
milliseconds. Forkserver re-imports the main script in every worker, which a script without an
``if __name__ == "__main__":`` guard cannot survive; for such a script the workers are forked
instead, with a warning (see `worker_start_method`).
"""
import io
import multiprocessing
import sys
import warnings

import numpy as np
import torch

from .datasets import DataError
from .loader_base import (ImageLoaderBase, has_main_guard, read_image_bytes, read_sample_depth,
                          sample_test_mask)
from .transforms import crop_pad, normalize_uint8

__all__ = ["TorchImageLoader", "decode_resize", "worker_start_method"]

_warned_fork = set()


def decode_resize(data, size):
    """Encoded bytes -> RGB uint8 [H, W, 3] resized to ``size`` = (H, W) with PIL bilinear
    (antialiased when shrinking), the torchvision Resize behaviour."""
    from PIL import Image
    with Image.open(io.BytesIO(data.tobytes() if isinstance(data, np.ndarray) else data)) as im:
        im = im.convert("RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im)


def worker_start_method():
    """"forkserver", or "fork" (with a warning, once per script) when the main module is a script
    file without a ``__main__`` guard: forkserver and spawn workers import that script again,
    which would re-run its loader loop inside every worker and fail during bootstrapping."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None or has_main_guard(path):
        return "forkserver"
    if path not in _warned_fork:
        _warned_fork.add(path)
        warnings.warn(f"{path} has no 'if __name__ == \"__main__\":' guard, so the data loader "
                      f"workers are forked (a fork can deadlock if another thread of this process "
                      f"holds a lock); add the guard to use forkserver workers", RuntimeWarning,
                      stacklevel=4)
    return "fork"


def _context(method):
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # the server imports torch and this module once; each worker is then a cheap fork of it
        # (effective only until the server has started, which is what we want)
        ctx.set_forkserver_preload(["__main__", __name__])
    return ctx


def _resize_nearest(arr, size):
    """[H, W] float/bool map -> ``size`` by nearest neighbour (pixel-centre sampling)."""
    if arr.shape == tuple(size):
        return arr
    ys = np.minimum(((np.arange(size[0]) + 0.5) * arr.shape[0] / size[0]).astype(np.int64),
                    arr.shape[0] - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * arr.shape[1] / size[1]).astype(np.int64),
                    arr.shape[1] - 1)
    return arr[ys][:, xs]


class _Samples(torch.utils.data.Dataset):
    """Map-style view used by the workers: item = (position, index, anchor_y, anchor_x, flip) ->
    (position, uint8 HWC image, depth, mask, error). Holds only picklable data (no loader)."""

    def __init__(self, loader, normalise):
        self.dataset, self.view, self.split = loader.dataset, loader.view, loader.split
        self.size = loader.size
        self.augment = loader.augment
        self.depth = loader.dataset.kind == "depth"
        self.normalise = normalise    # float32 CHW here, else uint8 HWC for the device

    def __len__(self):
        return len(self.view)

    def __getitem__(self, item):
        pos, i, ay, ax, flip = item
        try:
            data = read_image_bytes(self.view, i)
            try:
                arr = decode_resize(data, self.size)
            except Exception as e:  # noqa: BLE001 - any decoder failure names its row
                raise DataError(f"{self.view.where(i)}: cannot decode image: {e}") from None
            depth = mask = None
            if self.depth:
                depth = _resize_nearest(read_sample_depth(self.dataset, self.view, i), self.size)
                m = sample_test_mask(self.dataset, self.split, i)
                mask = None if m is None else _resize_nearest(m, self.size)
            if self.augment:
                arr = crop_pad(arr, (ay, ax), self.size)
                if depth is not None:
                    depth = crop_pad(depth, (ay, ax), self.size)
                if flip:
                    arr = arr[:, ::-1]
                    depth = None if depth is None else depth[:, ::-1]
            if self.normalise:
                x = normalize_uint8(arr, self.dataset.mean, self.dataset.std)
            else:
                x = torch.from_numpy(np.require(arr, requirements=["C", "W"]))
            d = None if depth is None else torch.from_numpy(np.ascontiguousarray(depth))[None]
            m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))[None]
            return pos, x, d, m, None
        except DataError as e:
            return pos, None, None, None, str(e)


def _collate(items):
    good = [it for it in items if it[4] is None]
    errors = [it[4] for it in items if it[4] is not None]
    if not good:
        return None, None, None, None, errors
    pos = np.array([it[0] for it in good], np.int64)
    x = torch.stack([it[1] for it in good])        # uint8 [B, H, W, 3] or float32 [B, 3, H, W]
    d = torch.stack([it[2] for it in good]) if good[0][2] is not None else None
    m = torch.stack([it[3] for it in good]) if good[0][3] is not None else None
    return pos, x, d, m, errors


class _EpochBatches:
    """Batch sampler of the persistent DataLoader: an endless stream of passes, epoch ``start``,
    then ``start + 1``, ... (each with its own order and crop/flip draws), as lists of
    (position, index, anchor_y, anchor_x, flip) items. The workers therefore go straight on to
    the next epoch's first batches while the last ones of a pass are still being consumed; a
    pass of another epoch restarts the stream (`TorchImageLoader._start`).

    The first batch of a pass is cut into ``parts`` chunks (one per worker), so all workers build
    it together and a restarted stream delivers it ``parts`` times sooner than one worker alone
    would; the loader joins the chunks again. Later batches stay whole: by then every worker is
    busy anyway, and joining costs a copy."""

    def __init__(self, plan_of, batch_size, parts):
        self.plan_of, self.batch_size, self.parts = plan_of, batch_size, max(1, parts)
        self.start = 0

    def chunks(self, n, b):
        """Chunk sizes of batch number b, of n samples."""
        k = min(self.parts, n) if b == 0 else 1
        return [n // k + (j < n % k) for j in range(k)]

    def batch_sizes(self, plan):
        n = len(plan[0])
        return [min(self.batch_size, n - s) for s in range(0, n, self.batch_size)]

    def __iter__(self):
        epoch = self.start
        while True:
            order, _, anchors, flips = self.plan_of(epoch)
            p = 0
            for b, n in enumerate(self.batch_sizes((order,))):
                for c in self.chunks(n, b):
                    yield [(q, int(order[q]), int(anchors[order[q], 0]),
                            int(anchors[order[q], 1]), int(flips[order[q]]))
                           for q in range(p, p + c)]
                    p += c
            epoch += 1


class TorchImageLoader(ImageLoaderBase):
    """``torch.utils.data.DataLoader`` over the split with ``num_workers`` persistent worker
    processes and ``prefetch`` batches per worker; pinned memory when the device is CUDA."""

    backend = "torch"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._dl = None
        self._sampler = _EpochBatches(self._plan, self.batch_size, self.num_workers)
        self._pending = None     # (epoch key, stream epoch, iterator) of the pass streamed next
        self._pass = 0           # pass counter: a generator left behind by a newer pass stops
        # uint8 batches normalised on the device (CUDA), or float32 ones from the workers (CPU)
        self.uint8_batches = self.device.type == "cuda"

    def _dataloader(self):
        if self._dl is None:
            if self.dataset.kind == "depth" and self.split == "test":
                self.dataset.test_mask()  # computed once here, not once per worker
            kwargs = {}
            if self.num_workers > 0:
                kwargs = {"prefetch_factor": self.prefetch, "persistent_workers": True,
                          "multiprocessing_context": _context(worker_start_method())}
            # a private generator: starting a DataLoader iterator draws a seed from it, and a
            # draw from the global RNG would make training depend on when the stream restarts
            # (an exact --resume restarts it where an uninterrupted run does not)
            self._dl = torch.utils.data.DataLoader(
                _Samples(self, normalise=not self.uint8_batches), batch_sampler=self._sampler,
                num_workers=self.num_workers, collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.seed), **kwargs)
        return self._dl

    def _start(self, epoch):
        """(Re)start the stream of passes at ``epoch``; batches still queued from an earlier
        pass are dropped by the DataLoader's reset (persistent workers: a handshake, no restart)."""
        self._sampler.start = epoch
        return iter(self._dataloader())

    def _join(self, tensors):
        """One batch from its chunks; pinned chunks are joined on the CUDA device (each copy
        non_blocking), so the joined batch never sits in unpinned host memory."""
        if tensors[0] is None:
            return None
        if len(tensors) == 1:
            return tensors[0]
        if self.device.type == "cuda" and tensors[0].is_pinned():
            tensors = [t.to(self.device, non_blocking=True) for t in tensors]
        return torch.cat(tensors)

    def worker_pids(self):
        """Process ids of the live worker processes (empty before the first pass / after close)."""
        it = getattr(self._dl, "_iterator", None)
        return sorted(w.pid for w in getattr(it, "_workers", []) if w.is_alive())

    def close(self):
        """Shut the worker processes down (the next pass starts new ones)."""
        self._pending = None
        self._dl = None     # the DataLoader's iterator stops its workers when released
        self._pass += 1

    def __iter__(self):
        if self._pending is not None and self._pending[0] == self.epoch_key():
            _, stream_epoch, it = self._pending     # the stream already runs into this pass
        else:
            stream_epoch, it = self.epoch, self._start(self.epoch)
        self._pending = None
        plan = self._plan()            # equal to the stream's pass: same epoch, or same key
        order = plan[0]
        self._begin_epoch(plan)
        self._pass += 1
        me = self._pass
        chunks = iter(it)
        for b, n in enumerate(self._sampler.batch_sizes(plan)):
            if self._pass != me:
                return    # a newer pass took the workers over: this one was abandoned
            parts = [next(chunks) for _ in self._sampler.chunks(n, b)]
            for msg in (m for part in parts for m in part[4]):
                self._skip(msg)
            parts = [part for part in parts if part[0] is not None]
            if not parts:
                continue  # every sample of this batch was bad (and counted)
            pos = np.concatenate([part[0] for part in parts])
            x, d, m = (self._join([part[k] for part in parts]) for k in (1, 2, 3))
            yield self._finish(x, pos, order, depth=d, mask=m)
        self._end_epoch()
        self._pending = (self.epoch_key(stream_epoch + 1), stream_epoch + 1, it)
