"""Data sets and loaders for imbalanced regression.

    ds = ssir_fast.data.load_dataset("default")                  # built on first use
    ds = ssir_fast.data.load_dataset("agedb", root="data/")      # data/agedb.csv + images
    loader = ssir_fast.data.make_loader(ds, "train", 256, backend="auto", device="cuda",
                                        shard=(rank, world_size), seed=0)
    for epoch in range(E):
        loader.set_epoch(epoch)
        for inputs, targets, weights in loader: ...

Batches are ``(inputs, targets, weights)`` on ``device``: images [B, 3, H, W] float32 normalised,
scalar targets [B, 1] (vector targets [B, D]; depth: [B, 1, H, W] metres), weights shaped like
scalar targets, [B, 1] for vector ones (ones, per-sample
``sample_weights``, or ``bin_weights`` looked up per target element; depth weights are 0 on
invalid (<= 0) pixels, crop padding included; for the NYUD2 test split they are the balanced-pixel
mask).

Backends: "dali" (NVIDIA DALI; GPU "mixed" decoding when ``device`` is CUDA), "torch" (DataLoader
with worker processes), "auto" = DALI when importable. Both apply the same per-sample augmentation
draws in the same order; on the test split their tensors agree within the decoder/resize tolerance
documented in `TEST_TOLERANCE` and the labels are identical.
"""
from .datasets import (SPLITS, DataError, DepthDataset, ImageRegressionDataset, SplitView,
                       balanced_pixel_mask, load_dir_csv, load_nyud2, read_depth)
from . import registry
from .default_data import build_default, default_root, load_default
from .synthetic import two_gaussians
from .tabular import TabularDataset, TensorLoader, load_tabular

__all__ = ["load_dataset", "make_loader", "DataError", "SplitView", "ImageRegressionDataset",
           "DepthDataset", "TabularDataset", "load_dir_csv", "load_nyud2", "load_default",
           "build_default", "default_root", "load_tabular", "two_gaussians", "balanced_pixel_mask",
           "read_depth", "dali_available", "TEST_TOLERANCE", "DATASETS", "SPLITS", "registry"]

# Agreement of the two backends on normalised inputs (x / 255 - 0.5) / 0.5, same files, CPU:
# - no resize needed (stored size == requested size): both decode with libjpeg-turbo and apply the
#   same crop/flip draws, so train and test tensors are equal up to float rounding;
# - with a resize the bilinear filters (PIL vs DALI) round differently: measured at most one 8-bit
#   level (1 / 127.5 = 0.0078) on ~1/5 of the pixels; the tolerance allows two levels;
# - GPU "mixed" decoding (nvJPEG) vs the CPU decoders: a mean difference below one level.
TEST_TOLERANCE = {"no_resize_max_abs": 1e-6, "resize_max_abs": 2 / 127.5,
                  "resize_mean_abs": 0.5 / 127.5, "gpu_mean_abs": 1 / 127.5}


def dali_available():
    from .dali_loader import dali_available as _da
    return _da()


def load_dataset(name, root=None, **options):
    """A registered data set by name (see `registry`; ``registry.get(name).options`` lists the
    options each one accepts).

    - ``"default"``: rotated digits (options of `load_default`: image_size, n_train, ...; ``root``
      is the build folder, default under ``$SSIR_FAST_DATA``).
    - ``"agedb"`` / ``"imdb_wiki"``: ``root`` holds ``agedb.csv`` / ``imdb_wiki.csv`` (or pass
      ``csv=``) and the images; options of `load_dir_csv`.
    - ``"nyud2"``: ``root`` holds the NYUD2-DIR list files; options of `load_nyud2`.
    - ``"two_gaussians"``: options of `two_gaussians` (ratio, d, n_major, ...).
    - ``"tabular"``: ``root`` is the CSV path; ``target=`` names the target column; options of
      `load_tabular`.

    An option the data set's loader does not take is a TypeError naming it and the accepted ones.
    """
    spec = registry.get(name)
    errs = spec.option_errors(options, "load_dataset")
    if errs:
        raise TypeError("; ".join(errs))
    return spec.build(root, **options)


def __getattr__(name):
    # DATASETS follows the registry, data sets registered later included
    if name == "DATASETS":
        return registry.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_loader(dataset, split, batch_size, backend="auto", device="cpu", shard=(0, 1), seed=0,
                **options):
    """Loader of (inputs, targets, weights) batches for one split of ``dataset``.

    Options: shuffle (default: train only), augment (default: train only), size (H, W) (default
    the data set's), num_workers (DALI threads / DataLoader workers, default min(4, CPUs)),
    prefetch (batches, default 2), on_error ("raise" | "skip"), sample_weights, bin_weights,
    even_shards (pad short shards with weight-0 repeats so every rank has the same length).
    Tabular and synthetic data are served from memory whatever ``backend`` says ("auto"/"torch").
    """
    if backend not in ("auto", "dali", "torch"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'torch', got {backend!r}")
    if getattr(dataset, "kind", None) == "tabular":
        if backend == "dali":
            raise ValueError("backend='dali' serves image data sets; tabular data come from "
                             "memory (use backend='auto' or 'torch')")
        return TensorLoader(dataset, split, batch_size, device=device, shard=shard, seed=seed,
                            **options)
    if backend == "auto":
        backend = "dali" if dali_available() else "torch"
    if backend == "dali":
        from .dali_loader import DaliImageLoader
        return DaliImageLoader(dataset, split, batch_size, device=device, shard=shard, seed=seed,
                               **options)
    from .torch_loader import TorchImageLoader
    return TorchImageLoader(dataset, split, batch_size, device=device, shard=shard, seed=seed,
                            **options)
