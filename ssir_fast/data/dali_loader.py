"""NVIDIA DALI backend: one pipeline per loader for the whole run, reset once per pass.

The pipeline, its external source (run by DALI's worker processes) and the epoch table that
lets one pipeline stream pass after pass are defined in `dali_pipeline`. This module drives them:
it builds the pipeline on the first pass, resets it (no rebuild) when a pass is left half-way or
another epoch is asked for, and checks every batch against the pass it belongs to.

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
import sys
import warnings

import numpy as np
import torch

from .dali_pipeline import BatchSource, EpochTable, build_pipeline, wants_mask
from .datasets import DataError
from .loader_base import ImageLoaderBase, has_main_guard, read_image_bytes, read_sample_depth

__all__ = ["DaliImageLoader", "dali_available"]


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False


def _main_is_guarded():
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or has_main_guard(path)


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
        self._table = EpochTable()
        self._dali_epoch = 0
        self._table.set(0, epoch, self.STREAM)
        parallel, method = _workers_mode(self.start_method)
        pipe = build_pipeline(self, BatchSource(self, self._table), self.device_id, parallel,
                              method, self.py_workers)
        names = ["image", "position"] + (["depth"] if self.dataset.kind == "depth" else []) + \
            (["mask"] if wants_mask(self) else [])
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
