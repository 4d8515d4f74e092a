"""Label bins, INV / SQINV / LDS re-weighting and the weighted sampler, against scipy and a
float64 transcription of the DIR recipe written here."""
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal.windows
import torch

from ssir_fast.imbalance import (LabelBins, bin_weights, lds_kernel, lookup_weights,
                                 sample_weights, weighted_sampler)


@pytest.mark.parametrize("ks", [1, 3, 5, 7, 9, 41])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0, 8.0])
def test_gaussian_kernel_matches_scipy(ks, sigma):
    delta = np.zeros(ks)
    delta[ks // 2] = 1.0
    ref = scipy.ndimage.gaussian_filter1d(delta, sigma)
    np.testing.assert_allclose(lds_kernel("gaussian", ks, sigma), ref / ref.max(), atol=1e-12)


@pytest.mark.parametrize("ks", [1, 3, 5, 9, 15])
def test_triang_kernel_matches_scipy(ks):
    np.testing.assert_allclose(lds_kernel("triang", ks), scipy.signal.windows.triang(ks), atol=1e-15)


@pytest.mark.parametrize("ks,sigma", [(5, 2.0), (9, 0.5), (3, 10.0)])
def test_laplace_kernel(ks, sigma):
    x = np.arange(-(ks // 2), ks // 2 + 1)
    lap = np.exp(-np.abs(x) / sigma) / (2 * sigma)
    np.testing.assert_allclose(lds_kernel("laplace", ks, sigma), lap / lap.max(), atol=1e-15)


def test_kernel_hand_values():
    np.testing.assert_allclose(lds_kernel("triang", 5), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    np.testing.assert_allclose(lds_kernel("laplace", 3, 1.0), [np.exp(-1), 1, np.exp(-1)])


def _dir_reference(labels, max_target, reweight, lds, window):
    """The DIR repo's prepare_weights, transcribed with scipy's convolve1d."""
    counts = np.zeros(max_target)
    for v in labels:
        counts[min(max_target - 1, int(v))] += 1
    eff = np.sqrt(counts) if reweight == "sqrt_inv" else np.clip(counts, 5, 1000)
    if lds:
        eff = scipy.ndimage.convolve1d(eff, weights=window, mode="constant")
    per = np.array([eff[min(max_target - 1, int(v))] for v in labels])
    w = 1.0 / per
    return w * len(w) / w.sum()


@pytest.mark.parametrize("reweight", ["inverse", "sqrt_inv"])
@pytest.mark.parametrize("lds,kernel", [(False, "gaussian"), (True, "gaussian"), (True, "triang"),
                                        (True, "laplace")])
def test_sample_weights_match_dir_recipe(reweight, lds, kernel):
    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.normal(35, 10, 3000), rng.uniform(0, 130, 50)]).clip(0, 140)
    bins = LabelBins.dir_age(121)
    w = sample_weights(ages, bins, reweight=reweight, lds=lds, kernel=kernel, ks=5, sigma=2)
    ref = _dir_reference(ages, 121, reweight, lds, lds_kernel(kernel, 5, 2))
    np.testing.assert_allclose(w, ref, rtol=1e-6)
    assert w.dtype == np.float32 and abs(w.mean() - 1) < 1e-5


def test_hand_computed_weights():
    bins = LabelBins(0, 1, 3)
    y = np.array([0.5, 1.5, 1.5, 1.5, 2.2])          # counts 1, 3, 1
    w = sample_weights(y, bins, "sqrt_inv")            # 1, 1/sqrt3, 1 (per sample), mean 1
    raw = np.array([1, 1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3), 1])
    np.testing.assert_allclose(w, raw * 5 / raw.sum(), rtol=1e-6)
    w = sample_weights(y, bins, "inverse")             # counts clipped to 5: all equal
    np.testing.assert_allclose(w, np.ones(5), rtol=1e-6)
    assert np.all(sample_weights(y, bins, "none") == 1)


def test_dense_labels_lookup_tensor():
    bins = LabelBins(0.7, 0.1, 94)                     # depth, 0.1 m bins
    depth = torch.rand(2, 1, 8, 8) * 9 + 0.8
    w = sample_weights(depth, bins, "inverse", lds=True)
    assert w.shape == depth.shape and w.dtype == torch.float32
    assert abs(float(w.double().mean()) - 1) < 1e-5
    per_bin = bin_weights(depth, bins, "inverse", lds=True)
    idx = bins.index(depth)
    torch.testing.assert_close(w, torch.as_tensor(per_bin, dtype=torch.float32)[idx])
    torch.testing.assert_close(lookup_weights(depth, per_bin, bins), w)


def test_labelbins_clamp_and_ignore():
    b = LabelBins.dir_age()
    assert b.index(np.array([130.0, 120.0, -3.0])).tolist() == [120, 120, 0]
    nb = LabelBins(0, 1, 121, clamp=False)
    assert nb.index(torch.tensor([130.0, 5.5, -1.0])).tolist() == [-1, 5, -1]
    assert nb.counts([130.0, 5.5]).sum() == 1


def test_weighted_sampler_draws_rare_bins_more():
    y = np.array([0.5] * 90 + [5.5] * 10)
    s = weighted_sampler(y, LabelBins(0, 1, 6), "inverse", generator=torch.Generator().manual_seed(0),
                         num_samples=20000)
    drawn = y[np.fromiter(iter(s), dtype=np.int64)]
    assert 0.4 < (drawn == 5.5).mean() < 0.6   # INV balances the two bins


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(labels=[1.0, float("nan")]), ValueError, "NaN"),
    (dict(labels=[]), ValueError, "empty"),
    (dict(lds=True, ks=4), ValueError, "odd"),
    (dict(lds=True, ks=0), ValueError, "odd"),
    (dict(lds=True, kernel="box"), ValueError, "kernel"),
    (dict(reweight="none", lds=True), ValueError, "re-weighting"),
    (dict(reweight="sq"), ValueError, "reweight"),
    (dict(lds=True, sigma=0.0), ValueError, "sigma"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(labels=[1.0, 2.0, 3.0], bins=LabelBins(0, 1, 5))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sample_weights(**args)
