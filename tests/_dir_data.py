"""Small real-image data sets in the DIR layouts, written by the data tests into a temp folder.

Images are scikit-learn's handwritten digits upscaled to ``size`` px and saved as JPEG. Labels are
distinct (sample k of the whole CSV has age 20 + k * 0.25) so every sample can be identified by its
label."""
import csv
import os

import numpy as np
from PIL import Image


def digit_images(n, size, seed=0):
    from sklearn.datasets import load_digits
    d = load_digits().images
    rng = np.random.default_rng(seed)
    out = []
    for k in rng.choice(len(d), n, replace=False):
        g = Image.fromarray(np.uint8(d[k] * 255 / 16), "L").resize((size, size), Image.BICUBIC)
        # colour the digit so the three channels differ (catches channel-order mistakes)
        rgb = np.stack([np.asarray(g), np.asarray(g)[:, ::-1], 255 - np.asarray(g)], -1)
        out.append(Image.fromarray(np.uint8(rgb), "RGB"))
    return out


def write_dir_csv(root, sizes=(12, 5, 7), size=16, extra_column=True, name="agedb"):
    """root/<name>.csv with age,path,split (+ an extra column) and root/images/*.jpg.
    Rows are interleaved across splits. Returns the list of rows (age, rel_path, split)."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    splits = ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2]
    rng = np.random.default_rng(1)
    rng.shuffle(splits)
    imgs = digit_images(len(splits), size)
    rows = []
    for k, (s, im) in enumerate(zip(splits, imgs)):
        rel = f"images/{k:03d}.jpg"
        im.save(os.path.join(root, rel), quality=95)
        rows.append((20 + 0.25 * k, rel, s))
    with open(os.path.join(root, f"{name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "path", "split"] + (["source"] if extra_column else []))
        for r in rows:
            w.writerow([f"{r[0]:g}", r[1], r[2]] + (["digits"] if extra_column else []))
    return rows


def depth_of(k, h, w):
    """Depth map (metres) that encodes position: distinct along x and y, in 0.7..10 m."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (0.8 + 0.3 * xx + 0.05 * yy + 0.01 * k).astype(np.float32)


def write_nyud2(root, n_train=6, n_test=4, size=16):
    """NYUD2-DIR layout: nyu2_{train,test}.csv with rgb,depth paths; depth as 16-bit PNG in mm."""
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    imgs = digit_images(n_train + n_test, size, seed=2)
    for split, ks in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        with open(os.path.join(root, f"nyu2_{split}.csv"), "w") as f:
            for k in ks:
                rgb, dep = f"data/{k}.jpg", f"data/{k}.png"
                imgs[k].save(os.path.join(root, rgb), quality=95)
                mm = np.round(depth_of(k, size, size) * 1000).astype(np.uint16)
                Image.fromarray(mm).save(os.path.join(root, dep))
                f.write(f"{rgb},{dep}\n")


def expected_image(path, anchor=None, flip=False, size=None, pad=16):
    """Independent reference of the DIR transform: PIL decode, zero-pad by `pad`, crop at padded
    offset anchor + pad, flip, (x / 255 - 0.5) / 0.5 -> float64 [3, H, W]."""
    im = Image.open(path).convert("RGB")
    a = np.asarray(im).astype(np.float64)
    h, w = a.shape[:2] if size is None else size
    if anchor is not None:
        p = np.pad(a, ((pad, pad), (pad, pad), (0, 0)))
        oy, ox = anchor[0] + pad, anchor[1] + pad
        a = p[oy:oy + h, ox:ox + w]
    if flip:
        a = a[:, ::-1]
    return ((a / 255 - 0.5) / 0.5).transpose(2, 0, 1)
