"""Writers of the evaluation results: the per-bin table as CSV, everything as JSON (NaN as
null, numpy scalars as Python numbers)."""
import csv
import json
import math

import numpy as np

__all__ = ["cell", "write_per_bin_csv", "write_metrics_json"]


def cell(v):
    """A value as CSV / JSON write it: numpy scalars as Python ones, NaN and inf as None."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.str_):
        return str(v)
    return v


def write_per_bin_csv(per_bin, path):
    """One row per bin, one column per entry of `per_bin` (empty cells for NaN)."""
    names = list(per_bin)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i in range(len(per_bin["count"])):
            w.writerow([cell(per_bin[k][i]) for k in names])
    return path


def write_metrics_json(result, bins, path):
    """The group metrics, the per-bin table and the `bins` description as one JSON object."""
    doc = {k: ({kk: cell(vv) for kk, vv in v.items()} if isinstance(v, dict) and k != "per_bin"
               else v) for k, v in result.items() if k != "per_bin"}
    doc["per_bin"] = {k: [cell(x) for x in v] for k, v in result["per_bin"].items()}
    doc["bins"] = bins
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return path
