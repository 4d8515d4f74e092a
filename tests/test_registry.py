"""The data-set registry and the sectioned configuration: one registration adds a
data set to load_dataset, the CLI, the presets, the validation and the help; --data-options are
checked against the loader's signature; validation runs once; config files flat or in sections;
the run folder's config.json reproduces the run."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ssir_fast.data as D
from ssir_fast.cli import build_parser, main
from ssir_fast.data import registry
from ssir_fast.train import ConfigError, make_config
from ssir_fast.train.config import (FLAT, LEAVES, SECTIONS, TrainConfig, ensure_valid,
                                    load_config_file, preset_note, sectioned, validate,
                                    write_config)

GAUSS = ["--data", "two_gaussians", "--ratio", "4", "--epochs", "1", "--batch-size", "256",
         "--no-progress", "--no-plots"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    """A data set added by one registration: small two Gaussians in 4 dimensions, whose rule
    counts how often a configuration is validated."""
    calls = []

    def load(root=None, *, n_major=200, on_error="raise", ratio=4.0, seed=0):
        return D.two_gaussians(ratio=ratio, d=4, n_major=n_major, n_test=60, seed=seed)

    def rules(*, data, width, **_):
        calls.append(data)
        return [] if width <= 64 else [f"--data tiny: --width {width} is too wide"]

    spec = registry.register(registry.DataSpec(
        "tiny", "small two Gaussians", "tabular", load, flags={"ratio": "ratio", "seed": "seed"},
        models=("mlp",), rules=rules,
        preset=dict(standardize_target=True, model="mlp", width=8, epochs=1, batch_size=64,
                    lr=0.01, schedule="none", loss="mse")))
    yield SimpleNamespace(spec=spec, calls=calls)
    registry.unregister("tiny")


# ---- the registry --------------------------------------------------------------------------

def test_registry_holds_the_seven_data_sets_and_their_loader_options():
    assert registry.names() == ("default", "agedb", "imdb_wiki", "nyud2", "two_gaussians",
                                "tabular", "default2d")
    assert D.DATASETS == registry.names()
    opts = {s.name: s.options for s in registry.specs()}
    # the options are the loaders' keyword parameters, through the **kwargs they pass on
    assert {"n_train", "max_angle", "tau", "on_error", "image_size"} <= set(opts["default"])
    assert {"csv", "image_root", "label_column", "check_files"} <= set(opts["agedb"])
    assert "csv_path" not in opts["agedb"] and "name" not in opts["agedb"]
    assert {"list_file", "mask_file", "depth_scale"} <= set(opts["nyud2"])
    assert {"n_major", "d", "ratio", "seed", "on_error"} <= set(opts["two_gaussians"])
    assert {"features", "val_fraction", "bin_width", "num_bins"} <= set(opts["tabular"])
    assert "splits" not in opts["tabular"] and "self" not in opts["tabular"]
    kinds = {s.name: s.kind for s in registry.specs()}
    assert kinds == {"default": "image", "agedb": "image", "imdb_wiki": "image",
                     "nyud2": "depth", "two_gaussians": "tabular", "tabular": "tabular",
                     "default2d": "image"}


def test_registration_errors_are_clear(tiny):
    with pytest.raises(ValueError, match="'tiny' is already registered"):
        registry.register(tiny.spec)
    assert registry.register(tiny.spec, replace=True) is tiny.spec
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.DataSpec("x", "x", "video", tiny.spec.load)
    with pytest.raises(ValueError, match="name must be an identifier"):
        registry.DataSpec("my data", "x", "image", tiny.spec.load)
    with pytest.raises(TypeError, match="takes a DataSpec"):
        registry.register({"name": "x"})
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        registry.get("nope")
    registry.register(registry.DataSpec("tiny", "typo", "tabular", tiny.spec.load,
                                        preset=dict(epoch=3)), replace=True)
    with pytest.raises(ConfigError, match=r"preset of data set 'tiny' sets unknown option\(s\) "
                                          r"\['epoch'\]"):
        make_config({"data": "tiny"})


def test_load_dataset_checks_options_against_the_loader_signature():
    with pytest.raises(TypeError, match=r"unknown option 'n_majr' for data set 'two_gaussians'; "
                                        r"accepted: d, mu, n_major"):
        D.load_dataset("two_gaussians", n_majr=10)
    ds = D.load_dataset("two_gaussians", ratio=2, n_major=20, d=3, on_error="skip")
    assert ds.num_features == 3 and len(ds.splits["train"]) == 30
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        D.load_dataset("mnist")


def test_input_shape_comes_from_the_registration():
    from ssir_fast.train.builders import input_shape
    ds = D.load_dataset("two_gaussians", n_major=20, d=5)
    assert input_shape("two_gaussians", ds) == (5,)

    class Images:
        image_size = (24, 32)
    assert registry.get("agedb").input_shape(Images()) == (3, 24, 32)
    assert registry.get("nyud2").input_shape(Images()) == (3, 24, 32)


# The presets before the registry (config.PRESETS and FALLBACK of 2f7350c), written out: the
# registry must give every data set the same configuration.
_OLD_FALLBACK = dict(augment=True, standardize_target=False, lam=0.1, epsilon=1e-3,
                     fds_clip=[0.1, 10.0], schedule="none", weight_decay=0.0)
_OLD_PRESETS = {
    "default": dict(augment=False, standardize_target=True, model="cnn", width=16, image_size=16,
                    epochs=8, batch_size=128, lr=1e-3, weight_decay=0.0, schedule="multistep",
                    milestones=[5, 7], loss="l1", threads=1),
    "agedb": dict(model="resnet50", image_size=224, epochs=90, batch_size=256, lr=1e-3,
                  weight_decay=0.0, schedule="multistep", milestones=[60, 80], loss="l1"),
    "imdb_wiki": dict(model="resnet50", image_size=224, epochs=90, batch_size=256, lr=1e-3,
                      weight_decay=0.0, schedule="multistep", milestones=[60, 80], loss="l1"),
    "nyud2": dict(model="depthnet", epochs=20, batch_size=32, lr=1e-4, weight_decay=1e-4,
                  schedule="step", step_size=5, loss="mse", lam=1.0, epsilon=5e-4,
                  fds_clip=[0.2, 5.0]),
    "two_gaussians": dict(standardize_target=True, model="mlp", width=128, epochs=200,
                          batch_size=256, lr=1e-3, weight_decay=5e-5, schedule="none",
                          loss="mse"),
    "tabular": dict(standardize_target=True, model="mlp", width=128, epochs=100, batch_size=256,
                    lr=1e-3, weight_decay=0.0, schedule="none", loss="l1"),
}


@pytest.mark.parametrize("name", list(_OLD_PRESETS))
def test_presets_are_those_before_the_registry(name):
    extra = {"data_root": "x", "target": "y"}
    cfg = make_config({"data": name, **extra})
    expect = {**TrainConfig().to_dict(), **_OLD_FALLBACK, **_OLD_PRESETS[name], "data": name,
              **extra}
    got = cfg.to_dict()
    for g in ("many_bins", "medium_bins", "few_bins"):   # nyud2's official lists, tested apart
        got.pop(g), expect.pop(g)
    assert got == expect


# ---- a data set added by one registration ------------------------------------------------------

def test_one_registration_adds_a_data_set_to_the_cli(tiny, tmp_path, capsys):
    out = str(tmp_path / "tiny")
    assert main(["train", "--data", "tiny", "--no-progress", "--no-plots", "--out", out]) == 0
    assert tiny.calls == ["tiny"]                     # validated once: make_config, not again
    doc = json.load(open(os.path.join(out, "config.json")))
    assert doc["data"]["name"] == "tiny" and doc["optim"]["lr"] == 0.01     # its preset
    assert doc["model"] == {"name": "mlp", "width": 8, "standardize_target": True}
    res = json.load(open(os.path.join(out, "test_metrics.json")))
    assert res["all"]["count"] == 60 * 2 and np.isfinite(res["all"]["mae"])
    # its rules and its options
    assert main(["train", "--data", "tiny", "--width", "128", "--out", out]) == 2
    assert "--width 128 is too wide" in capsys.readouterr().err
    assert main(["train", "--data", "tiny", "--model", "cnn", "--out", out]) == 2
    assert "--data tiny holds feature vectors: use --model mlp, not cnn" in capsys.readouterr().err
    assert main(["train", "--data", "tiny", "--data-options", "n_majr=5", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--data-options: unknown option 'n_majr' for --data tiny; accepted: n_major, on_error" \
        in err
    assert main(["train", "--data", "tiny", "--data-options", "seed=3", "--out", out]) == 2
    assert "--data-options seed: set by --seed for --data tiny; give it there" in \
        capsys.readouterr().err
    # the help lists it, with its preset values
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "tiny = small two Gaussians" in text
    assert "tiny 0.01" in " ".join(text.split())


def test_validation_runs_once_and_again_after_a_change(tiny, tmp_path):
    from ssir_fast.train.trainer import Trainer
    cfg = make_config({"data": "tiny", "out": str(tmp_path / "o"), "progress": False})
    assert tiny.calls == ["tiny"]
    t = Trainer(cfg)
    t.runtime.close()
    assert tiny.calls == ["tiny"]                     # the trainer did not validate it again
    cfg.model.width = 512                                 # changed since: validated again, refused
    with pytest.raises(ConfigError, match="--width 512 is too wide"):
        Trainer(cfg)
    assert tiny.calls == ["tiny", "tiny"]
    ensure_valid(make_config({"data": "tiny"}, validate_now=False))   # never validated: is now
    assert len(tiny.calls) == 3


def test_a_bug_inside_a_loader_is_not_reported_as_a_data_option(tiny, tmp_path, capsys):
    def broken(root=None, *, on_error="raise", ratio=4.0, seed=0):
        return D.two_gaussians(ratio=ratio, d=4, n_major=50, n_test=20, seed=seed, colour="red")
    registry.register(registry.DataSpec("tiny", "broken", "tabular", broken,
                                        flags={"ratio": "ratio", "seed": "seed"},
                                        preset=tiny.spec.preset), replace=True)
    assert main(["train", "--data", "tiny", "--no-progress", "--no-plots",
                 "--out", str(tmp_path / "b")]) == 1     # a failure, in one line
    err = capsys.readouterr().err
    assert "error: TypeError:" in err and "colour" in err and "data option" not in err


@pytest.mark.parametrize("options, message", [
    ("n_train=5,val_per_bn=2", "unknown option 'val_per_bn' for --data default; accepted: "
                               "max_angle, n_train, on_error, quality, seed, tau, test_per_bin, "
                               "val_per_bin"),
    ("image_size=12", "--data-options image_size: set by --image-size for --data default"),
    ("progress=0", "--data-options progress: set by --progress for --data default"),
    ("on_error=maybe", "on_error must be raise or skip, got 'maybe'"),
])
def test_data_options_errors_name_the_key(options, message, capsys, monkeypatch):
    import ssir_fast.train.builders as B
    monkeypatch.setattr(B, "load_data", lambda *a, **k: pytest.fail("work started"))
    assert main(["train", "--data-options", options]) == 2
    assert message in capsys.readouterr().err


def test_nyud2_image_size_may_come_from_data_options_when_the_flag_is_unset():
    cfg = make_config({"data": "nyud2", "data_root": "x", "data_options": {"image_size": 32}})
    assert cfg.image_size is None
    with pytest.raises(ConfigError, match="image_size: set by --image-size"):
        make_config({"data": "nyud2", "data_root": "x", "image_size": 64,
                     "data_options": {"image_size": 32}})


# ---- help strings read the registry --------------------------------------------------------

def test_help_shows_preset_values_from_the_registry(tiny):
    assert preset_note("lam") == "nyud2 1, else 0.1"
    assert preset_note("lr") == "nyud2 0.0001, tiny 0.01, else 0.001"   # tiny: registered
    assert preset_note("loss") == "nyud2/two_gaussians/tiny mse, else l1"
    assert preset_note("step_size") == "nyud2 5"
    assert preset_note("gamma") == ""
    for leaf in LEAVES:   # no data-set values typed into help
        assert "nyud2" not in leaf.meta["help"] and "1e-3" not in leaf.meta["help"], leaf.flat
    def text(data):   # the help of `ssir-fast train --data DATA --help`
        return " ".join(build_parser(data)._subparsers._group_actions[0].choices["train"]
                        .format_help().split())
    assert "SSIR lambda (preset per --data: nyud2 1, else 0.1)" in text(None)
    assert "[tiny] n_major: int = 200, on_error: str = raise" in text("tiny")   # --data-options
    assert "[default] image_size: int = 32" not in text("default")     # set by --image-size
    assert "max_angle: int = 90" in text("default")
    assert "agedb: the folder with agedb.csv and the images" in text("agedb")   # --data-root


# ---- sections -------------------------------------------------------------------------------

def test_every_field_is_in_one_of_the_six_sections():
    assert list(TrainConfig.__dataclass_fields__) == ["data", "model", "method", "ssir", "optim",
                                                      "output"]
    assert [s for s in SECTIONS if "." not in s] == list(TrainConfig.__dataclass_fields__)
    assert [s for s in SECTIONS if "." in s] == [f"method.{p}" for p in (
        "focal", "bmse", "lds", "fds", "ranksim", "smogn", "rrt")]
    names = [f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks]
    assert sorted(names) == sorted(".".join(leaf.path) for leaf in LEAVES)
    assert len(FLAT) == len(LEAVES) == 83   # every option has one flat name (its flag)
    assert {"lr", "epochs", "seed"} <= set(SECTIONS["optim"])
    assert {"lam", "epsilon", "n_steps", "rho"} <= set(SECTIONS["ssir"])
    assert {"out", "many_thr"} <= set(SECTIONS["output"])
    cfg = TrainConfig.from_flat({"fds_ks": 7, "ssir": True, "data": "agedb"})
    assert cfg.method.fds.ks == cfg.fds_ks == 7 and cfg.ssir.enabled and cfg.data.name == "agedb"
    with pytest.raises(AttributeError, match=r"cfg.fds_ks is read-only; set cfg.method.fds.ks"):
        cfg.fds_ks = 5


def test_sectioned_yaml_and_toml_equal_the_flat_form(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("data: two_gaussians\nratio: 4\nreweight: sqrt_inv\nlds: true\nssir: true\n"
                    "lam: 0.5\nssir_rho: 0.25\nlr: 2e-3\nmilestones: [3, 4]\n"
                    "schedule: multistep\nwidth: 32\nout: runs/x\n")
    y = tmp_path / "s.yaml"
    y.write_text("data: {name: two_gaussians, ratio: 4}\nmodel: {width: 32}\n"
                 "method: {reweight: sqrt_inv, lds: true}\n"
                 "ssir: {ssir: true, lam: 0.5, rho: 0.25}\n"
                 "optim: {lr: 2e-3, milestones: [3, 4], schedule: multistep}\n"
                 "output: {out: runs/x}\n")
    t = tmp_path / "s.toml"
    t.write_text('lr = 2e-3\n[data]\nname = "two_gaussians"\nratio = 4\n[model]\nwidth = 32\n'
                 '[method]\nreweight = "sqrt_inv"\nlds = true\n[ssir]\nssir = true\n'
                 'lam = 0.5\nssir_rho = 0.25\n[optim]\nmilestones = [3, 4]\n'
                 'schedule = "multistep"\n[output]\nout = "runs/x"\n')   # flat and sections
    want = make_config({}, load_config_file(str(flat))).to_dict()
    assert make_config({}, load_config_file(str(y))).to_dict() == want
    assert make_config({}, load_config_file(str(t))).to_dict() == want
    assert want["ssir_rho"] == 0.25 and want["lr"] == 2e-3 and want["width"] == 32


@pytest.mark.parametrize("text, message", [
    ("optimizer: {lr: 0.1}\n", "unknown section 'optimizer'; closest valid key: 'optim'; the "
                               "sections are data, model, method, ssir, optim, output"),
    ("optim: {lrr: 0.1}\n", "unknown option 'lrr' in section [optim]; closest valid key: 'lr'; "
                             "its options: epochs"),
    ("method: {fds: {kernal: triang}}\n", "unknown option 'kernal' in section [method.fds]; "
                                          "closest valid key: 'kernel'"),
    ("method: {fds_kernal: triang}\n", "unknown option 'fds_kernal' in section [method]; "
                                       "closest valid key: 'fds_kernel'"),
    ("fds_kernal: triang\n", "unknown option 'fds_kernal'; closest valid key: 'fds_kernel' "
                             "(section [method.fds])"),
    ("method: {lr: 0.1}\n", "option 'lr' belongs in section [optim], not [method]"),
    ("method: {lds: {ks: 5, lr: 0.1}}\n", "option 'lr' belongs in section [optim], not "
                                          "[method.lds]"),
    ("ssir: {ks: 5}\n", "option 'ks' belongs in section [method.lds], not [ssir]"),
    ("optim: {lam: 0.1}\n", "option 'lam' belongs in section [ssir], not [optim]"),
    ("lr: 0.1\noptim: {lr: 0.2}\n", "option 'lr' is given twice"),
    ("optim: 3\n", "section [optim] must be a table of option: value"),
    ("optim: {epochs: 1.5}\n", "option epochs: expected an integer, got 1.5"),
])
def test_config_section_errors_name_section_and_key(text, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: two_gaussians\n" + text)
    with pytest.raises(ConfigError) as e:
        load_config_file(str(path))
    assert message in str(e.value) and str(path) in str(e.value)


def test_config_json_and_its_syntax_errors(tmp_path):
    cfg = make_config({"data": "nyud2", "data_root": "x", "ssir": True, "epsilon": "auto"})
    path = str(tmp_path / "c.json")
    write_config(cfg, path)
    again = make_config({}, load_config_file(path))
    assert again.to_dict() == cfg.to_dict() and again.many_bins == cfg.many_bins
    assert sectioned(cfg)["ssir"]["epsilon"] == "auto" and sectioned(cfg)["ssir"]["enabled"] is True
    assert sectioned(cfg)["data"]["name"] == "nyud2" and sectioned(cfg)["model"]["name"] == \
        "depthnet"
    bad = tmp_path / "bad.json"
    bad.write_text('{"optim": {"lr": 0.1,}}')
    with pytest.raises(ConfigError, match="line 1, column .*JSON syntax error"):
        load_config_file(str(bad))


# ---- the run folder's configuration reproduces the run ---------------------------------------

def test_run_folder_config_reproduces_the_run(tmp_path):
    first = str(tmp_path / "first")
    assert main(["train", *GAUSS, "--reweight", "sqrt_inv", "--ssir", "--epsilon", "0.5",
                 "--data-options", "n_major=300", "--out", first]) == 0
    saved = os.path.join(first, "config.json")
    doc = json.load(open(saved))
    assert list(doc) == ["data", "model", "method", "ssir", "optim", "output"]
    assert doc["method"]["lds"] == {"enabled": False, "kernel": "gaussian", "ks": 5,
                                    "sigma": 2.0, "int_counts": False}
    assert doc["data"]["options"] == {"n_major": 300} and doc["ssir"]["epsilon"] == 0.5
    second = str(tmp_path / "second")
    assert main(["train", "--config", saved, "--out", second]) == 0
    a = json.load(open(os.path.join(first, "test_metrics.json")))
    b = json.load(open(os.path.join(second, "test_metrics.json")))
    assert a["all"]["mae"] == b["all"]["mae"] and a["all"]["count"] == b["all"]["count"] == 1000
    d2 = json.load(open(os.path.join(second, "config.json")))
    d2["output"]["out"] = first
    assert d2 == doc


def test_resumed_run_saves_resume_false(tmp_path):
    out = str(tmp_path / "r")
    assert main(["train", *GAUSS, "--epochs", "2", "--out", out, "--stop-after", "1"]) == 0
    assert main(["train", *GAUSS, "--epochs", "2", "--out", out, "--resume"]) == 0
    cfg = make_config({}, load_config_file(os.path.join(out, "config.json")))
    assert cfg.resume is False and cfg.epochs == 2 and cfg.stop_after is None
    validate(cfg)
