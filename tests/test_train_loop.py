"""The training loop and the evaluation pass (Trainer.train_epoch with train/step.py's TrainStep,
train/evaluation.py's evaluate):
no host read of a device value per step, the first-batch wait recorded, NaN predictions reported
once per pass. The host reads are counted on the CPU by wrapping the tensor methods that force one
on a GPU (item, tolist, cpu, numpy, bool/float/int conversion) and counting the calls made from
ssir_fast's own code, except the data loaders (they hold host data by design) and the ops'
argument checks (which read host tensors only: `ops.perturb._check_order` skips device tensors).
The CUDA lane checks the real thing with torch.cuda.set_sync_debug_mode (test_dali.py)."""
import os
import sys

import pytest
import torch

from ssir_fast.train import make_config
from ssir_fast.train.trainer import Trainer
from _dir_data import write_dir_csv

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = str(tmp_path_factory.mktemp("loop"))
    write_dir_csv(r, sizes=(20, 6, 6), size=16)
    return r


def trainer(root, out, batch_size, **extra):
    cfg = make_config({"data": "agedb", "data_root": root, "image_size": 16, "model": "cnn",
                       "epochs": 1, "batch_size": batch_size, "workers": 0, "device": "cpu",
                       "progress": False, "out": str(out), **extra})
    t = Trainer(cfg, log=lambda *a: None)
    t.setup()
    t.prepare(t.model.parameters())
    return t


class HostReads:
    """Counts host reads of tensor values made from ssir_fast code (loaders, ops excepted)."""

    def __init__(self, monkeypatch):
        self.n = 0
        here = os.sep + "ssir_fast" + os.sep
        skip = (here + "data" + os.sep, here + "ops" + os.sep)
        for name in READS:
            orig = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=orig, **k):
                f = sys._getframe(1).f_code.co_filename
                if here in f and not any(d in f for d in skip):
                    self.n += 1
                return _orig(t, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, wrapped)


@pytest.mark.parametrize("ssir", [False, True])
def test_host_reads_per_epoch_not_per_step(root, tmp_path, monkeypatch, ssir):
    extra = {"ssir": True} if ssir else {}
    counts = {}
    for bs in (10, 4):                                  # 2 and 5 steps per epoch
        t = trainer(root, tmp_path / f"b{bs}", bs, **extra)
        assert len(t.data.train_loader) == (2 if bs == 10 else 5)
        reads = HostReads(monkeypatch)
        rec = t.train_epoch(0)
        train_reads = reads.n
        t.evaluate("val")
        counts[bs] = (train_reads, reads.n - train_reads)
        monkeypatch.undo()
        assert rec["first_batch_s"] is not None and 0 <= rec["first_batch_s"] <= \
            rec["epoch_time_s"]
    assert counts[10] == counts[4], counts              # the same reads for 2 or 5 steps


def test_evaluate_reports_nan_predictions_once(root, tmp_path):
    t = trainer(root, tmp_path, 4)
    with torch.no_grad():
        for p in t.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"evaluation on val: the model predicted NaN or inf "
                                         r"for 6 target\(s\)"):
        t.evaluate("val")


class _Batches(list):
    def set_epoch(self, epoch):
        pass


@pytest.mark.parametrize("was_training", [True, False])
def test_evaluate_restores_the_mode_when_a_batch_raises(was_training):
    from ssir_fast.imbalance import LabelBins
    from ssir_fast.train.evaluation import evaluate

    class Fails(torch.nn.Linear):
        calls = 0

        def forward(self, x):
            assert not self.training            # evaluated in eval mode
            Fails.calls += 1
            if Fails.calls == 2:
                raise RuntimeError("bad batch")
            return super().forward(x).squeeze(1)

    model = Fails(3, 1).train(was_training)
    batches = _Batches((torch.randn(4, 3), torch.rand(4) * 5, torch.ones(4)) for _ in range(3))
    with pytest.raises(RuntimeError, match="bad batch"):
        evaluate(model, batches, LabelBins(0.0, 1.0, 5))
    assert model.training is was_training and Fails.calls == 2
    Fails.calls = 10                            # a pass without failure restores it too
    evaluate(model, batches, LabelBins(0.0, 1.0, 5))
    assert model.training is was_training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ssir", [False, True])
def test_cuda_synchronisations_per_epoch_not_per_step(root, tmp_path, ssir):
    import warnings
    counts = {}
    for bs in (10, 4):
        extra = {"ssir": True} if ssir else {}
        t = trainer(root, tmp_path / f"b{bs}", bs, device="cuda", **extra)
        t.train_epoch(0)                                # warm-up: cuDNN autotuning, allocator
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                t.train_epoch(1)
                t.evaluate("val")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[bs] = sum("synchroniz" in str(w.message) for w in seen)
    assert counts[10] == counts[4], counts


def test_model_protocol_prediction_or_pair_and_no_state_on_the_module():
    from ssir_fast.train.models import RegressionOutput, build_model
    model = build_model("mlp", (4,), 8)
    x = torch.randn(5, 4)
    pred = model(x)
    out = model(x, features=True)
    assert isinstance(pred, torch.Tensor) and pred.shape == (5, 1)
    assert isinstance(out, RegressionOutput) and out.features.shape == (5, 8)
    assert torch.equal(out.pred, pred)
    assert not hasattr(model, "features") and not hasattr(model, "begin_step")


def test_ssir_passes_say_what_they_want_of_fds():
    # FDS active (one finished epoch): every pass calibrates with the labels of its own rows (the
    # subset passes see fewer rows), the features come from the clean pass only, and no pass
    # collects FDS statistics.
    from functools import partial
    from ssir_fast import SSIRLoss
    from ssir_fast.fds import FDS
    from ssir_fast.imbalance import LabelBins
    from ssir_fast.train.models import build_model
    torch.manual_seed(0)
    bins = LabelBins(0.0, 1.0, 10)
    model = build_model("mlp", (4,), 8, partial(FDS, bins=bins))
    x, y = torch.randn(16, 4), torch.rand(16, 1) * 10
    model.fds.update(model.encoder(x).detach(), y)
    model.fds.end_epoch(0)
    tracked = model.fds.num_samples_tracked.clone()
    seen = []

    def call(inputs, rows, clean):
        labels = y if rows is None else y[rows]
        seen.append((inputs.shape[0], rows, clean, labels.shape[0]))
        out = model(inputs, labels=labels, epoch=1, features=clean)
        return out if clean else (out, None)
    res = SSIRLoss(bin_width=1.0, epsilon=1e-2, subset=0.5)(model, x, y, call=call)
    res.loss.backward()
    assert [s[2] for s in seen] == [True, False, False]           # clean, step 2, consistency
    assert seen[0][:2] == (16, None)
    for n, rows, _, n_labels in seen[1:]:
        assert n == n_labels == 8 and torch.equal(rows, res.index)
    assert res.features.shape == (16, 8) and res.features.requires_grad
    assert torch.equal(model.fds.num_samples_tracked, tracked)
    assert int(model.fds._count.sum()) == 0


def test_compile_with_ssir_scopes_the_donated_buffer_setting_to_the_step(root, tmp_path):
    # compiled backwards with donated buffers refuse SSIR's retain_graph: the step turns them off
    # around its own calls only, never for the process
    import torch._functorch.config as functorch_config
    t = trainer(root, tmp_path, 4, ssir=True)
    before = functorch_config.donated_buffer
    t.step = type(t.step)(t.model, t.forward_model, t.losses.base, t.opt, t.runtime.precision,
                          t.runtime.env, ssir=t.losses.ssir, compiled=True)
    with t.step._compile_scope():
        assert functorch_config.donated_buffer is False
    assert functorch_config.donated_buffer == before


def test_ssir_step_forms_no_input_gradient_in_the_final_backward():
    """The clean pass's input is a leaf that requires grad (step 1 differentiates w.r.t. it); the
    step's backward forms the parameters' gradients only, not a last input gradient nobody reads.
    A function at the model's input counts its backward calls: steps 1 and 2 need one each
    (autograd.grad), the final backward none. Gradients equal a plain backward's."""
    from ssir_fast import SSIRLoss, losses
    from ssir_fast.train import distributed as dist_env
    from ssir_fast.train.precision import choose_precision
    from ssir_fast.train.step import TrainStep

    calls = []

    class Count(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            return g

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x, labels=None, epoch=None, features=False):
            return self.lin(Count.apply(x))

    torch.manual_seed(0)
    x, y, w = torch.randn(8, 3), torch.randn(8), torch.ones(8)
    grads = []
    for plain in (False, True):
        net = Net()
        torch.manual_seed(1)
        net.lin.reset_parameters()
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        prec = choose_precision(torch.device("cpu"), False, "auto", None)
        ssir = SSIRLoss(bin_width=1.0, epsilon=0.1, lam=1.0)
        step = TrainStep(net, net, losses.weighted_l1, opt, prec, dist_env.setup("cpu"), ssir=ssir)
        if plain:
            step._trained = lambda: None   # torch's default: every leaf's gradient
        calls.clear()
        torch.manual_seed(2)
        step(x, y, w, 0)
        grads.append([p.grad.clone() for p in net.parameters()])
        assert len(calls) == (3 if plain else 2), calls
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
