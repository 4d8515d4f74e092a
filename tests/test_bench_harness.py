"""The benchmark harness: quantiles, modes, one row schema, each case timed once."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import harness  # noqa: E402

SCHEMA = {"bench", "case", "mode", "device", "n", "median_ms", "q25_ms", "q75_ms", "min_ms",
          "max_ms", "peak_mem_mb", "torch", "time", "device_name"}


def test_quantiles_match_numpy():
    samples = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2]
    t = harness.Timing(samples)
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert t.quantile(q) == pytest.approx(float(np.quantile(samples, q)))
    assert t.median == pytest.approx(float(np.median(samples)))
    assert t.min == 0.1


def test_modes_call_what_they_say():
    calls = {"fwd": 0}
    w = torch.randn(8, requires_grad=True)

    def fn():
        calls["fwd"] += 1
        return (w * 2).sum()

    for mode, fwd_per_call in (("forward", 1), ("full", 1), ("backward", 1)):
        calls["fwd"] = 0
        w.grad = None
        t = harness.measure(fn, mode=mode, repeats=3, warmup=1)
        assert len(t.samples) == 3 and all(s >= 0 for s in t.samples)
        assert calls["fwd"] == 4 * fwd_per_call
        if mode == "forward":
            assert w.grad is None
        else:  # 4 backward passes of d(2 sum w)/dw = 2
            assert torch.equal(w.grad, torch.full_like(w, 8.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        harness.measure(lambda: None, mode="sideways")
    with pytest.raises(ValueError, match="repeats"):
        harness.measure(lambda: None, repeats=0)


def test_bench_rows_share_one_schema_and_each_case_runs_once(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    monkeypatch.setattr(harness, "RESULTS", str(path))
    counts = {"a": 0, "b": 0}

    def case(name):
        def fn():
            counts[name] += 1
        return fn

    b = harness.Bench(None, "unit/bench", "cpu", repeats=4, warmup=1, size=123)
    ta = b.case("ours", case("a"))
    b.case("baseline", case("b"), repeats=2, warmup=0)
    rows = b.finish(ratio=1.5)
    assert counts == {"a": 5, "b": 2}  # warm-up + timed calls, nothing timed twice
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == rows and [r["case"] for r in rows] == ["ours", "baseline"]
    for r in rows:
        assert SCHEMA | {"size", "ratio"} == set(r)
        assert r["bench"] == "unit/bench" and r["ratio"] == 1.5 and r["size"] == 123
    assert rows[0]["n"] == 4 and rows[0]["median_ms"] == pytest.approx(ta.median * 1e3)
    table = harness.markdown(str(path))
    assert "| unit/bench | ours | forward |" in table and "| unit/bench | baseline |" in table


def test_copy_bandwidth_positive():
    assert harness.copy_bandwidth(1 << 20) > 0


def test_interleaved_cases_run_round_robin(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", str(tmp_path / "r.jsonl"))
    order = []
    b = harness.Bench(None, "unit/rr", "cpu")
    ts = b.cases({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                 repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert list(ts) == ["a", "b"] and all(len(t.samples) == 3 for t in ts.values())
    assert [r["case"] for r in b.finish()] == ["a", "b"]


def test_grad_inputs_backward_forms_only_those_gradients():
    w = torch.randn(8, requires_grad=True)
    v = torch.randn(8, requires_grad=True)
    fn = lambda: w * v  # noqa: E731
    for mode in ("backward", "full"):
        t = harness.measure(fn, mode=mode, repeats=2, warmup=1, grad_inputs=(w,))
        assert len(t.samples) == 2
    assert w.grad is None and v.grad is None  # torch.autograd.grad: nothing accumulated
    with pytest.raises(ValueError, match="grad_inputs"):
        harness.measure(fn, mode="forward", grad_inputs=(w,))


def test_case_names_are_unique_within_a_bench(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", str(tmp_path / "r.jsonl"))
    b = harness.Bench(None, "unit/dup", "cpu", repeats=1, warmup=0)
    b.case("a", lambda: None)
    with pytest.raises(ValueError, match="already timed"):
        b.cases({"b": lambda: None, "a": lambda: None})


def test_record_takes_a_row_or_a_name_and_fields(tmp_path, monkeypatch):
    # record(name, **fields) is the form bench_loader/bench_e2e use through conftest
    path = tmp_path / "r.jsonl"
    monkeypatch.setattr(harness, "RESULTS", str(path))
    harness.record({"bench": "x", "a": 1})
    harness.record("y", a=2)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r["bench"], r["a"]) for r in rows] == [("x", 1), ("y", 2)]
    assert all("torch" in r and "time" in r for r in rows)
