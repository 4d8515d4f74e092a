"""The DALI pipeline of `DaliImageLoader` and its external source.

Pipeline (the same definition for both devices; ``device_id=None`` and ``device="cpu"`` decoding
on a CPU, ``device="mixed"`` (nvJPEG) decoding with everything after it on the GPU otherwise):

- ``fn.external_source(parallel=True, batch=True, batch_info=True)``: `BatchSource` runs in
  DALI's Python worker processes, reads the encoded files of batch ``iteration`` of the epoch
  order and hands over the bytes, each sample's position in that order and its crop anchor / flip.
  The order and draws come from `transforms` (seed, epoch), so they equal the torch backend's.
  The regression targets never enter the pipeline: the loader looks them up by position (they
  are floats, which DALI's integer-label file reader cannot carry).
- ``fn.decoders.image`` -> ``fn.resize`` (linear, antialiased) -> training: ``fn.slice`` with
  ``out_of_bounds_policy="pad"`` (the padding-16 random crop) -> ``fn.crop_mirror_normalize`` (flip,
  (x / 255 - mean) / std, float32). Depth maps take the same resize (nearest), slice and flip.
- Batches reach torch through DALI's PyTorch plugin (`DALIGenericIterator`; with the dynamic
  executor it hands tensors over by DLPack, bound to torch's current stream: no copy and no host
  synchronisation per batch). GPU images come out HWC and are returned as channels_last
  [B, C, H, W] views; CPU images come out CHW.

Epochs without a rebuild: the source streams pass after pass (epoch e, then e + 1, which is what
training asks for next), so the pipeline decodes the next epoch's first batches while the current
one is consumed. A small shared table (`EpochTable`), which the loader writes and DALI's source
workers read, says at which epoch a stream starts and how many batches it may produce. A pass
left half-way, or a pass of another epoch than the stream's next, cuts the stream short: its
limit drops to zero, the few batches already in flight are drained and dropped, and the pipeline
is reset (not rebuilt) to stream from the wanted epoch. Every sample carries its stream slot,
which the loader checks, so no batch of another pass can slip through.
"""
import io
import os
import tempfile
import weakref

import numpy as np

from .datasets import DataError
from .loader_base import read_image_bytes, read_sample_depth, sample_test_mask
from .transforms import aug_params, epoch_order

__all__ = ["BatchSource", "EpochTable", "build_pipeline", "source_columns", "wants_mask"]


def wants_mask(loader):
    return loader.dataset.kind == "depth" and loader.split == "test"


def source_columns(loader):
    """(name, DALI dtype name, layout) of the external source's outputs for this loader."""
    cols = [("encoded", "UINT8", None), ("position", "INT64", None)]
    if loader.augment:
        cols += [("anchor", "INT32", None), ("flip", "INT32", None)]
    if loader.dataset.kind == "depth":
        cols.append(("depth", "FLOAT", "HWC"))
    if wants_mask(loader):
        cols.append(("mask", "UINT8", "HWC"))
    return cols


class EpochTable:
    """Rows (first loader epoch, batch limit) for the last ``SLOTS`` DALI epochs, in a small file
    in shared memory: the loader writes a row before each pipeline reset (and lowers the limit to
    cut a stream short); the source workers (other processes) read it. Pickles as its path."""

    SLOTS = 64

    def __init__(self, path=None):
        self.owner = path is None
        if path is None:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            fd, path = tempfile.mkstemp(prefix="ssir_fast_dali_", suffix=".epochs", dir=shm)
            os.close(fd)
            np.zeros((self.SLOTS, 2), np.int64).tofile(path)
            self._finalizer = weakref.finalize(self, _remove, path)
        self.path = path
        self._rows = None

    def rows(self):
        if self._rows is None:
            self._rows = np.memmap(self.path, np.int64, "r+" if self.owner else "r",
                                   shape=(self.SLOTS, 2))
        return self._rows

    def set(self, dali_epoch, epoch, limit):
        self.rows()[dali_epoch % self.SLOTS] = (epoch, limit)

    def get(self, dali_epoch):
        epoch, limit = self.rows()[dali_epoch % self.SLOTS]
        return int(epoch), int(limit)

    def __reduce__(self):
        return EpochTable, (self.path,)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _placeholder_jpeg():
    """An 8x8 JPEG that stands in for a batch whose samples were all bad (DALI batches cannot be
    empty); it carries position -1 and the loader drops it."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    return np.frombuffer(buf.getvalue(), np.uint8)


class BatchSource:
    """``external_source`` callback (runs in DALI's worker processes): BatchInfo(iteration,
    epoch_idx) -> the columns of `source_columns` for one batch. A DALI epoch is a stream of
    passes: the `EpochTable` row of ``epoch_idx`` gives its first loader epoch and how many
    batches it may produce; iteration k is batch k % len(loader) of epoch first + k // len(loader).
    Each sample's "position" is its stream slot, k * batch_size + its index in the batch, so the
    loader can tell every batch's pass apart. Holds only picklable data."""

    def __init__(self, loader, table):
        self.dataset, self.view, self.split = loader.dataset, loader.view, loader.split
        self.batch_size, self.seed = loader.batch_size, loader.seed
        self.shuffle, self.augment = loader.shuffle, loader.augment
        self.shard = (loader.rank, loader.world, loader.even_shards)
        self.depth = loader.dataset.kind == "depth"
        self.mask = wants_mask(loader)
        self.per_pass = len(loader)
        self.table = table
        self.placeholder = _placeholder_jpeg()
        self._cached = (None, None)

    def plan(self, epoch):
        if self._cached[0] != epoch:
            n = len(self.view)
            rank, world, even = self.shard
            order, _ = epoch_order(n, self.seed, epoch, self.shuffle, rank, world, even)
            self._cached = (epoch, (order,) + aug_params(n, self.seed, epoch))
        return self._cached[1]

    def __call__(self, info):
        start, limit = self.table.get(info.epoch_idx)
        if info.iteration >= limit:
            raise StopIteration
        # pass after pass: iteration k is batch k % per_pass of epoch start + k // per_pass
        epoch, b = start + info.iteration // self.per_pass, info.iteration % self.per_pass
        order, anchors, flips = self.plan(epoch)
        lo = b * self.batch_size
        hi = min(lo + self.batch_size, len(order))
        slot = info.iteration * self.batch_size - lo    # position p -> stream slot p + slot
        rows = []
        for p in range(lo, hi):
            i = int(order[p])
            try:
                row = [read_image_bytes(self.view, i), np.array([p + slot], np.int64)]
                if self.depth:
                    depth = read_sample_depth(self.dataset, self.view, i)[..., None]
            except DataError:
                continue      # the loader sees the gap in the positions and reports it
            if self.augment:
                row += [anchors[i].copy(), np.array(flips[i], np.int32)]
            if self.depth:
                row.append(depth)
            if self.mask:
                mask = sample_test_mask(self.dataset, self.split, i)
                row.append(mask.astype(np.uint8)[..., None])
            rows.append(row)
        if not rows:
            rows.append(self._stand_in())
        return tuple(list(col) for col in zip(*rows))

    def _stand_in(self):
        row = [self.placeholder, np.array([-1], np.int64)]
        if self.augment:
            row += [np.zeros(2, np.int32), np.array(0, np.int32)]
        if self.depth:
            row.append(np.zeros((8, 8, 1), np.float32))
        if self.mask:
            row.append(np.zeros((8, 8, 1), np.uint8))
        return row


def build_pipeline(loader, source, device_id, parallel=True, start_method="spawn", py_workers=1):
    """The loader's DALI pipeline; ``device_id=None``: all on the CPU, else GPU ("mixed")
    decoding with everything after the decoder on the GPU. Outputs: images (float32, CHW on the
    CPU, HWC on the GPU), positions (CPU), then depth and mask when the data set has them."""
    from nvidia.dali import fn, pipeline_def, types

    h, w = loader.size
    depth = loader.dataset.kind == "depth"
    gpu = device_id is not None
    mean = [m * 255.0 for m in loader.dataset.mean]
    std = [s * 255.0 for s in loader.dataset.std]
    extra = {"py_num_workers": py_workers, "py_start_method": start_method} if parallel else {}

    @pipeline_def(batch_size=loader.batch_size, num_threads=max(1, loader.num_workers),
                  device_id=device_id, prefetch_queue_depth=loader.prefetch, seed=loader.seed,
                  exec_dynamic=True, **extra)
    def pipe():
        spec = source_columns(loader)
        ahead = {"prefetch_queue_depth": max(2, py_workers)} if parallel else {}
        outs = fn.external_source(source=source, num_outputs=len(spec), batch=True,
                                  batch_info=True, parallel=parallel,
                                  dtype=[getattr(types, t) for _, t, _ in spec],
                                  layout=[lay for _, _, lay in spec], **ahead)
        node = dict(zip([name for name, _, _ in spec], outs))
        img = fn.decoders.image(node["encoded"], device="mixed" if gpu else "cpu",
                                output_type=types.RGB)
        img = fn.resize(img, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR,
                        antialias=True)
        extra_out = []
        if depth:
            dep = node["depth"].gpu() if gpu else node["depth"]
            dep = fn.resize(dep, resize_x=w, resize_y=h, interp_type=types.INTERP_NN,
                            antialias=False)
            if loader.augment:
                dep = fn.slice(dep, start=node["anchor"], shape=[h, w], axis_names="HW",
                               out_of_bounds_policy="pad", fill_values=0)
                dep = fn.flip(dep, horizontal=node["flip"])
            extra_out.append(fn.transpose(dep, perm=[2, 0, 1]))
        if "mask" in node:
            msk = node["mask"].gpu() if gpu else node["mask"]
            msk = fn.resize(msk, resize_x=w, resize_y=h, interp_type=types.INTERP_NN,
                            antialias=False)
            extra_out.append(fn.transpose(msk, perm=[2, 0, 1]))
        if loader.augment:
            img = fn.slice(img, start=node["anchor"], shape=[h, w], axis_names="HW",
                           out_of_bounds_policy="pad", fill_values=0)
        img = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC" if gpu else
                                       "CHW", mean=mean, std=std,
                                       mirror=node["flip"] if loader.augment else 0)
        return (img, node["position"], *extra_out)

    return pipe()
