"""NVIDIA DALI backend.

Pipeline (one per loader, built once): ``fn.external_source`` fed from the CSV-derived sample list
(regression targets are floats, so not DALI's integer-label file reader) with the encoded bytes,
the sample's position in the epoch order, and the crop anchor / flip drawn in `transforms`;
``fn.decoders.image`` on ``device="mixed"`` (nvJPEG) when the loader's device is CUDA and
``device="cpu"`` otherwise (CPU pipelines use ``device_id=None``); ``fn.resize`` (linear,
antialiased); training: ``fn.slice`` with ``out_of_bounds_policy="pad"`` (the padding-16 random
crop) and the flip inside ``fn.crop_mirror_normalize``. Depth maps (read in Python, float metres)
go through the same resize (nearest), slice and flip, so image and depth stay aligned. Batches are
prefetched ``prefetch`` deep; the last partial batch is kept.

Bad files are checked in the source callback (missing, unreadable, truncated, not an image): they
raise a `DataError` naming file and row or, with ``on_error="skip"``, are left out of the batch and
counted. A file that passes those checks but still fails inside the DALI decoder raises a
`DataError` naming every file of the failed batch (DALI cannot drop one sample of a batch).
"""
import collections

import numpy as np
import torch

from .datasets import DataError
from .loader_base import ImageLoaderBase, read_image_bytes

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


class _Source:
    """Per-batch callable for ``external_source``: walks the epoch order batch by batch."""

    def __init__(self, loader):
        self.loader = loader
        self.plan = None
        self.cursor = 0
        self.fed = collections.deque()   # positions of each batch handed to DALI, in order
        self.error = None

    def start(self, plan):
        self.plan, self.cursor, self.error = plan, 0, None
        self.fed.clear()

    def __call__(self):
        ld = self.loader
        order, _, anchors, flips = self.plan
        depth = ld.dataset.kind == "depth"
        while self.cursor < len(order):
            lo, hi = self.cursor, min(self.cursor + ld.batch_size, len(order))
            self.cursor = hi
            cols = [[] for _ in _columns(ld)]
            for p in range(lo, hi):
                i = int(order[p])
                try:
                    row = [read_image_bytes(ld.view, i), np.array([p], np.int64)]
                    if ld.augment:
                        row += [anchors[i].copy(), np.array(flips[i], np.int32)]
                    if depth:
                        row.append(ld._read_depth(i)[..., None])
                    if _wants_mask(ld):
                        row.append(ld._test_mask(i).astype(np.uint8)[..., None])
                except DataError as e:
                    if ld.on_error == "raise":
                        self.error = e
                        raise
                    ld._skip(str(e))
                    continue
                except Exception as e:  # a bug, not bad data: surface it unchanged
                    self.error = e
                    raise
                for c, v in zip(cols, row):
                    c.append(v)
            if cols[0]:
                self.fed.append([int(c[0]) for c in cols[1]])
                return tuple(cols)
        raise StopIteration


def _build_pipeline(loader, source, device_id):
    from nvidia.dali import fn, pipeline_def, types

    h, w = loader.size
    depth = loader.dataset.kind == "depth"
    gpu = device_id is not None
    mean = [m * 255.0 for m in loader.dataset.mean]
    std = [s * 255.0 for s in loader.dataset.std]

    @pipeline_def(batch_size=loader.batch_size, num_threads=max(1, loader.num_workers),
                  device_id=device_id, prefetch_queue_depth=loader.prefetch, seed=loader.seed,
                  exec_dynamic=True)
    def pipe():
        spec = _columns(loader)
        outs = fn.external_source(source=source, num_outputs=len(spec), batch=True,
                                  dtype=[getattr(types, t) for _, t, _ in spec],
                                  layout=[lay for _, _, lay in spec])
        node = dict(zip([name for name, _, _ in spec], outs))
        img = fn.decoders.image(node["encoded"], device="mixed" if gpu else "cpu",
                                output_type=types.RGB)
        img = fn.resize(img, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR,
                        antialias=True)
        extra = []
        if depth:
            dep = node["depth"].gpu() if gpu else node["depth"]
            dep = fn.resize(dep, resize_x=w, resize_y=h, interp_type=types.INTERP_NN,
                            antialias=False)
            if loader.augment:
                dep = fn.slice(dep, start=node["anchor"], shape=[h, w], axis_names="HW",
                               out_of_bounds_policy="pad", fill_values=0)
                dep = fn.flip(dep, horizontal=node["flip"])
            extra.append(fn.transpose(dep, perm=[2, 0, 1]))
        if "mask" in node:
            msk = node["mask"].gpu() if gpu else node["mask"]
            msk = fn.resize(msk, resize_x=w, resize_y=h, interp_type=types.INTERP_NN,
                            antialias=False)
            extra.append(fn.transpose(msk, perm=[2, 0, 1]))
        if loader.augment:
            img = fn.slice(img, start=node["anchor"], shape=[h, w], axis_names="HW",
                           out_of_bounds_policy="pad", fill_values=0)
        img = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=mean,
                                       std=std, mirror=node["flip"] if loader.augment else 0)
        return (img, node["position"], *extra)

    return pipe()


def _to_torch(tl, device):
    """DALI TensorList (uniform shape) -> a torch tensor copy on ``device``."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    t = tl.as_tensor()
    out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(t, out, cuda_stream=stream)
    return out


class DaliImageLoader(ImageLoaderBase):
    """DALI backend; ``num_workers`` is DALI's ``num_threads``."""

    backend = "dali"

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
        self._source = _Source(self)
        self._pipe = None

    def _fresh_pipeline(self):
        self._source = _Source(self)
        self._pipe = _build_pipeline(self, self._source, self.device_id)
        self._pipe.build()

    def __iter__(self):
        plan = self._begin_epoch()
        if self.dataset.kind == "depth" and self.split == "test":
            self.dataset.test_mask()
        # a fresh pipeline per epoch: an epoch left half-way (break) leaves DALI's prefetch
        # queue holding batches of the old order, and building costs little next to decoding
        self._fresh_pipeline()
        self._source.start(plan)
        order = plan[0]
        depth = self.dataset.kind == "depth"
        while True:
            try:
                outs = self._pipe.run()
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - decoder/source failures become DataErrors
                if self._source.error is not None:
                    raise self._source.error
                failed = self._source.fed[0] if self._source.fed else []
                files = [self.view.where(int(order[p])) for p in failed]
                raise DataError(f"DALI failed on a batch of {len(files)} file(s) "
                                f"[{'; '.join(files)}]: {str(e).splitlines()[0]}") from None
            positions = self._source.fed.popleft()
            x = _to_torch(outs[0], self.device)
            pos = np.asarray(outs[1].as_tensor()).reshape(-1)
            assert list(pos) == positions, "DALI returned batches out of order"
            d = m = None
            if depth:
                d = _to_torch(outs[2], self.device)
                m = _to_torch(outs[3], self.device).bool() if _wants_mask(self) else None
            yield self._finish(x, pos, order, depth=d, mask=m)
        self._pipe = None
        self._end_epoch()
