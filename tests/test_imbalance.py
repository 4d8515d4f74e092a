"""Label bins, INV / SQINV / LDS re-weighting and the weighted sampler, against scipy and a
float64 transcription of the DIR recipe written here."""
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal.windows
import torch

from ssir_fast.imbalance import (DIR_RECIPES, LabelBins, bin_weights, lds_kernel, lookup_weights,
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


# ---- the official NYUD2 weighting (nyud2-dir loaddata.py, `_get_bucket_weights`) ----------------

def _nyud2_reference(bucket_num_list, reweight, lds, window, bucket_start=7, bucket_num=100):
    """nyud2-dir's per-bucket weights, transcribed: buckets below bucket_start take bucket 7's
    (smoothed) count, no clip, LDS with scipy's convolve1d mode='reflect', scaled so that the
    pixel-weighted mean is 1."""
    counts = list(bucket_num_list)
    if lds:
        value = np.asarray(counts[bucket_start:])
        if reweight == "sqrt_inv":
            value = np.sqrt(value)
        smoothed = scipy.ndimage.convolve1d(value, weights=window, mode="reflect")
        value = [smoothed[0]] * bucket_start + list(smoothed)
    else:
        value = [counts[bucket_start]] * bucket_start + counts[bucket_start:]
        if reweight == "sqrt_inv":
            value = np.sqrt(value)
    value = np.asarray(value, dtype=np.float64)
    scaling = np.sum(counts) / np.sum(np.asarray(counts) / value)
    return np.array([scaling / value[b] for b in range(bucket_num)])


def _nyud2_pixels(seed=0):
    """Depth pixels with per-bucket counts in the thousands (as per-pixel counts are: far above
    the age recipe's INV clip at 1000), in buckets 7..99, none below 0.7 m."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(100, dtype=np.int64)
    counts[7:] = rng.integers(1500, 20000, 93)
    depth = np.concatenate([(b + rng.uniform(0.05, 0.95, c)) / 10 for b, c in enumerate(counts) if c])
    return depth, counts


@pytest.mark.parametrize("reweight", ["inverse", "sqrt_inv"])
@pytest.mark.parametrize("lds", [False, True])
def test_nyud2_weights_match_official(reweight, lds):
    depth, counts = _nyud2_pixels()
    bins = LabelBins(0.7, 0.1, 93)                        # ssir_fast's NYUD2 bins: bucket = bin + 7
    window = lds_kernel("gaussian", 5, 2.0)
    # python ints, as TRAIN_BUCKET_NUM: the official INV+LDS truncates the smoothed counts ...
    official = _nyud2_reference(counts.tolist(), reweight, lds, window)
    got = bin_weights(depth, bins, reweight, lds, "gaussian", 5, 2.0, lds_int_counts=True,
                      **DIR_RECIPES["depth"])
    np.testing.assert_allclose(got, official[7:], rtol=1e-10)
    # ... and the default smooths the float counts exactly
    exact = _nyud2_reference(counts.astype(np.float64), reweight, lds, window)
    w = bin_weights(depth, bins, reweight, lds, "gaussian", 5, 2.0, **DIR_RECIPES["depth"])
    np.testing.assert_allclose(w, exact[7:], rtol=1e-10)
    if reweight == "inverse":                             # INV really re-weights per-pixel counts
        assert w.max() / w.min() > 3
    per_pixel = lookup_weights(depth, w, bins)
    assert abs(per_pixel.astype(np.float64).mean() - 1) < 1e-5


def test_nyud2_depth_below_start_takes_bucket_7_weight():
    depth, _ = _nyud2_pixels(1)
    bins = LabelBins(0.7, 0.1, 93)
    w = bin_weights(depth, bins, "inverse", **DIR_RECIPES["depth"])
    below = lookup_weights(np.array([0.2, 0.69]), w, bins)
    np.testing.assert_allclose(below, [w[0], w[0]], rtol=1e-6)


def test_age_recipe_still_clips_inv():
    depth, _ = _nyud2_pixels(2)
    w = bin_weights(depth, LabelBins(0.7, 0.1, 93), "inverse")   # age recipe on big counts
    np.testing.assert_allclose(w, np.ones(93), rtol=1e-12)      # the NYUD2 bug this guards against


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10])
@pytest.mark.parametrize("ks", [3, 5, 9])
def test_reflect_padding_matches_scipy(n, ks):
    values = np.random.default_rng(n * ks).uniform(1, 100, n)
    window = lds_kernel("gaussian", ks, 2.0)
    counts_labels = np.repeat(np.arange(n) + 0.5, np.round(values).astype(int))
    bins = LabelBins(0, 1, n)
    counts = bins.counts(counts_labels).astype(np.float64)
    w = bin_weights(counts_labels, bins, "sqrt_inv", True, "gaussian", ks, 2.0, lds_padding="reflect")
    ref = 1 / scipy.ndimage.convolve1d(np.sqrt(counts), window, mode="reflect")
    np.testing.assert_allclose(w, ref * counts.sum() / (counts * ref).sum(), rtol=1e-10)


@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_inv_lds_int_counts_match_official_truncation(kernel):
    """The official age recipe: np.clip keeps INV counts int64 and convolve1d writes the smoothed
    counts into an int64 array (truncated). lds_int_counts=True reproduces those weights."""
    rng = np.random.default_rng(3)
    ages = np.concatenate([rng.normal(40, 12, 4000), rng.uniform(0, 120, 40)]).clip(0, 130)
    counts = np.zeros(121, dtype=np.int64)
    for a in ages:
        counts[min(120, int(a))] += 1
    window = lds_kernel(kernel, 5, 2.0)
    smoothed = scipy.ndimage.convolve1d(np.clip(counts, 5, 1000), weights=window, mode="constant")
    assert smoothed.dtype == np.int64                          # the official code's truncation
    per = np.array([smoothed[min(120, int(a))] for a in ages], dtype=np.float64)
    ref = (1 / per) * len(per) / (1 / per).sum()
    bins = LabelBins.dir_age()
    got = sample_weights(ages, bins, "inverse", True, kernel, 5, 2.0, lds_int_counts=True)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    exact = sample_weights(ages, bins, "inverse", True, kernel, 5, 2.0)
    assert np.abs(exact / got - 1).max() > 1e-3                # the documented difference exists
    # SQINV counts are floats in the official code: nothing to truncate
    np.testing.assert_array_equal(
        sample_weights(ages, bins, "sqrt_inv", True, kernel, lds_int_counts=True),
        sample_weights(ages, bins, "sqrt_inv", True, kernel))


@pytest.mark.parametrize("labels", [[20.0, 30.0, -5.0], [20.0, 1e9], [20.0, -400.0]])
def test_far_outside_labels_warn(labels):
    with pytest.warns(UserWarning, match="far outside the bins"):
        LabelBins.dir_age().counts(labels)
    with pytest.warns(UserWarning, match="far outside the bins"):
        sample_weights(labels, LabelBins.dir_age(), "sqrt_inv")


@pytest.mark.parametrize("bins,labels", [(LabelBins.dir_age(), [0.0, 20.0, 125.0, 186.0]),
                                         (LabelBins(0.7, 0.1, 93), [0.05, 0.5, 9.9, 12.0]),
                                         (LabelBins(-5, 1, 10), [-12.0, 0.0, 13.0])])
def test_merged_labels_by_convention_do_not_warn(bins, labels):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bins.counts(labels)


@pytest.mark.parametrize("kwargs,match", [(dict(inv_clip=(0, 10)), "inv_clip"),
                                          (dict(inv_clip=5), "inv_clip"),
                                          (dict(lds=True, lds_padding="zeros"), "lds_padding")])
def test_bad_recipe(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bin_weights([1.0, 2.0], LabelBins(0, 1, 5), "inverse", **kwargs)


# ---- NYUD2 bins at decimal edges: the official nyud2-dir arithmetic ----------------------------
def _official_nyud2_bucket(depth32):
    """nyud2-dir (loaddata.py / util.py `get_bin_idx`, models/fds.py): min(int(x * np.float32(10)),
    99) on a float32 depth, buckets below bucket_start = 7 merged into bucket 7. Transcribed on
    numpy float32 scalars, one at a time, as the official code maps its depths."""
    return np.array([max(min(int(v * np.float32(10)), 99), 7) for v in depth32], dtype=np.int64)


def _millimetre_depths():
    """Every millimetre depth 0.001..10.000 m as the official test loader makes it (16-bit PNG in
    mm, `to_tensor(depth).float() / 1000`: float32)."""
    return (torch.arange(1, 10001, dtype=torch.int32).float() / 1000).numpy()


def test_nyud2_bins_match_official_buckets_for_every_millimetre():
    depth = _millimetre_depths()
    official = _official_nyud2_bucket(depth) - 7                 # our bin = bucket - 7
    # the official buckets of millimetre depths are the exact decimal ones
    np.testing.assert_array_equal(official, np.clip(np.arange(1, 10001) // 100, 7, 99) - 7)
    bins = LabelBins(0.7, 0.1, 93)
    np.testing.assert_array_equal(bins.index(depth), official)                    # float32 numpy
    np.testing.assert_array_equal(bins.index(depth.astype(np.float64)), official)  # float64 copy
    np.testing.assert_array_equal(bins.index(torch.from_numpy(depth)).numpy(), official)
    np.testing.assert_array_equal(bins.index(torch.from_numpy(depth).double()).numpy(), official)
    np.testing.assert_array_equal(bins.counts(depth), np.bincount(official, minlength=93))
    # the audit's example: 0.9 m is bucket 9 (bin 2); the float64 quotient gave bucket 8
    assert bins.index(np.float32(0.9)) == 2 and bins.index(0.9) == 2
    assert np.floor((np.float64(np.float32(0.9)) - 0.7) / 0.1) == 1
    # decimal literals (python floats) land in the same bins
    np.testing.assert_array_equal(bins.index(np.arange(1, 10001) / 1000), official)


def test_nyud2_training_depths_bin_as_the_official_code():
    # training depths are 8-bit PNGs: to_tensor(depth).float() * 10 = float32(float32(k / 255) * 10)
    depth = ((torch.arange(256, dtype=torch.float32) / 255) * 10).numpy()
    bins = LabelBins(0.7, 0.1, 93)
    np.testing.assert_array_equal(bins.index(depth), _official_nyud2_bucket(depth) - 7)
    np.testing.assert_array_equal(bins.index(torch.from_numpy(depth)).numpy(),
                                  _official_nyud2_bucket(depth) - 7)


def test_nyud2_bins_clamp_and_ignore_beyond_the_range():
    bins = LabelBins(0.7, 0.1, 93)
    y = np.array([-1.0, 0.0, 0.05, 0.6999, 0.7, 9.999, 10.0, 12.0, 1e30, 1e300, -1e300])
    assert bins.index(y).tolist() == [0, 0, 0, 0, 0, 92, 92, 92, 92, 92, 0]
    nb = LabelBins(0.7, 0.1, 93, clamp=False)
    assert nb.index(y).tolist() == [-1, -1, -1, -1, 0, 92, -1, -1, -1, -1, -1]
    assert nb.index(torch.tensor(y)).tolist() == [-1, -1, -1, -1, 0, 92, -1, -1, -1, -1, -1]


def test_power_of_two_and_other_widths_keep_the_float64_rule():
    from ssir_fast.ops.binning import decimal_rule as _decimal_rule
    assert _decimal_rule(0.7, 0.1, 93) == (10.0, 7.0)
    assert _decimal_rule(0.0, 0.05, 10) == (20.0, 0.0)
    for y_min, width, n in [(0.0, 1.0, 121), (0.0, 0.5, 10), (0.0, 0.25, 10), (-3.0, 0.3, 50),
                            (0.75, 0.1, 10), (1e6, 0.1, 10), (0.0, 3.0, 10)]:
        assert _decimal_rule(y_min, width, n) is None, (y_min, width)
    # age bins: exactly floor(y) clamped, as before, on integers, their float64 neighbours and
    # random reals (float64 labels are not rounded to float32 for width 1)
    ints = np.arange(-3.0, 131.0)
    y = np.concatenate([ints, np.nextafter(ints, -np.inf), np.nextafter(ints, np.inf),
                        np.random.default_rng(0).uniform(-5, 130, 10000), [120 - 1e-12]])
    want = np.clip(np.floor(y), 0, 120).astype(np.int64)
    np.testing.assert_array_equal(LabelBins.dir_age().index(y), want)
    np.testing.assert_array_equal(LabelBins.dir_age().index(torch.from_numpy(y)).numpy(), want)


@pytest.mark.parametrize("y_min,width", [(0.0, 1.0), (0.0, 2.0), (3.0, 1.0), (-1.5, 0.75)])
def test_bin_index_equals_the_floor_formula_with_or_without_offset_and_scale(y_min, width):
    # y - 0 and y / 1 are skipped (no op): the same bins as floor((y - y_min) / width) in float64
    y = torch.tensor([-0.0, 0.0, 0.9999999, 1.0, 57.5, 99.99, 100.0, -3.2, 1e30, float("inf"),
                      -float("inf"), 2.9999998, 3.0], dtype=torch.float32)
    bins = LabelBins(y_min, width, 50)
    expected = torch.floor((y.double() - y_min) / width).clamp(0, 49).long()
    assert torch.equal(bins.index(y), expected)
    assert torch.equal(bins.index(y.double()), expected)
