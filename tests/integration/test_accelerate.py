"""examples/accelerate_ssir.py in two CPU processes (torchrun, gloo): the ranks end with equal
parameters, and the validation metrics gathered with gather_for_metrics (203 rows in batches of
32 per process: the last batch is padded) equal one process's BinnedMetrics of the whole set."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from ssir_fast.metrics import BinnedMetrics


def test_two_processes(examples_path, tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", os.path.join(examples_path, "accelerate_ssir.py"),
           "--epochs", "2", "--n-val", "203", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["params"] == ranks[1]["params"]           # DDP kept the ranks in step
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    # one process, the whole validation set, the trained weights
    import accelerate_ssir as ex
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(32, 1))
    state = {k: torch.tensor(v, dtype=t.dtype).reshape(t.shape)
             for (k, t), v in zip(model.state_dict().items(), ranks[0]["params"].values())}
    model.load_state_dict(state)
    model.eval()
    _, ytr = ex.long_tailed_data(800, seed=0)
    xva, yva = ex.long_tailed_data(203, seed=1)
    m = BinnedMetrics(y_min=0.0, bin_width=ex.BIN_WIDTH, num_bins=ex.NUM_BINS, train_labels=ytr)
    with torch.no_grad():
        m.update(model(xva).squeeze(1), yva)
    expect = m.compute()
    assert ranks[0]["metrics"]["all"]["count"] == 203       # the padding is not counted
    for group in ("all", "many", "medium", "few"):
        for k, v in expect[group].items():
            assert ranks[0]["metrics"][group][k] == pytest.approx(v, rel=1e-5, nan_ok=True), \
                (group, k)
