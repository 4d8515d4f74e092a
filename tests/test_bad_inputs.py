"""The bad-input and fault sweep as tables: each case is an input, the exception it must raise
and a phrase of the message (API), or the command line, its exit code and a phrase of its one
line on stderr (CLI). Run folders (refusals, locks, eval), training health and the cases that
need a real run follow the tables. The perturb norm over all gradient sizes is in
test_perturb_norm.py, in-place perturb under autograd in test_perturb_inplace.py."""
import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ssir_fast
from ssir_fast import SSIRLoss, losses
from ssir_fast.cli import main
from ssir_fast.data import DataError
from ssir_fast.data.datasets import load_dir_csv
from ssir_fast.data.tabular import load_tabular
from ssir_fast.fds import FDS
from ssir_fast.imbalance import LabelBins
from ssir_fast.metrics import shot_metrics
from ssir_fast.ops import bin_reduce, fds_calibrate, perturb
from ssir_fast.resample import smogn
from ssir_fast.train import ConfigError, make_config
from ssir_fast.train import checkpoint as ckpt
from ssir_fast.train.config import load_config_file
from ssir_fast.train.runfolder import LOCK_NAME, RunLock
from ssir_fast.train.runtime import check_environment

GAUSS = ["--data", "two_gaussians", "--ratio", "4", "--epochs", "2", "--batch-size", "256",
         "--no-progress", "--no-plots"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ API: the table

class Returns(torch.nn.Module):
    """A model returning its prediction wrapped in a tuple, dict or list."""

    def __init__(self, kind):
        super().__init__()
        self.lin, self.kind = torch.nn.Linear(3, 1), kind

    def forward(self, x):
        p = self.lin(x)
        return {"tuple": (p, p), "dict": {"pred": p}, "list": [p]}[self.kind]


def _ssir(model=None, weight=None, **kw):
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    return SSIRLoss(**kw)(model or torch.nn.Linear(3, 1), x, y, weight=weight)


def _write(tmp, name, data):
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _dir_csv(tmp, body, bom=False):
    """A DIR-layout CSV with one real image per split (path column: `body` rows)."""
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (4, 4)).save(tmp / f"im{i}.png")
    text = "age,path,split\n" + body
    return _write(tmp, "data.csv", (b"\xef\xbb\xbf" if bom else b"") + text.encode())


ROWS = "10,im0.png,train\n20,im1.png,val\n30,im2.png,test\n"


def _yaml_bomb(tmp):
    lines = ["optim:", '  a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        lines.append(f"  {name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},"
                     f"*{prev},*{prev},*{prev},*{prev}]")
    return _write(tmp, "bomb.yaml", "\n".join(lines) + "\n")


def _full_disk_save(tmp, monkeypatch):
    path = str(tmp / "last.pt")
    ckpt.atomic_save({"a": 1}, path)
    before = open(path, "rb").read()

    def no_space(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    try:
        ckpt.atomic_save({"a": 2}, path)
    finally:
        leftovers = [n for n in os.listdir(tmp) if ".tmp-" in n]
        assert leftovers == [], leftovers                     # no stray last.pt.tmp-*
        assert open(path, "rb").read() == before               # the previous file is kept


def _full_disk_results(tmp, monkeypatch):
    from ssir_fast.metrics import BinnedMetrics
    from ssir_fast.train.evaluation import write_results
    m = BinnedMetrics(bins=LabelBins(0.0, 1.0, 3), train_labels=torch.tensor([0.5, 1.5, 2.5]))
    m.update(torch.tensor([0.4, 1.4, 2.4]), torch.tensor([0.5, 1.5, 2.5]))
    res = m.compute()
    write_results(m, res, str(tmp), "test")
    before = (tmp / "test_metrics.json").read_bytes()

    def no_space(path, result=None):
        open(path, "w").write("{partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(m, "to_json", no_space)
    try:
        write_results(m, res, str(tmp), "test")
    finally:
        assert [n for n in os.listdir(tmp) if ".tmp-" in n] == []
        assert (tmp / "test_metrics.json").read_bytes() == before


# (id, callable(tmp_path, monkeypatch), exception type, phrase of the message)
API_CASES = [
    ("ssir-epsilon-none", lambda t, m: SSIRLoss(epsilon=None), TypeError,
     "epsilon must be a number, got None"),
    ("ssir-lam-string", lambda t, m: SSIRLoss(lam="big"), TypeError, "lam must be a number"),
    ("ssir-model-tuple", lambda t, m: _ssir(Returns("tuple")), TypeError,
     "the model returned a tuple"),
    ("ssir-model-dict", lambda t, m: _ssir(Returns("dict")), TypeError, "returned a dict"),
    ("ssir-model-list", lambda t, m: _ssir(Returns("list")), TypeError, "returned a list"),
    ("ssir-weight-0dim", lambda t, m: _ssir(weight=torch.tensor(1.0)), ValueError,
     "weight must have 4 rows (one per sample): shape [N] = [4]"),
    ("ssir-weight-list", lambda t, m: _ssir(weight=[1.0] * 4), TypeError,
     "weight must be None or a tensor"),
    ("ssir-weight-nan", lambda t, m: _ssir(weight=torch.tensor([1.0, float("nan"), 1.0, 1.0])),
     ValueError, "weight has NaN or inf entries"),
    ("ssir-weight-negative", lambda t, m: _ssir(weight=torch.tensor([1.0, -1.0, 1.0, 1.0])),
     ValueError, "weight has negative entries"),
    ("l1-weight-list", lambda t, m: losses.weighted_l1(torch.zeros(3), torch.ones(3), [1.0] * 3),
     TypeError, "weight must be None or a tensor"),
    ("mse-weight-short", lambda t, m: losses.weighted_mse(torch.zeros(3), torch.ones(3),
                                                          torch.ones(2)),
     ValueError, "weight must have 3 rows"),
    ("focal-beta-nan", lambda t, m: losses.focal_l1(torch.zeros(3), torch.ones(3),
                                                   beta=float("nan")),
     ValueError, "beta must be finite and >= 0, got nan"),
    ("perturb-epsilon-list", lambda t, m: perturb(torch.ones(2, 3), torch.ones(2, 3), [0.1]),
     TypeError, "perturb: epsilon must be a number, got list"),
    ("ssir-model-not-callable", lambda t, m: SSIRLoss()("model", torch.ones(2, 3),
                                                        torch.ones(2, 1)),
     TypeError, "model must be a callable module, got str"),
    ("fds-calibrate-nan-var", lambda t, m: fds_calibrate(
        torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(3, 2),
        torch.full((3, 2), float("nan")), torch.zeros(3, 2), torch.ones(3, 2)),
     ValueError, "var contains NaN or inf"),
    ("fds-calibrate-negative-var", lambda t, m: fds_calibrate(
        torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(3, 2),
        torch.ones(3, 2), torch.zeros(3, 2), -torch.ones(3, 2)),
     ValueError, "smoothed_var has negative entries"),
    ("fds-nan-features", lambda t, m: _fds_nan_epoch(), ValueError,
     "feature statistics of epoch 0 are NaN or inf"),
    ("shot-metrics-bin-width-0", lambda t, m: shot_metrics(torch.zeros(3), torch.ones(3),
                                                           torch.ones(3), bin_width=0),
     ValueError, "bin_width must be finite and > 0"),
    ("shot-metrics-tiny-bins", lambda t, m: shot_metrics(torch.zeros(3), torch.ones(3),
                                                         torch.tensor([0.0, 50.0]),
                                                         bin_width=1e-9),
     ValueError, "label bins is too many"),
    ("bin-reduce-absurd-bins", lambda t, m: bin_reduce(torch.zeros(3), torch.ones(3), 0.0, 1.0,
                                                       10 ** 13),
     ValueError, "label bins is too many"),
    ("label-bins-absurd", lambda t, m: LabelBins(0.0, 1.0, 10 ** 12), ValueError,
     "GiB"),
    ("csv-not-utf8", lambda t, m: load_dir_csv(_write(t, "x.csv", b"age,path,split\n1,\xff.png,"
                                                                  b"train\n")),
     DataError, "line 2: not UTF-8 text (byte 0xff"),
    ("csv-image-is-a-folder", lambda t, m: (os.makedirs(t / "dir.png"), load_dir_csv(
        _write(t, "x.csv", "age,path,split\n1,dir.png,train\n")))[1],
     DataError, "is a folder, not a file"),
    ("csv-duplicate-column", lambda t, m: load_tabular(_write(t, "x.csv", "a,a,y\n1,2,3\n"), "y"),
     DataError, "appear more than once"),
    ("csv-underscore-number", lambda t, m: load_tabular(_write(t, "x.csv", "a,y\n1_000,3\n"),
                                                        "y"),
     DataError, "value '1_000' in column 'a' is not a number"),
    ("csv-fullwidth-digits", lambda t, m: load_dir_csv(_dir_csv(t, "\uff11\uff12,im0.png,train\n"
                                                                + ROWS)),
     DataError, "is not a number"),
    ("tabular-not-utf8", lambda t, m: load_tabular(_write(t, "x.csv", b"a,y\n1,2\n3,\xe9\n"),
                                                   "y"),
     DataError, "line 3: not UTF-8"),
    ("smogn-identical-targets", lambda t, m: smogn(np.random.rand(100, 2),
                                                   np.r_[np.full(95, 5.0), [1, 2, 3, 10, 20]]),
     ValueError, "interquartile range is 0"),
    ("yaml-alias-bomb", lambda t, m: load_config_file(_yaml_bomb(t)), ConfigError,
     "aliases (*name) are not accepted"),
    ("config-not-utf8", lambda t, m: load_config_file(_write(t, "c.yaml", b"lr: 1\nmodel: \xff\n")),
     ConfigError, "line 2: not UTF-8"),
    ("config-huge-value-message", lambda t, m: load_config_file(
        _write(t, "c.json", json.dumps({"lr": [list(range(100))] * 100}))), ConfigError,
     "option lr: expected a number"),
    ("yaml-duplicate-key", lambda t, m: load_config_file(_write(t, "c.yaml",
                                                                "lr: 0.1\nlr: 1e-3\n")),
     ConfigError, "line 2, column 1: YAML syntax error: option 'lr' is given twice"),
    ("yaml-octal-integer", lambda t, m: load_config_file(_write(t, "c.yaml", "epochs: 010\n")),
     ConfigError, "leading zero, which YAML reads as an octal number"),
    ("json-duplicate-key", lambda t, m: load_config_file(_write(t, "c.json", '{"lr": 1, "lr": 2}')),
     ConfigError, "option 'lr' is given twice"),
    ("config-is-a-folder", lambda t, m: (os.makedirs(t / "c.yaml"), load_config_file(
        str(t / "c.yaml")))[1], ConfigError, "is a folder, not a config file"),
    ("ssir-nan-input", lambda t, m: SSIRLoss()(torch.nn.Linear(3, 1), torch.tensor(
        [[0.0, float("nan"), 1.0]]), torch.zeros(1, 1)), ValueError, "x contains NaN or inf"),
    ("config-ssir-bin-width-inf", lambda t, m: make_config(
        {"data": "two_gaussians", "ssir": True, "ssir_bin_width": float("inf")}), ConfigError,
     "--ssir-bin-width must be finite and > 0"),
    ("checkpoint-text-file", lambda t, m: ckpt.load_checkpoint(_write(t, "a.pt", "hello world\n")),
     ckpt.CheckpointError, "not a PyTorch checkpoint"),
    ("checkpoint-random-bytes", lambda t, m: ckpt.load_checkpoint(
        _write(t, "a.pt", bytes(range(256)) * 4)), ckpt.CheckpointError, "cannot read checkpoint"),
    ("checkpoint-folder", lambda t, m: (os.makedirs(t / "run"), ckpt.load_checkpoint(
        str(t / "run")))[1], ckpt.CheckpointError, "is a folder; give the checkpoint file"),
    ("save-on-full-disk", _full_disk_save, OSError, "was not written (its previous version"),
    ("results-on-full-disk", _full_disk_results, OSError, "test_metrics.json was not written"),
    ("perturb-leaf-inplace", lambda t, m: (lambda a: perturb(a, torch.ones(2, 3), 0.1, out=a))(
        torch.zeros(2, 3, requires_grad=True)), RuntimeError, "leaf Variable that requires grad"),
    ("config-lam-without-ssir", lambda t, m: make_config({"data": "two_gaussians", "lam": 0.5}),
     ConfigError, "--lam only acts with --ssir"),
    ("config-lds-options-without-lds", lambda t, m: make_config(
        {"data": "two_gaussians", "lds_ks": 9, "reweight": "inverse"}), ConfigError,
     "--lds-ks only acts with --lds"),
    ("config-focal-without-focal", lambda t, m: make_config(
        {"data": "two_gaussians", "focal_beta": 0.5}), ConfigError,
     "only acts with --loss focal-l1 or focal-mse"),
    ("config-resume-and-overwrite", lambda t, m: make_config(
        {"data": "two_gaussians", "out": str(t), "resume": True, "overwrite": True}),
     ConfigError, "give one"),
    ("config-device-cuda", lambda t, m: (m.setattr(torch.cuda, "is_available", lambda: False),
                                         check_environment(make_config(
                                             {"data": "two_gaussians", "device": "cuda"})))[1],
     ConfigError, "--device cuda: no CUDA device is available"),
    ("config-data-option-type", lambda t, m: make_config({"data_options": {"n_train": "abc"}}),
     ConfigError, "--data-options n_train: expected an integer, got 'abc'"),
    ("config-data-option-float", lambda t, m: make_config(
        {"data_options": {"tau": "fast"}}), ConfigError, "--data-options tau: expected a finite "
                                                         "number"),
    ("config-image-size-0", lambda t, m: make_config({"image_size": 0}), ConfigError,
     "--image-size must be an integer >= 1, got 0"),
    ("config-workers-negative", lambda t, m: make_config({"workers": -1}), ConfigError,
     "--workers must be an integer >= 0, got -1"),
]


def _fds_nan_epoch():
    fds = FDS(2, LabelBins(0.0, 1.0, 3))
    fds.update(torch.tensor([[float("nan"), 1.0], [1.0, 2.0]]), torch.tensor([0.5, 1.5]))
    fds.end_epoch(0)


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, tmp_path, monkeypatch):
    _, call, kind, phrase = case
    with pytest.raises(kind) as info:
        call(tmp_path, monkeypatch)
    assert phrase in str(info.value), str(info.value)
    assert len(str(info.value)) < 600   # a message, not a dump


# ---------------------------------------------------------------- correct results, not errors

def test_csv_with_byte_order_mark_reads_its_first_column(tmp_path):
    ds = load_dir_csv(_dir_csv(tmp_path, ROWS, bom=True))
    assert ds.splits["train"].targets.tolist() == [10.0]


def test_warning_for_options_that_are_ignored():
    with pytest.warns(UserWarning, match="--amp-dtype only acts on a GPU"):
        make_config({"data": "two_gaussians", "device": "cpu", "amp_dtype": "fp16"})
    with pytest.warns(UserWarning, match="--ssir-rho only acts with --epsilon auto"):
        make_config({"data": "two_gaussians", "ssir": True, "ssir_rho": 0.3})
    with pytest.warns(UserWarning, match="--milestones only acts with --schedule multistep"):
        make_config({"data": "two_gaussians", "milestones": [3]})


def test_a_run_config_file_replays_without_unused_option_errors(tmp_path):
    """A run's config.json names every option: only the options set to something else than
    their default count as given."""
    from ssir_fast.train.config import write_config
    cfg = make_config({"data": "two_gaussians"})
    path = write_config(cfg, str(tmp_path / "config.json"))
    assert make_config({}, load_config_file(path)).to_dict() == cfg.to_dict()


def test_progress_bar_does_not_chain_errors_to_a_missing_tqdm(monkeypatch):
    from ssir_fast.train.trainer import _progress_bar
    monkeypatch.setitem(sys.modules, "tqdm", None)   # import tqdm -> ImportError
    with pytest.raises(ValueError) as info:
        with _progress_bar(True, 1, "epoch") as bar:
            assert bar is None
            raise ValueError("in the loop")
    assert info.value.__context__ is None


def test_skip_nonfinite_step_changes_nothing():
    from ssir_fast.train import distributed as D
    from ssir_fast.train.precision import choose_precision
    from ssir_fast.train.step import TrainStep

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x, labels=None, epoch=None, features=False):
            return self.lin(x)

    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    prec = choose_precision(torch.device("cpu"), False, "auto", None)
    step = TrainStep(net, net, losses.weighted_l1, opt, prec, D.setup("cpu"), skip_nonfinite=True)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(4, 3)
    x[1, 0] = float("nan")
    assert step(x, torch.randn(4), torch.ones(4), 0) is None and step.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert step(torch.randn(4, 3), torch.randn(4), torch.ones(4), 0) is not None
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


# ------------------------------------------------------------------------------ CLI: the table

def _proc_or_readonly(tmp):
    """A folder no process may create: under /proc on Linux (root ignores permissions)."""
    if os.path.isdir("/proc/self"):
        return "/proc/ssir-fast-run"
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return str(ro / "run")


# (id, args(tmp_path) -> argv, exit code, phrase of the one stderr line)
CLI_CASES = [
    ("out-is-a-file", lambda t: ["train", *GAUSS, "--out", _write(t, "f", "x")], 2,
     "is a file, not a folder"),
    ("out-inside-a-file", lambda t: ["train", *GAUSS, "--out", _write(t, "f", "x") + "/run"], 2,
     "lies inside"),
    ("out-read-only", lambda t: ["train", *GAUSS, "--out", _proc_or_readonly(t)], 2,
     "cannot write there"),
    ("data-options-type", lambda t: ["train", "--data-options", "n_train=abc", "--out",
                                     str(t / "r")], 2, "expected an integer, got 'abc'"),
    ("image-size-0", lambda t: ["train", "--image-size", "0", "--out", str(t / "r")], 2,
     "--image-size must be an integer >= 1"),
    ("workers-negative", lambda t: ["train", *GAUSS, "--workers", "-1", "--out", str(t / "r")], 2,
     "--workers must be an integer >= 0"),
    ("lam-without-ssir", lambda t: ["train", *GAUSS, "--lam", "0.5", "--out", str(t / "r")], 2,
     "--lam only acts with --ssir"),
    ("two-errors-one-line", lambda t: ["train", *GAUSS, "--lam", "0.5", "--workers", "-1",
                                       "--out", str(t / "r")], 2, "invalid configuration: "),
    ("argparse-bad-float", lambda t: ["train", "--lr", "abc"], 2,
     "--lr: expected a number, got 'abc'"),
    ("argparse-unknown-flag", lambda t: ["train", "--no-such-flag"], 2, "unrecognized arguments"),
    ("config-missing", lambda t: ["train", "--config", str(t / "none.yaml")], 2,
     "file not found"),
    ("eval-not-a-checkpoint", lambda t: ["eval", "--checkpoint", _write(t, "c.pt", "hello")], 2,
     "not a PyTorch checkpoint"),
    ("perturbations-bad-epsilons", lambda t: ["perturbations", "--checkpoint",
                                              _write(t, "c.pt", "x"), "--epsilons", "1e-3,abc"],
     2, "--epsilons takes comma-separated numbers"),
    ("motivation-bad-ratios", lambda t: ["motivation", "--ratios", "1,x", "--out", str(t / "m")],
     2, "--ratios takes comma-separated numbers"),
    ("default-data-option-value", lambda t: ["train", "--data-options", "n_train=-5", "--out",
                                             str(t / "r")], 2,
     "--data-options: n_train must be >= 1"),
    ("default-data-tau", lambda t: ["train", "--data-options", "tau=-1", "--out", str(t / "r")], 2,
     "tau (the mean of the exponential angle distribution) must be > 0"),
    ("default-image-size-small", lambda t: ["train", "--image-size", "4", "--out", str(t / "r")],
     2, "--image-size must be >= 8 for --data default"),
    ("loader-refuses-option", lambda t: ["train", *GAUSS, "--data-options", "n_major=-5", "--out",
                                         str(t / "r")], 2,
     "--data two_gaussians: d, n_major and n_test must be >= 1"),
    ("loader-refuses-variance", lambda t: ["train", *GAUSS, "--data-options", "var=-1", "--out",
                                           str(t / "r")], 2, "var (the variance of each Gaussian)"),
    ("resume-without-run", lambda t: ["train", *GAUSS, "--resume", "--out", str(t / "empty")], 2,
     "checkpoint not found"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_error_is_one_line(case, tmp_path, capsys):
    _, argv, code, phrase = case
    try:
        rc = main(argv(tmp_path))
    except SystemExit as e:   # argparse
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert phrase in err, err
    assert "\n" not in err and "Traceback" not in err, err


def test_cli_device_cuda_without_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", *GAUSS, "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


def test_cli_unexpected_error_and_interrupt_are_one_line(tmp_path, capsys, monkeypatch):
    import ssir_fast.cli as cli

    def boom(cfg, log=None):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "train", boom)
    assert main(["train", *GAUSS, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssir-fast train: error: RuntimeError: boom") and "\n" not in err
    with pytest.raises(RuntimeError, match="boom"):   # --debug: the traceback
        main(["--debug", "train", *GAUSS, "--out", str(tmp_path / "r")])

    def interrupted(cfg, log=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    assert main(["train", *GAUSS, "--out", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.strip() == "ssir-fast train: interrupted"


def test_cli_warns_in_one_line(tmp_path, capsys):
    assert main(["train", *GAUSS, "--epochs", "1", "--gamma", "0.5", "--out",
                 str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "ssir-fast train: warning: --gamma only acts with --schedule multistep or step" in err


# ------------------------------------------------------------------------------ run folders

def _snapshot(folder):
    """{file: sha256} of a run folder (the lock file left out)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name != LOCK_NAME:
                p = os.path.join(root, name)
                out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_refused_commands_change_nothing(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *GAUSS, "--lr", "1e-3", "--out", out]) == 0
    before = _snapshot(out)
    # another run into the folder
    assert main(["train", *GAUSS, "--out", out]) == 2
    assert "holds another run" in capsys.readouterr().err
    # a resume with other options (refused after the data and model are built)
    assert main(["train", *GAUSS, "--ssir", "--lr", "0.01", "--resume", "--out", out]) == 2
    assert "different options" in capsys.readouterr().err
    assert _snapshot(out) == before
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["ssir"]["enabled"] is False and cfg["optim"]["lr"] == 1e-3
    # eval writes its own files next to the checkpoint
    assert main(["eval", "--checkpoint", os.path.join(out, "best.pt")]) == 0
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("eval_")} == before
    assert "eval_best_test_metrics.json" in after and "eval_best_test_per_bin.csv" in after
    # eval into a file, perturbation plots of tabular data: one line, nothing written
    assert main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--out",
                 _write(tmp_path, "afile", "x")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["perturbations", "--checkpoint", os.path.join(out, "best.pt")]) == 2
    assert "(tabular data)" in capsys.readouterr().err
    assert _snapshot(out) == after
    # --overwrite replaces the run
    assert main(["train", *GAUSS, "--epochs", "1", "--overwrite", "--out", out]) == 0
    assert json.load(open(os.path.join(out, "config.json")))["optim"]["epochs"] == 1
    assert "eval_best_test_metrics.json" in os.listdir(out)   # not a run file: kept


def test_default_folder_gets_a_fresh_suffix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", *GAUSS, "--epochs", "1"]
    assert main(args) == 0 and main(args) == 0
    assert sorted(os.listdir("runs")) == ["two_gaussians-vanilla-s0", "two_gaussians-vanilla-s0-v2"]


def test_second_run_on_a_folder_in_use_fails_at_once_naming_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from ssir_fast.train.runfolder import RunLock
            lock = RunLock({str(out)!r}).acquire()
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", *GAUSS, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another ssir-fast run (process {holder.pid} on" in err, err
        assert os.listdir(out) == [LOCK_NAME]
    finally:
        holder.communicate("")
    # released when the first process ends: the folder can be used
    assert main(["train", *GAUSS, "--epochs", "1", "--out", str(out)]) == 0


def test_lock_is_released_and_reusable(tmp_path):
    with RunLock(str(tmp_path / "r")):
        with pytest.raises(ConfigError, match="in use by another ssir-fast run"):
            RunLock(str(tmp_path / "r")).acquire()
    with RunLock(str(tmp_path / "r")):
        pass


# ------------------------------------------------------------------------------ training health

def test_divergence_stops_the_run_with_exit_code_1(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *GAUSS, "--lr", "1e3", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "the run diverged" in err and "\n" not in err.strip()
    assert not os.path.exists(os.path.join(out, "test_metrics.json"))


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from ssir_fast.train.trainer import Trainer
    real = Trainer.train_epoch

    def nan_in_epoch_2(self, epoch, epochs=None):
        rec = real(self, epoch, epochs)
        if epoch == 1:
            rec["train_loss"] = float("nan")
        return rec

    monkeypatch.setattr(Trainer, "train_epoch", nan_in_epoch_2)
    out = str(tmp_path / "run")
    assert main(["train", *GAUSS, "--epochs", "3", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "epoch 2: the train loss is nan" in err and "holds the last good epoch (1)" in err
    last = ckpt.load_checkpoint(os.path.join(out, "last.pt"), need=("config", "model"))
    assert last["epoch"] == 0 and len(last["history"]) == 1
    assert not os.path.exists(os.path.join(out, "summary.json"))


def test_the_package_imports_cleanly():
    assert ssir_fast.HAS_EXTENSION


def test_sweep_default_folder_gets_a_fresh_suffix(tmp_path, monkeypatch):
    import ssir_fast.cli as cli
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "train", lambda cfg, log=None: {"all": {"mae": 1.0, "gm": 1.0}})
    for _ in range(2):
        cli.run_sweep({"data": "two_gaussians"}, {}, {"lr": [1e-3]}, log=lambda *a: None)
    assert sorted(os.listdir("runs")) == ["sweep", "sweep-v2"]
    assert os.path.isfile(os.path.join("runs", "sweep-v2", "sweep.csv"))
