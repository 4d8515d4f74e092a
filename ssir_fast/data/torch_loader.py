"""PyTorch DataLoader backend: PIL decoding in worker processes, the DIR augmentation of
`transforms` with the same per-sample draws as the DALI backend."""
import io

import numpy as np
import torch

from .datasets import DataError
from .loader_base import ImageLoaderBase, read_image_bytes
from .transforms import crop_pad, normalize_uint8

__all__ = ["TorchImageLoader", "decode_resize"]


def decode_resize(data, size):
    """Encoded bytes -> RGB uint8 [H, W, 3] resized to ``size`` = (H, W) with PIL bilinear
    (antialiased when shrinking), the torchvision Resize behaviour."""
    from PIL import Image
    with Image.open(io.BytesIO(data.tobytes() if isinstance(data, np.ndarray) else data)) as im:
        im = im.convert("RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im)


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
    """Map-style view used by the workers: item = (position, index, anchor_y, anchor_x, flip)."""

    def __init__(self, loader):
        self.view = loader.view
        self.size = loader.size
        self.augment = loader.augment
        self.mean, self.std = loader.dataset.mean, loader.dataset.std
        self.depth = loader.dataset.kind == "depth"
        self.loader = loader  # for depth reading helpers (picklable: no open handles)

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
                depth = _resize_nearest(self.loader._read_depth(i), self.size)
                m = self.loader._test_mask(i)
                mask = None if m is None else _resize_nearest(m, self.size)
            if self.augment:
                arr = crop_pad(arr, (ay, ax), self.size)
                if depth is not None:
                    depth = crop_pad(depth, (ay, ax), self.size)
                if flip:
                    arr = arr[:, ::-1]
                    depth = None if depth is None else depth[:, ::-1]
            x = normalize_uint8(arr, self.mean, self.std)
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
    x = torch.stack([it[1] for it in good])
    d = torch.stack([it[2] for it in good]) if good[0][2] is not None else None
    m = torch.stack([it[3] for it in good]) if good[0][3] is not None else None
    return pos, x, d, m, errors


class TorchImageLoader(ImageLoaderBase):
    """``torch.utils.data.DataLoader`` over the split with ``num_workers`` worker processes and
    ``prefetch`` batches per worker; pinned memory when the device is CUDA."""

    backend = "torch"

    def __iter__(self):
        order, padded, anchors, flips = self._begin_epoch()
        if self.dataset.kind == "depth" and self.split == "test":
            self.dataset.test_mask()  # computed once here, not once per worker
        batches = [[(p, int(order[p]), int(anchors[order[p], 0]), int(anchors[order[p], 1]),
                     int(flips[order[p]])) for p in range(s, min(s + self.batch_size, len(order)))]
                   for s in range(0, len(order), self.batch_size)]
        kwargs = {}
        if self.num_workers > 0:
            # forkserver, not fork: forking a process whose other threads (OpenMP, gloo, DALI,
            # tqdm) hold locks can deadlock the worker.
            kwargs = {"prefetch_factor": self.prefetch, "persistent_workers": False,
                      "multiprocessing_context": "forkserver"}
        dl = torch.utils.data.DataLoader(_Samples(self), batch_sampler=batches,
                                         num_workers=self.num_workers, collate_fn=_collate,
                                         pin_memory=self.device.type == "cuda", **kwargs)
        for pos, x, d, m, errors in dl:
            for msg in errors:
                self._skip(msg)
            if pos is None:
                continue  # every sample of this batch was bad (and counted)
            yield self._finish(x, pos, order, depth=d, mask=m)
        self._end_epoch()
