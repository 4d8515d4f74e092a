"""NVIDIA DALI backend: one pipeline per loader for the whole run, reset once per pass.

Pipeline (the same definition for both devices; ``device_id=None`` and ``device="cpu"`` decoding
on a CPU, ``device="mixed"`` (nvJPEG) decoding with everything after it on the GPU otherwise):

- ``fn.external_source(parallel=True, batch=True, batch_info=True)``: `_BatchSource` runs in DALI's
  Python worker processes, reads the encoded files of batch ``iteration`` of the epoch order and
  hands over the bytes, each sample's position in that order and its crop anchor / flip. The order
  and draws come from `transforms` (seed, epoch), so they equal the torch backend's. The regression
  targets never enter the pipeline: the loader looks them up by position (they are floats, which
  DALI's integer-label file reader cannot carry).
- ``fn.decoders.image`` -> ``fn.resize`` (linear, antialiased) -> training: ``fn.slice`` with
  ``out_of_bounds_policy="pad"`` (the padding-16 random crop) -> ``fn.crop_mirror_normalize`` (flip,
  (x / 255 - mean) / std, float32). Depth maps take the same resize (nearest), slice and flip.
- Batches reach torch through DALI's PyTorch plugin (`DALIGenericIterator`; with the dynamic
  executor it hands tensors over by DLPack, bound to torch's current stream: no copy and no host
  synchronisation per batch). GPU images come out HWC and are returned as channels_last
  [B, C, H, W] views; CPU images come out CHW.

Epochs without a rebuild: the source streams pass after pass (epoch e, then e + 1, which is what
training asks for next), so the pipeline decodes the next epoch's first batches while the current
one is consumed. A small shared table (`_EpochTable`), which the loader writes and DALI's source
workers read, says at which epoch a stream starts and how many batches it may produce. A pass
left half-way, or a pass of another epoch than the stream's next, cuts the stream short: its
limit drops to zero, the few batches already in flight are drained and dropped, and the pipeline
is reset (not rebuilt) to stream from the wanted epoch. Every sample carries its stream slot,
which the loader checks, so no batch of another pass can slip through.

Bad files: the source leaves out a sample whose file is missing, unreadable, truncated or not an
image; the loader sees the gap in the positions, reads the file again for the reason, and raises a
`DataError` naming file and row (or, with ``on_error="skip"``, counts it). A file that passes those
checks but fails inside the DALI decoder raises a `DataError` naming every file of the failed batch
(DALI cannot drop one sample of a batch); the pipeline is then rebuilt on the next pass.

DALI's Python workers are forked (DALI's default, a start in milliseconds) while CUDA is not
initialised in this process, and spawned once it is (a process with a CUDA context must not fork);
a script without a ``__main__`` guard, which spawn cannot re-import, then gets an in-process source
with a warning. ``loader.start_method = "spawn"`` (before the first pass) forces a method.
"""
import os
import tempfile
import warnings
import weakref

import numpy as np
import torch

from .datasets import DataError
from .loader_base import (ImageLoaderBase, read_image_bytes, read_sample_depth,
                          sample_test_mask)
from .transforms import aug_params, epoch_order, shard_batches

__all__ = ["DaliImageLoader", "dali_available"]


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False


def _wants_mask(loader):
    return loader.dataset.kind == "depth" and loader.split == "test"


def _columns(loader):
    """(name, DALI dtype name, layout) of the external source's outputs for this loader."""
    cols = [("encoded", "UINT8", None), ("position", "INT64", None)]
    if loader.augment:
        cols += [("anchor", "INT32", None), ("flip", "INT32", None)]
    if loader.dataset.kind == "depth":
        cols.append(("depth", "FLOAT", "HWC"))
    if _wants_mask(loader):
        cols.append(("mask", "UINT8", "HWC"))
    return cols


class _EpochTable:
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
        return _EpochTable, (self.path,)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _placeholder_jpeg():
    """An 8x8 JPEG that stands in for a batch whose samples were all bad (DALI batches cannot be
    empty); it carries position -1 and the loader drops it."""
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    return np.frombuffer(buf.getvalue(), np.uint8)


class _BatchSource:
    """``external_source`` callback (runs in DALI's worker processes): BatchInfo(iteration,
    epoch_idx) -> the columns of `_columns` for one batch. A DALI epoch is a stream of passes:
    the `_EpochTable` row of ``epoch_idx`` gives its first loader epoch and how many batches it
    may produce; iteration k is batch k % len(loader) of epoch first + k // len(loader). Each
    sample's "position" is its stream slot, k * batch_size + its index in the batch, so the
    loader can tell every batch's pass apart. Holds only picklable data."""

    def __init__(self, loader, table):
        self.dataset, self.view, self.split = loader.dataset, loader.view, loader.split
        self.batch_size, self.seed = loader.batch_size, loader.seed
        self.shuffle, self.augment = loader.shuffle, loader.augment
        self.shard = (loader.rank, loader.world, loader.even_shards)
        self.depth = loader.dataset.kind == "depth"
        self.mask = _wants_mask(loader)
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


def _main_is_guarded():
    import sys
    from .torch_loader import _has_main_guard
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or _has_main_guard(path)


def _workers_mode(forced=None):
    """(parallel, start method) of the source workers; see the module docstring."""
    if forced is not None:
        return True, forced
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if not cuda:
        return True, "fork"       # DALI's default; starts in milliseconds
    if _main_is_guarded():
        return True, "spawn"      # forking a process with a CUDA context is not allowed
    warnings.warn("the main script has no 'if __name__ == \"__main__\":' guard and CUDA is already "
                  "initialised, so DALI reads the files in this process (no parallel source "
                  "workers); add the guard for parallel reading", RuntimeWarning, stacklevel=4)
    return False, None


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
        spec = _columns(loader)
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


class DaliImageLoader(ImageLoaderBase):
    """DALI backend; ``num_workers`` is DALI's ``num_threads`` (decoding and augmentation); the
    files are read by ``max(1, min(4, num_workers // 4))`` Python worker processes."""

    backend = "dali"
    start_method = None    # None: chosen by `_workers_mode`

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not dali_available():
            raise ImportError("backend='dali' needs NVIDIA DALI: pip install 'ssir_fast[dali]' "
                              "(nvidia-dali-cuda130)")
        if self.device.type == "cuda":
            self.device_id = self.device.index if self.device.index is not None else \
                torch.cuda.current_device()
            self.device = torch.device("cuda", self.device_id)
        else:
            self.device_id = None
        self.py_workers = max(1, min(4, self.num_workers // 4))
        self._it = None          # DALIGenericIterator over the one pipeline
        self._table = None
        self._dali_epoch = 0     # DALI's epoch counter (one per pipeline reset)
        self._first = 0          # loader epoch of the stream's first pass in this DALI epoch
        self._taken = 0          # batches taken from this DALI epoch
        self._boundary = True    # the consumer stands between two passes of the stream
        self._pass = 0

    # ------------------------------------------------------------------ pipeline lifetime
    STREAM = 2 ** 62             # batch limit of a stream nobody has cut short

    def _build(self, epoch):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
        if self.dataset.kind == "depth" and self.split == "test":
            self.dataset.test_mask()  # computed once here, shipped to the source workers
        self._table = _EpochTable()
        self._dali_epoch = 0
        self._table.set(0, epoch, self.STREAM)
        parallel, method = _workers_mode(self.start_method)
        pipe = build_pipeline(self, _BatchSource(self, self._table), self.device_id, parallel,
                              method, self.py_workers)
        names = ["image", "position"] + (["depth"] if self.dataset.kind == "depth" else []) + \
            (["mask"] if _wants_mask(self) else [])
        self._it = DALIGenericIterator(pipe, names, size=-1, auto_reset=False,
                                       prepare_first_batch=False)
        self._first, self._taken, self._boundary = epoch, 0, True

    def _next_epoch(self):
        """Loader epoch of the pass the stream delivers next (at a pass boundary)."""
        return self._first + self._taken // len(self)

    def _restart(self, epoch):
        """Cut the stream short (batches in flight are drained unread) and start a new one at
        ``epoch`` with a pipeline reset: no rebuild."""
        self._table.set(self._dali_epoch, self._first, 0)
        while True:     # next(), not a for loop: iter() on a DALI iterator resets it
            try:
                next(self._it)
            except StopIteration:
                break
        self._table.set(self._dali_epoch + 1, epoch, self.STREAM)
        self._it.reset()
        self._dali_epoch += 1
        self._first, self._taken, self._boundary = epoch, 0, True

    def close(self):
        """Stop the pipeline and its source workers (the next pass builds a new one)."""
        self._it = None
        self._table = None
        self._pass += 1

    # ------------------------------------------------------------------ one pass
    def _why(self, i):
        """The reason the source left sample i out (its file, read again here)."""
        try:
            read_image_bytes(self.view, i)
            if self.dataset.kind == "depth":
                read_sample_depth(self.dataset, self.view, i)
        except DataError as e:
            return str(e)
        return f"{self.view.where(i)}: could not be read by the DALI source"

    def __iter__(self):
        if len(self) == 0:
            self._begin_epoch()
            self._end_epoch()
            return
        if self._it is None:
            self._build(self.epoch)
        elif not (self._boundary and self.epoch_key(self._next_epoch()) == self.epoch_key()):
            self._restart(self.epoch)   # a pass left half-way, or another epoch than streamed
        order = self._begin_epoch()[0]
        self._boundary = False
        self._pass += 1
        me = self._pass
        for b in range(len(self)):
            if self._pass != me:
                return    # a newer pass took the pipeline over: this one was abandoned
            lo = b * self.batch_size
            try:
                out = next(self._it)[0]
            except Exception as e:  # noqa: BLE001 - decoder failures become DataErrors
                self.close()
                files = [self.view.where(int(order[p])) for p in
                         range(lo, min(lo + self.batch_size, len(order)))]
                raise DataError(f"DALI failed on a batch of {len(files)} file(s) "
                                f"[{'; '.join(files)}]: {str(e).strip().splitlines()[-1]}") from e
            slot = self._taken * self.batch_size - lo
            self._taken += 1
            pos = out["position"].view(-1).numpy()
            got = pos[pos >= 0] - slot                 # stream slots -> positions in this pass
            want = np.arange(lo, min(lo + self.batch_size, len(order)))
            assert np.isin(got, want).all(), "DALI returned a batch of another pass"
            for p in np.setdiff1d(want, got):
                self._skip(self._why(int(order[p])))   # raises with on_error="raise"
            x = out["image"]
            d, m = out.get("depth"), out.get("mask")
            if len(got) < len(pos):                    # drop the stand-in of an all-bad batch
                keep = torch.from_numpy(np.flatnonzero(pos >= 0))
                if len(keep) == 0:
                    continue
                x, d, m = (None if t is None else t[keep.to(t.device)] for t in (x, d, m))
            if self.device_id is not None:
                x = x.permute(0, 3, 1, 2)              # HWC -> channels_last NCHW view
            yield self._finish(x, got, order, depth=d, mask=None if m is None else m.bool())
        self._boundary = True
        self._end_epoch()
