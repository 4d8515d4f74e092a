"""End-to-end tests of the training CLI: short runs for every method flag, exact resume, DDP with
2 gloo processes against one process, config files and errors, eval, sweep, motivation --quick.

Runs use the two-Gaussian data (MLP, < 1 s per epoch) and a tiny build of the default image data
(16 px, a few hundred images, a narrow CNN)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssir_fast.cli import main
from ssir_fast.train import ConfigError, make_config
from ssir_fast.train.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAUSS = ["--data", "two_gaussians", "--ratio", "4", "--epochs", "2", "--batch-size", "256",
         "--no-progress", "--no-plots"]
TINY_IMG = ["--data", "default", "--data-options",
            "n_train=300,max_angle=30,val_per_bin=2,test_per_bin=3", "--image-size", "16",
            "--width", "8", "--epochs", "2", "--milestones", "1", "--batch-size", "64",
            "--no-progress"]


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    # one build of the tiny default data for the whole session
    monkeypatch.setenv("SSIR_FAST_DATA", str(tmp_path_factory.getbasetemp() / "data"))
    # small models on shared cores: one thread is several times faster (the default-data preset
    # sets --threads 1 itself); restore the session's setting afterwards
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(args, tmp_path, name="run"):
    out = str(tmp_path / name)
    assert main(["train", *args, "--out", out]) == 0
    return out


def test_metrics(out, split="test"):
    with open(os.path.join(out, f"{split}_metrics.json")) as f:
        return json.load(f)


test_metrics.__test__ = False  # a helper, not a test


METHODS = {
    "vanilla": [],
    "mse": ["--loss", "mse"],
    "huber": ["--loss", "huber"],
    "focal-l1": ["--loss", "focal-l1"],
    "focal-mse": ["--loss", "focal-mse", "--focal-activate", "tanh"],
    "bmc": ["--loss", "bmc"],
    "gai": ["--loss", "gai", "--gmm-components", "3"],
    "bni": ["--loss", "bni"],
    "inv": ["--reweight", "inverse"],
    "sqinv+lds": ["--reweight", "sqrt_inv", "--lds", "--lds-kernel", "triang", "--lds-ks", "3"],
    "fds": ["--fds", "--fds-start-smooth", "1"],
    "ranksim": ["--ranksim"],
    "smogn": ["--smogn"],
    "ssir": ["--ssir", "--epsilon", "0.5", "--lam", "1.0"],
    "sqinv+ssir-clean-1step": ["--reweight", "sqrt_inv", "--ssir", "--ssir-target", "clean",
                               "--n-steps", "1", "--ssir-distance", "huber"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_flags_train_end_to_end(method, tmp_path):
    out = run(GAUSS + METHODS[method], tmp_path)
    res = test_metrics(out)
    for g in ("all", "medium", "few"):   # 100 bins over 1,250 samples: no many-shot bin
        assert np.isfinite(res[g]["mae"]), (method, g, res[g])
    assert res["all"]["count"] == 1000           # balanced test set: 500 + 500
    hist = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in hist)
    if "ssir" in method:
        assert 0.0 <= hist[-1]["similarity"] <= 1.0
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["method"] == make_config(
            {"data": "two_gaussians", **_flags(METHODS[method])}).method_name()


def _flags(args):
    """The config values the method flags set (for the method name)."""
    from ssir_fast.cli import build_parser, train_values
    return train_values(build_parser().parse_args(["train", *args]).train)


def test_training_learns_and_beats_the_mean(tmp_path):
    out = run(["--data", "two_gaussians", "--ratio", "4", "--epochs", "30", "--no-progress",
               "--no-plots"], tmp_path)
    res = test_metrics(out)
    ds = __import__("ssir_fast.data", fromlist=["two_gaussians"]).two_gaussians(ratio=4)
    y = ds.splits["test"].targets
    baseline = np.abs(y - ds.splits["train"].targets.mean()).mean()
    assert res["all"]["mae"] < 0.5 * baseline


def test_image_run_writes_everything(tmp_path, capsys):
    out = run(TINY_IMG + ["--reweight", "sqrt_inv", "--ssir", "--fds"], tmp_path)
    text = capsys.readouterr().out
    assert "many" in text and "few" in text and "MAE" in text and "GM" in text
    for name in ("best.pt", "last.pt", "metrics.jsonl", "metrics.csv", "test_metrics.json",
                 "test_per_bin.csv", "summary.json", "per_bin_test.png", "curves.png",
                 "similarity.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    ck = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    assert ck["epoch"] == 1 and "fds.running_mean" in ck["model"]
    assert int(ck["model"]["fds.epoch"]) == 1     # statistics folded in once per epoch
    # eval of the best checkpoint reproduces the run's test table
    before = test_metrics(out)
    ev = str(tmp_path / "eval")
    assert main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--out", ev]) == 0
    after = test_metrics(ev)
    for g in ("all", "many", "medium", "few"):
        if before[g]["mae"] is not None:
            assert after[g]["mae"] == pytest.approx(before[g]["mae"], rel=1e-6)
    # the perturbation plot helper (paper Figure 4)
    png = str(tmp_path / "pert.png")
    assert main(["perturbations", "--checkpoint", os.path.join(out, "best.pt"), "--epsilons",
                 "0.1,1", "--n", "2", "--out", png]) == 0
    assert os.path.getsize(png) > 0


@pytest.mark.parametrize("args", [
    GAUSS[:-4] + ["--epochs", "4", "--batch-size", "256", "--reweight", "sqrt_inv", "--fds",
                  "--ssir", "--epsilon", "0.5", "--no-progress", "--no-plots"],
    TINY_IMG[:-9] + ["--width", "8", "--epochs", "3", "--milestones", "2", "--batch-size", "64",
                     "--ssir", "--no-progress", "--no-plots"],
], ids=["mlp-sqinv-fds-ssir", "cnn-ssir"])
def test_resume_is_exact(args, tmp_path):
    full = run(args, tmp_path, "full")
    part = str(tmp_path / "part")
    assert main(["train", *args, "--out", part, "--stop-after", "2"]) == 0
    assert not os.path.exists(os.path.join(part, "test_metrics.json"))
    assert main(["train", *args, "--out", part, "--resume"]) == 0
    a, b = test_metrics(full), test_metrics(part)
    for g in ("all", "many", "medium", "few"):
        assert a[g]["mae"] == b[g]["mae"] and a[g]["gm"] == b[g]["gm"], g   # None == None: empty
    ha = [json.loads(line) for line in open(os.path.join(full, "metrics.jsonl"))]
    hb = [json.loads(line) for line in open(os.path.join(part, "metrics.jsonl"))]
    drop = ("images_per_s", "epoch_time_s", "first_batch_s")   # timings
    assert [{k: v for k, v in h.items() if k not in drop} for h in ha] == \
           [{k: v for k, v in h.items() if k not in drop} for h in hb]


def test_resume_rejects_changed_options(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", *GAUSS, "--out", out, "--stop-after", "1"]) == 0
    assert main(["train", *GAUSS, "--lr", "0.01", "--out", out, "--resume"]) == 2
    assert "different options" in capsys.readouterr().err


@pytest.mark.parametrize("method", [["--reweight", "sqrt_inv", "--fds"],
                                    ["--ssir", "--ssir-target", "clean", "--lam", "1.0"]],
                         ids=["sqinv-fds", "ssir-clean"])
def test_ddp_two_gloo_processes_match_one_process(method, tmp_path):
    # Full-batch training (global batch >= training set): the two shards' averaged gradients equal
    # the single-process gradient, FDS statistics and metric tables are summed over the ranks.
    # SSIR with the clean target draws no noise, so its several forwards through the DDP wrapper
    # per backward can be compared exactly too.
    args = ["train", "--data", "two_gaussians", "--ratio", "4", "--epochs", "5",
            "--batch-size", "1280", "--lr", "0.01", *method,
            "--no-progress", "--no-plots", "--device", "cpu"]
    single = str(tmp_path / "single")
    assert main(args + ["--out", single]) == 0
    multi = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29517 + len(method)), "-m", "ssir_fast.cli", *args, "--out", multi],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = test_metrics(single), test_metrics(multi)
    for g in ("all", "medium", "few"):
        assert a[g]["count"] == b[g]["count"]
        assert b[g]["mae"] == pytest.approx(a[g]["mae"], rel=1e-3), g
    ha = [json.loads(line) for line in open(os.path.join(single, "metrics.jsonl"))]
    hb = [json.loads(line) for line in open(os.path.join(multi, "metrics.jsonl"))]
    assert [h["train_loss"] for h in hb] == pytest.approx([h["train_loss"] for h in ha], rel=1e-3)
    ck = torch.load(os.path.join(multi, "last.pt"), weights_only=False)
    assert ck["world"] == 2 and len(ck["rng"]) == 2
    if "--fds" in method:   # both shards counted in the FDS statistics
        assert int(ck["model"]["fds.num_samples_tracked"].sum()) == 5 * 1250


def test_torchrun_rank_exits_without_interpreter_teardown(monkeypatch, capsys):
    # A torchrun rank leaves through os._exit with main's code (a gloo group's threads can abort
    # the interpreter's teardown); a plain process returns the code as usual.
    import ssir_fast.cli as cli
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["ssir-fast", "info"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.entry() == 0 and exits == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        cli.entry()
    assert exits == [0]
    monkeypatch.setattr(sys, "argv", ["ssir-fast", "train", "--epochs", "0"])
    with pytest.raises(SystemExit):
        cli.entry()
    assert exits == [0, 2]
    capsys.readouterr()


def test_rrt_second_stage_from_checkpoint(tmp_path):
    first = run(GAUSS, tmp_path, "first")
    out = run(GAUSS + ["--rrt", "--reweight", "sqrt_inv", "--checkpoint",
                       os.path.join(first, "best.pt"), "--rrt-epochs", "1"], tmp_path, "rrt")
    a = torch.load(os.path.join(first, "best.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(out, "best.pt"), weights_only=False)["model"]
    assert torch.equal(a["encoder.net.0.weight"], b["encoder.net.0.weight"])  # frozen encoder
    assert not torch.equal(a["head.weight"], b["head.weight"])                # re-trained head
    assert np.isfinite(test_metrics(out)["all"]["mae"])
    ev = str(tmp_path / "ev")
    assert main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--split", "train",
                 "--out", ev]) == 0
    assert test_metrics(ev, "train")["all"]["count"] == 1250


@pytest.mark.parametrize("args, message", [
    (["--lds"], "--lds smooths the counts"),
    (["--rrt", "--reweight", "sqrt_inv"], "--rrt re-trains the last layer of a trained model"),
    (["--rrt", "--checkpoint", "/nonexistent.pt", "--reweight", "inverse"], "file not found"),
    (["--data", "default", "--smogn"], "--smogn over-samples feature vectors"),
    (["--data", "agedb"], "needs --data-root"),
    (["--data", "tabular", "--data-root", "x.csv"], "needs --target"),
    (["--data", "two_gaussians", "--model", "cnn"], "use --model mlp"),
    (["--data", "nyud2", "--data-root", "x", "--fds"], "--fds and --ranksim"),
    (["--lds-ks", "4", "--reweight", "inverse", "--lds"], "--lds-ks must be an odd integer"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--schedule", "multistep", "--milestones", ""], "needs --milestones"),
    (["--resume"], "--resume needs --out"),
])
def test_invalid_combinations_fail_before_any_work(args, message, tmp_path, capsys,
                                                   monkeypatch):
    import ssir_fast.train.builders as B
    monkeypatch.setattr(B, "load_data", lambda *a, **k: pytest.fail("work started"))
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "error" in err


def test_config_files_yaml_toml_and_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data: two_gaussians\nreweight: sqrt_inv\nlds: true\nlam: 0.5\nssir: yes\n"
                 "epsilon: 1e-3\nmilestones: [3, 4]\n")
    t = tmp_path / "c.toml"
    t.write_text('[train]\ndata = "two_gaussians"\nreweight = "inverse"\nlds = true\nlds-ks = 7\n')
    cy = make_config({"lam": 2.0}, load_config_file(str(y)))
    assert (cy.reweight, cy.lds, cy.ssir.enabled, cy.lam, cy.epsilon, cy.milestones) == \
        ("sqrt_inv", True, True, 2.0, 1e-3, [3, 4])            # the flag beats the file
    assert cy.model.name == "mlp" and cy.loss == "mse" and cy.weight_decay == 5e-5   # preset
    ct = make_config({}, load_config_file(str(t)))
    assert (ct.reweight, ct.lds_ks) == ("inverse", 7)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: default\nlamda: 0.1\n")
    with pytest.raises(ConfigError, match="lamda"):
        load_config_file(str(bad))
    with pytest.raises(ConfigError, match="lam"):
        make_config({}, {"lam": "abc"})


def test_presets_hold_the_paper_schedules():
    a = make_config({"data": "agedb", "data_root": "x"})
    assert (a.model.name, a.epochs, a.batch_size, a.lr, a.milestones, a.loss, a.epsilon, a.lam) == \
        ("resnet50", 90, 256, 1e-3, [60, 80], "l1", 1e-3, 0.1)
    n = make_config({"data": "nyud2", "data_root": "x"})
    assert (n.model.name, n.epochs, n.batch_size, n.lr, n.weight_decay, n.schedule, n.step_size,
            n.loss, n.epsilon, n.lam, n.fds_clip) == \
        ("depthnet", 20, 32, 1e-4, 1e-4, "step", 5, "mse", 5e-4, 1.0, [0.2, 5.0])


def test_shipped_configs_are_valid():
    folder = os.path.join(ROOT, "configs")
    files = sorted(f for f in os.listdir(folder) if f.endswith((".yaml", ".toml")))
    assert len(files) >= 8
    seen = set()
    for f in files:
        values = load_config_file(os.path.join(folder, f))
        cfg = make_config({"data_root": "somewhere"}, values)
        seen.add((cfg.data.name, cfg.method_name()))
    for need in [("agedb", "sqinv+ssir"), ("agedb", "focal-l1+ssir"), ("agedb", "vanilla"),
                 ("imdb_wiki", "sqinv+ssir"), ("nyud2", "inv+ssir"), ("nyud2", "vanilla")]:
        assert need in seen, need


def test_sweep_writes_the_parameter_table(tmp_path):
    out = str(tmp_path / "sw")
    assert main(["train", *GAUSS[:-4], "--epochs", "1", "--no-progress", "--no-plots", "--ssir",
                 "--out", out, "--sweep", "epsilon=0.1,1", "lam=0.5"]) == 0
    lines = open(os.path.join(out, "sweep.csv")).read().strip().splitlines()
    assert lines[0].startswith("epsilon,lam,all_mae") and len(lines) == 3
    assert os.path.getsize(os.path.join(out, "sweep.png")) > 0
    assert "| epsilon | lam |" in open(os.path.join(out, "sweep.md")).read()


def test_motivation_quick(tmp_path):
    out = str(tmp_path / "mot")
    assert main(["motivation", "--quick", "--out", out]) == 0
    rows = json.load(open(os.path.join(out, "motivation.json")))["rows"]
    assert [r["ratio"] for r in rows] == [1, 4, 100]
    assert all(np.isfinite(r["supervised_mean"]) and np.isfinite(r["ssl_mean"]) for r in rows)
    assert os.path.getsize(os.path.join(out, "motivation.png")) > 0


def test_models_without_torchvision_shapes():
    from ssir_fast.train.models import build_model
    x = torch.randn(2, 3, 32, 32)
    for name in ("cnn", "resnet18", "resnet50"):
        m = build_model(name, (3, 32, 32), width=8)
        assert m(x).shape == (2, 1)
    from ssir_fast.train.models import DepthNet
    d = DepthNet(50, width=8, dec=16)
    assert d(torch.randn(1, 3, 48, 64)).shape == (1, 1, 48, 64)


def test_agedb_layout_and_tabular_csv_and_nyud2_depth(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _dir_data import write_dir_csv, write_nyud2
    # AgeDB-DIR layout (age,path,split CSV + JPEGs), built-in ResNet-18 narrow, with augmentation
    agedb = str(tmp_path / "agedb")
    write_dir_csv(agedb, sizes=(24, 6, 8), size=16)
    out = run(["--data", "agedb", "--data-root", agedb, "--model", "resnet18", "--width", "4",
               "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--reweight",
               "sqrt_inv", "--lds", "--fds", "--ssir", "--no-progress", "--no-plots"],
              tmp_path, "agedb_run")
    assert test_metrics(out)["all"]["count"] == 8
    # tabular CSV with a split column
    csv_path = str(tmp_path / "tab.csv")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = np.exp(X[:, 0]) * 5
    with open(csv_path, "w") as f:
        f.write("a,b,c,target,split\n")
        for i in range(120):
            s = "train" if i < 80 else "val" if i < 100 else "test"
            f.write(",".join(f"{v:.5f}" for v in X[i]) + f",{y[i]:.5f},{s}\n")
    out = run(["--data", "tabular", "--data-root", csv_path, "--target", "target", "--epochs",
               "2", "--smogn", "--ssir", "--epsilon", "0.1", "--no-progress", "--no-plots"],
              tmp_path, "tab_run")
    assert test_metrics(out)["all"]["count"] == 20
    # NYUD2-DIR depth maps: encoder-decoder, per-pixel INV weights, SSIR with the MSE distance
    nyu = str(tmp_path / "nyu")
    write_nyud2(nyu, n_train=4, n_test=2, size=32)
    out = run(["--data", "nyud2", "--data-root", nyu, "--width", "4", "--image-size", "32",
               "--epochs", "1", "--batch-size", "2", "--reweight", "inverse", "--ssir",
               "--no-progress"], tmp_path, "nyu_run")
    res = test_metrics(out)
    assert res["all"]["count"] > 0 and np.isfinite(res["all"]["rmse"])
    assert res["all"]["delta1"] is not None


# ---- fidelity and robustness -----------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("epochs: 1.9\n", "option epochs: expected an integer, got 1.9"),
    ("epochs: true\n", "option epochs: expected an integer, got True"),
    ("lds: 2\n", "option lds: expected true or false, got 2"),
    ("lr: [0.1]\n", "option lr: expected a number"),
    ("milestones: [60, 80.5]\n", "option milestones: expected an integer, got 80.5"),
    ("epsilon: true\n", "option epsilon: expected a number or 'auto', got True"),
])
def test_config_values_are_not_coerced_silently(text, message, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: two_gaussians\n" + text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as e:
        load_config_file(str(path))
    assert str(path) in str(e.value)
    assert main(["train", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--epochs must be an integer"):
        make_config({"epochs": True})       # the Python API refuses it too


def test_config_integral_values_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: two_gaussians\nepochs: 3.0\nbatch_size: '64'\nlds: 1\n"
                    "reweight: inverse\nmilestones: '2,3'\n")
    cfg = make_config({}, load_config_file(str(path)))
    assert (cfg.epochs, cfg.batch_size, cfg.lds, cfg.milestones) == (3, 64, True, [2, 3])
    assert type(cfg.epochs) is int


@pytest.mark.parametrize("name,text,where", [
    ("bad.yaml", "data: two_gaussians\nepochs: [1, 2\nlr: 0.1\n", "line 3"),
    ("bad2.yaml", "data: two_gaussians\n  lr: 0.1\n", "line 2"),
    ("bad.toml", 'data = "two_gaussians"\nepochs = \n', "line 2"),
])
def test_config_syntax_errors_name_file_and_line(name, text, where, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and where in err and "syntax error" in err
    assert "Traceback" not in err


def test_shot_group_options_reach_the_metrics(tmp_path):
    out = run(GAUSS[:-4] + ["--epochs", "1", "--no-progress", "--no-plots", "--many-thr", "12",
                            "--few-thr", "3"], tmp_path, "thr")
    doc = test_metrics(out)
    assert (doc["bins"]["many_thr"], doc["bins"]["few_thr"]) == (12, 3)
    counts = np.asarray(doc["per_bin"]["train_count"])
    groups = np.asarray(doc["per_bin"]["group"])
    assert (groups[counts > 12] == "many").all() and (groups[counts < 3] == "few").all()
    assert doc["many"]["count"] > 0                      # 100 bins, 1,250 samples: > 12 occurs
    n_bins = len(groups)
    out = run(GAUSS[:-4] + ["--epochs", "1", "--no-progress", "--no-plots", "--many-bins",
                            "0-49", "--few-bins", f"50-{n_bins - 2}"], tmp_path, "lists")
    doc = test_metrics(out)                              # the last bin is in no group
    assert list(doc["per_bin"]["group"]) == ["many"] * 50 + ["few"] * (n_bins - 51) + [""]
    in_last = doc["per_bin"]["count"][-1]
    assert doc["medium"]["count"] == 0
    assert doc["many"]["count"] + doc["few"]["count"] + in_last == 1000


def test_shot_group_config_and_nyud2_preset(tmp_path):
    from ssir_fast.imbalance import LabelBins
    from ssir_fast.metrics import nyud2_shot_bins
    n = make_config({"data": "nyud2", "data_root": "x"})
    official = nyud2_shot_bins(LabelBins(0.7, 0.1, 93))
    assert (n.many_bins, n.medium_bins, n.few_bins) == \
        (official["many"], official["medium"], official["few"])
    # thresholds given for nyud2: they replace the preset lists
    t = make_config({"data": "nyud2", "data_root": "x", "many_thr": 50})
    assert t.many_bins is None and t.many_thr == 50
    path = tmp_path / "g.yaml"
    path.write_text("data: two_gaussians\nmany_bins: 0-9,20\nfew_bins: [30, 31]\n")
    c = make_config({}, load_config_file(str(path)))
    assert c.many_bins == list(range(10)) + [20] and c.few_bins == [30, 31]
    with pytest.raises(ConfigError, match="--many/medium/few-bins: bin 3 is in both .many. and "
                                          ".few."):
        make_config({"data": "two_gaussians", "many_bins": [3], "few_bins": [3]})


def test_nyud2_run_uses_official_weighting_and_shot_lists(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _dir_data import write_nyud2
    from ssir_fast.imbalance import DIR_RECIPES, bin_weights
    from ssir_fast.metrics import nyud2_shot_bins
    from ssir_fast.train.trainer import Trainer
    nyu = str(tmp_path / "nyu")
    write_nyud2(nyu, n_train=4, n_test=2, size=32)
    cfg = make_config({"data": "nyud2", "data_root": nyu, "width": 4, "image_size": 32,
                       "epochs": 1, "batch_size": 2, "reweight": "inverse", "lds": True,
                       "lds_int_counts": True, "out": str(tmp_path / "o"), "progress": False})
    t = Trainer(cfg)
    t.setup()
    d = t.data
    ref = bin_weights(d.train_labels, d.bins, "inverse", True, lds_int_counts=True,
                      **DIR_RECIPES["depth"])
    np.testing.assert_array_equal(d.bin_w, ref)
    assert not np.allclose(d.bin_w, bin_weights(d.train_labels, d.bins, "inverse", True))
    assert d.shot_bins == nyud2_shot_bins(d.bins)
    assert d.dense and d.select == "rmse"
    m = t.evaluate("test")
    assert m.shot_bins == d.shot_bins
    t.runtime.close()


def test_package_exposes_data_and_train_after_a_plain_import():
    # a fresh interpreter: nothing has imported ssir_fast.data yet
    code = ("import ssir_fast\n"
            "ds = ssir_fast.data.load_dataset('two_gaussians', ratio=2, n_major=20, d=3)\n"
            "assert len(ds.splits['train']) > 0\n"
            "assert callable(ssir_fast.train.make_config)\n"
            "try:\n    ssir_fast.no_such_module\nexcept AttributeError:\n    print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ---- checkpoints: weights_only, clear errors, extending a run ----------------------------------

def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    out = run(GAUSS[:-4] + ["--epochs", "1", "--no-progress", "--no-plots", "--loss", "bni",
                            "--schedule", "multistep", "--milestones", "1"], tmp_path)
    for name in ("last.pt", "best.pt"):
        ck = torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)
        assert ck["format"] == 2 and ck["config"]["loss"] == "bni"
    last = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    rng = last["rng"][0]
    assert rng["numpy"]["keys"].dtype == torch.int64 and len(rng["python"]["state"]) == 625
    assert "milestones" in last["scheduler"] and "state" in last["optimizer"]


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    import random
    from ssir_fast.train.checkpoint import rng_state, set_rng_state
    np.random.normal()                  # a cached gaussian in numpy's state
    random.gauss(0, 1)
    path = str(tmp_path / "rng.pt")
    torch.save(rng_state(), path)
    a = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    set_rng_state(torch.load(path, weights_only=True))
    b = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def _stopped_run(tmp_path, name="r", extra=()):
    out = str(tmp_path / name)
    assert main(["train", *GAUSS, *extra, "--out", out, "--stop-after", "1"]) == 0
    return out


def test_resume_from_empty_or_truncated_last_pt_names_the_file(tmp_path, capsys):
    out = _stopped_run(tmp_path)
    last = os.path.join(out, "last.pt")
    data = open(last, "rb").read()
    open(last, "wb").write(data[: len(data) // 2])
    assert main(["train", *GAUSS, "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert last in err and "truncated or not a PyTorch checkpoint" in err and "Traceback" not in err
    open(last, "wb").close()
    assert main(["train", *GAUSS, "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert last in err and "is empty (0 bytes)" in err


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path, capsys):
    out = _stopped_run(tmp_path)
    last = os.path.join(out, "last.pt")
    ck = torch.load(last, weights_only=True)
    ck["history"] = [np.float64(1.0), np.arange(3)]      # objects beyond tensors / plain values
    torch.save(ck, last)
    assert main(["train", *GAUSS, "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert last in err and "objects other than tensors and plain values" in err


def test_checkpoint_of_another_model_names_what_differs(tmp_path, capsys):
    out = _stopped_run(tmp_path)
    other = _stopped_run(tmp_path, "w16", ["--width", "16"])
    last = os.path.join(out, "last.pt")
    ck = torch.load(last, weights_only=True)
    ck["model"] = torch.load(os.path.join(other, "last.pt"), weights_only=True)["model"]
    torch.save(ck, last)
    assert main(["train", *GAUSS, "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert last in err and "different shapes" in err and "encoder.net.0.weight" in err
    # --rrt and eval with a checkpoint of a 16-wide model
    best16 = os.path.join(other, "best.pt")
    assert main(["train", *GAUSS, "--rrt", "--reweight", "sqrt_inv", "--checkpoint", best16,
                 "--out", str(tmp_path / "rrt")]) == 2
    err = capsys.readouterr().err
    assert best16 in err and "does not fit --model mlp --width 128" in err
    assert "checkpoint (16,) vs model (128,)" in err
    best = os.path.join(out, "best.pt")
    ck = torch.load(best, weights_only=True)
    ck["model"] = {k: v for k, v in ck["model"].items() if k != "head.bias"}
    torch.save(ck, best)
    assert main(["eval", "--checkpoint", best]) == 2
    err = capsys.readouterr().err
    assert best in err and "missing (1): ['head.bias']" in err


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path, capsys):
    args = GAUSS[:-4] + ["--no-progress", "--no-plots", "--schedule", "multistep",
                         "--milestones", "2", "--ssir", "--epsilon", "0.5"]
    full = run(args + ["--epochs", "3"], tmp_path, "full")
    part = run(args + ["--epochs", "1"], tmp_path, "part")          # finished after 1 epoch
    assert main(["train", *args, "--epochs", "3", "--out", part, "--resume"]) == 0
    assert "extending the run from 1 to 3 epochs" in capsys.readouterr().out
    a, b = test_metrics(full), test_metrics(part)
    assert a["all"]["mae"] == b["all"]["mae"] and a["all"]["gm"] == b["all"]["gm"]
    drop = ("images_per_s", "epoch_time_s", "first_batch_s")   # timings
    ha = [json.loads(x) for x in open(os.path.join(full, "metrics.jsonl"))]
    hb = [json.loads(x) for x in open(os.path.join(part, "metrics.jsonl"))]
    assert [{k: v for k, v in h.items() if k not in drop} for h in ha] == \
           [{k: v for k, v in h.items() if k not in drop} for h in hb]
    # fewer epochs than already trained, or another option: refused
    assert main(["train", *args, "--epochs", "2", "--out", part, "--resume"]) == 2
    assert "already trained 3 epochs" in capsys.readouterr().err
    assert main(["train", *args, "--epochs", "4", "--lam", "0.5", "--out", part, "--resume"]) == 2
    assert "different options" in capsys.readouterr().err


# torchvision's resnet18 state-dict keys (torchvision.models.resnet18().state_dict(), fc.* left
# out: the regression head replaces it), written out by hand: BN layers carry five entries.
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
TV_RESNET18_KEYS = (
    ["conv1.weight"] + [f"bn1.{k}" for k in _BN]
    + [f"layer1.{b}.{m}" for b in (0, 1) for m in
       ["conv1.weight", *(f"bn1.{k}" for k in _BN), "conv2.weight", *(f"bn2.{k}" for k in _BN)]]
    + [f"layer{i}.{b}.{m}" for i in (2, 3, 4) for b in (0, 1) for m in
       ["conv1.weight", *(f"bn1.{k}" for k in _BN), "conv2.weight", *(f"bn2.{k}" for k in _BN),
        *(["downsample.0.weight", *(f"downsample.1.{k}" for k in _BN)] if b == 0 else [])]])
TV_RESNET18_SHAPES = {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                      "layer2.0.conv1.weight": (128, 64, 3, 3),
                      "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                      "layer4.1.conv2.weight": (512, 512, 3, 3), "layer4.1.bn2.weight": (512,)}


def test_builtin_resnet_state_dict_keys_are_torchvisions():
    from ssir_fast.train.models import ResNet, build_model
    sd = ResNet(18, 64, small_input=False).state_dict()
    assert list(sd) == TV_RESNET18_KEYS and len(sd) == 120       # 122 with fc
    for k, shape in TV_RESNET18_SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    r50 = ResNet(50, 64, small_input=False).state_dict()
    assert len(r50) == 318                                        # torchvision: 320 with fc
    assert tuple(r50["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(r50["layer4.2.bn3.running_var"].shape) == (2048,)
    assert tuple(r50["layer3.0.downsample.0.weight"].shape) == (1024, 512, 1, 1)
    # the image presets' model: encoder.<torchvision key>
    m = build_model("resnet18", (3, 224, 224))
    assert [k[len("encoder."):] for k in m.state_dict() if k.startswith("encoder.")] == \
        TV_RESNET18_KEYS
    try:                      # and, where a working torchvision is installed, the real thing
        import torchvision
    except Exception:         # not installed, or a build that does not match this torch
        return
    tv = torchvision.models.resnet18(weights=None).eval()
    ours = ResNet(18, small_input=False).eval()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(ours(x), tv(x))
    tv.load_state_dict(ResNet(18, small_input=False).state_dict())


def test_on_error_skip_reaches_the_loaders(tmp_path, capsys):
    """A truncated JPEG passes the CSV checks and fails only when decoded: with
    --data-options on_error=skip the run goes on without it; without, it stops naming the file."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _dir_data import write_dir_csv
    root = str(tmp_path / "agedb")
    rows = write_dir_csv(root, sizes=(24, 6, 8), size=16)
    bad = os.path.join(root, next(r[1] for r in rows if r[2] == "train"))
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 3])
    args = ["--data", "agedb", "--data-root", root, "--model", "cnn", "--width", "4",
            "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--backend", "torch", "--no-progress", "--no-plots"]
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        out = run(args + ["--data-options", "on_error=skip"], tmp_path, "skip")
    assert test_metrics(out)["all"]["count"] == 8
    assert main(["train", *args, "--out", str(tmp_path / "raise")]) == 2
    assert os.path.basename(bad) in capsys.readouterr().err
    assert main(["train", *args, "--data-options", "on_error=maybe",
                 "--out", str(tmp_path / "x")]) == 2
    assert "on_error must be raise or skip" in capsys.readouterr().err


def test_info_prints_the_bug_report_facts(capsys):
    import re
    import ssir_fast
    from ssir_fast import _build_info
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    facts = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines())
    assert facts["ssir_fast"].startswith(ssir_fast.__version__)
    assert facts["torch"] == torch.__version__
    assert facts["extension"] == f"loaded, built against torch {_build_info.TORCH_VERSION}"
    assert facts["CUDA torch"] == str(torch.version.cuda).replace("None", "none")
    for op in ("perturb", "bin_reduce", "bin_feature_stats", "fds_calibrate"):
        cuda = "yes" if ssir_fast.HAS_CUDA_KERNELS else "no"
        assert facts[f"kernel {op}"] == f"CPU yes, CUDA {cuda}"
    for key in ("CUDA driver", "CUDA extension (nvcc)", "DALI", "DALI GPU decoder"):
        assert key in facts
    if not torch.cuda.is_available():
        assert facts["GPU"] == "none visible"
        assert facts["DALI GPU decoder"].startswith("no (")
    assert main(["info", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["torch"] == torch.__version__ and doc["kernels"]["perturb"]["cpu"] is True


def test_info_names_the_gpu_and_its_capability(monkeypatch):
    from ssir_fast import info
    from ssir_fast.train import precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (7, 5))
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    monkeypatch.setattr(info, "_dali", lambda: ("1.2.3", "yes"))
    text = info.format_info()
    assert "GPU 0" in text and "Tesla T4, compute capability 7.5, bf16 no" in text
    assert "DALI GPU decoder" in text and text.rstrip().endswith("bf16 no")
