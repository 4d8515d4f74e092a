"""The configuration in sections: every shipped config loads and validates, the nested flags
are the flat flags, an unknown or misplaced key names its section and the closest valid key,
single options are checked by the constructors that own them, the help is grouped."""
import os

import pytest

from ssir_fast.cli import build_parser, main, parse_sweep, train_values
from ssir_fast.fds import FDS
from ssir_fast.imbalance import LabelBins, lds_kernel
from ssir_fast.ssir import SSIRLoss
from ssir_fast.train import ConfigError, make_config
from ssir_fast.train.config import FLAT, SECTIONS, TrainConfig, load_config_file, sectioned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# the paper's schedules per data set (model, epochs, batch size, lr)
PAPER = {"agedb": ("resnet50", 90, 256, 1e-3), "imdb_wiki": ("resnet50", 90, 256, 1e-3),
         "nyud2": ("depthnet", 20, 32, 1e-4), "default": ("cnn", 8, 128, 1e-3)}


def _train_parser_for(data=None):
    return build_parser(data)._subparsers._group_actions[0].choices["train"]


def _train_parser():
    return _train_parser_for(None)


@pytest.mark.parametrize("name", sorted(os.listdir(CONFIGS)))
def test_every_paper_config_loads_and_validates(name, tmp_path):
    path = os.path.join(CONFIGS, name)
    values = load_config_file(path)
    cfg = make_config({"data_root": str(tmp_path)}, values)   # validates
    data = name.split("_")[0] if not name.startswith("imdb_wiki") else "imdb_wiki"
    assert cfg.data.name == data
    model, epochs, batch, lr = PAPER[data]
    assert (cfg.model.name, cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr) == \
        (model, epochs, batch, lr)
    tag = name.rsplit(".", 1)[0].split("_", 2 if data == "imdb_wiki" else 1)[-1]
    expect = {"vanilla": "vanilla", "focal": "focal-l1", "focal_ssir": "focal-l1+ssir",
              "sqinv_ssir": "sqinv+ssir", "sqinv_lds_fds": "sqinv+lds+fds", "ssir": "ssir",
              "inv_lds": "inv+lds", "inv_ssir": "inv+ssir"}[tag]
    assert cfg.method_name() == expect
    if name.endswith(".yaml"):   # the paper configs are written in the sections' shape
        import yaml
        doc = yaml.safe_load(open(path))
        assert set(doc) <= {"data", "model", "method", "ssir", "optim", "output"}, name


def test_sectioned_and_flat_forms_are_one_configuration(tmp_path):
    nested = tmp_path / "n.yaml"
    nested.write_text("data: {name: two_gaussians}\nmethod:\n  reweight: inverse\n"
                      "  fds: {enabled: true, ks: 7, clip: [0.5, 2]}\n"
                      "ssir: {enabled: true, rho: 0.25, epsilon: auto}\n")
    flat = tmp_path / "f.yaml"
    flat.write_text("data: two_gaussians\nreweight: inverse\nfds: true\nfds_ks: 7\n"
                    "fds_clip: [0.5, 2]\nssir: true\nssir_rho: 0.25\nepsilon: auto\n")
    a = make_config({}, load_config_file(str(nested)))
    b = make_config({}, load_config_file(str(flat)))
    assert a == b and a.to_dict() == b.to_dict()
    assert a.method.fds.ks == 7 and a.method.fds.clip == [0.5, 2.0] and a.ssir.rho == 0.25
    assert sectioned(a)["method"]["fds"]["enabled"] is True
    # the Python API takes both forms as well
    c = make_config({"method": {"fds": {"enabled": True, "ks": 7, "clip": [0.5, 2.0]},
                                "reweight": "inverse"},
                     "ssir": {"enabled": True, "rho": 0.25, "epsilon": "auto"},
                     "data": {"name": "two_gaussians"}})
    assert c == a


@pytest.mark.parametrize("text, message", [
    ("method: {fds: {kernal: triang}}\n",
     "unknown option 'kernal' in section [method.fds]; closest valid key: 'kernel'"),
    ("optim: {learning_rat: 0.1}\n",
     "unknown option 'learning_rat' in section [optim]"),
    ("ssir: {rhoo: 0.5}\n", "unknown option 'rhoo' in section [ssir]; closest valid key: 'rho'"),
    ("fds_kernal: triang\n",
     "unknown option 'fds_kernal'; closest valid key: 'fds_kernel' (section [method.fds])"),
    ("optim: {rho: 0.5}\n", "option 'rho' belongs in section [ssir], not [optim]"),
    ("method: {fds: {lr: 0.1}}\n", "option 'lr' belongs in section [optim], not [method.fds]"),
    ("methods: {lr: 0.1}\n", "unknown section 'methods'; closest valid key: 'method'"),
    ("ks: 5\n", "unknown option 'ks'; it is a key of section [method.lds] or [method.fds]"),
    ("method: {focal: 3}\n", "section [method.focal] must be a table of option: value, got 3"),
])
def test_unknown_or_misplaced_key_names_section_and_closest_key(text, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: two_gaussians\n" + text)
    with pytest.raises(ConfigError) as e:
        load_config_file(str(path))
    assert message in str(e.value) and str(path) in str(e.value)


def test_unknown_key_in_the_api_flags_and_sweep(capsys):
    with pytest.raises(ConfigError, match=r"unknown option 'fds_kernal'; closest valid key: "
                                          r"'fds_kernel' \(section \[method.fds\]\)"):
        make_config({"fds_kernal": "triang"})
    with pytest.raises(ConfigError, match=r"unknown option 'kss' in section \[method.lds\]; "
                                          r"closest valid key: 'ks'"):
        make_config({"method": {"lds": {"kss": 5}}})
    for argv, hint in ((["--fds-kernal", "triang"], "--fds-kernel (section [method.fds])"),
                       (["--method.lds.sigmaa", "1"], "--method.lds.sigma (section [method.lds])")):
        with pytest.raises(SystemExit) as e:   # argparse's exit
            main(["train", *argv])
        assert e.value.code == 2
        assert f"unrecognized arguments: {' '.join(argv)}; closest valid key: {hint}" in \
            capsys.readouterr().err
    assert main(["train", "--sweep", "epsilom=0.1,1"]) == 2
    assert "--sweep: unknown option 'epsilom'; closest valid key: 'epsilon' (section [ssir])" in \
        capsys.readouterr().err


def test_the_api_checks_types_like_the_files():
    with pytest.raises(ConfigError, match="--fds must be true or false, got 3"):
        make_config({"data": "two_gaussians", "method": {"fds": 3}})
    with pytest.raises(ConfigError, match="--epochs must be an integer >= 1, got 1.5"):
        make_config({"optim": {"epochs": 1.5}})
    assert make_config({"data": "two_gaussians", "method": {"fds": True}}).method.fds.enabled


def test_nested_flags_are_the_flat_flags():
    nested = ["train", "--method.fds.ks", "7", "--method.fds.enabled", "--no-ssir.enabled",
              "--optim.lr=0.01", "--data.name", "two_gaussians", "--method.lds.int-counts"]
    flat = ["train", "--fds-ks", "7", "--fds", "--no-ssir", "--lr=0.01", "--data",
            "two_gaussians", "--lds-int-counts"]
    p = build_parser()
    assert p.parse_args(nested) == p.parse_args(flat)
    assert train_values(p.parse_args(flat).train) == {
        "fds_ks": 7, "fds": True, "ssir": False, "lr": 0.01, "data": "two_gaussians",
        "lds_int_counts": True}
    assert parse_sweep(["method.fds.ks=3,5", "ssir.lam=0.5"]) == {"fds_ks": [3, 5], "lam": [0.5]}
    # every option has its nested flag, on the same argument as its flat flag
    train = _train_parser()
    for leaf in FLAT.values():
        if leaf.flat in ("data", "model", "ssir"):   # --data.name is read as --data (above)
            continue
        action = train._option_string_actions["--" + ".".join(leaf.path)]
        assert action is train._option_string_actions["--" + leaf.flat.replace("_", "-")]


@pytest.mark.parametrize("flag, value, owner", [
    ("ssir_rho", 2.0, lambda: SSIRLoss(rho=2.0)),
    ("ssir_subset", 1.5, lambda: SSIRLoss(subset=1.5)),
    ("n_steps", 0, lambda: SSIRLoss(n_steps=0)),
    ("lds_ks", 4, lambda: lds_kernel(ks=4)),
    ("fds_sigma", 0.0, lambda: lds_kernel(sigma=0.0)),
    ("fds_momentum", 1.5, lambda: FDS(1, LabelBins(0.0, 1.0, 1), momentum=1.5)),
])
def test_single_options_are_checked_by_their_owner(flag, value, owner):
    with pytest.raises((ValueError, TypeError)) as own:
        owner()
    param = str(own.value).split(" ")[0]
    want = "--" + flag.replace("_", "-") + str(own.value)[len(param):]
    extra = {"lds_ks": {"lds": True, "reweight": "inverse"}, "fds_sigma": {"fds": True},
             "fds_momentum": {"fds": True}}.get(flag, {"ssir": True})
    with pytest.raises(ConfigError) as e:
        make_config({"data": "two_gaussians", flag: value, **extra})
    assert want in str(e.value)


def test_help_is_grouped_by_section_and_short():
    text = _train_parser().format_help()
    headers = [ln[1:-2] for ln in text.splitlines() if ln.startswith("[") and ln.endswith("]:")]
    assert headers == list(SECTIONS)
    assert text.splitlines()[0].startswith("usage: ssir-fast train [--config FILE]")
    assert len(text.splitlines()) < 240   # 321 lines when each flag was in the usage too
    assert "--fds-ks N" in text and "--method.fds.ks N" not in text   # one spelling each
    assert "[agedb] bins, check_files: bool = True" not in text     # one data set's options:
    one = _train_parser_for("agedb").format_help()                 # with --data agedb --help
    assert "[agedb] bins, check_files: bool = True" in one and "[nyud2]" not in one
    assert TrainConfig().method.lds.ks == 5


def test_flags_and_their_type_checks_are_jsonargparse_s(capsys):
    import jsonargparse
    train = _train_parser()
    assert isinstance(build_parser(), jsonargparse.ArgumentParser)
    assert isinstance(train, jsonargparse.ArgumentParser)
    ns = build_parser().parse_args(["train", "--epsilon", "auto", "--method.fds.clip", "0.5,2",
                                    "--no-method.lds.enabled", "--optim.epochs", "3",
                                    "--many-bins", "2-4,9"]).train
    assert train_values(ns) == {"epsilon": "auto", "fds_clip": [0.5, 2.0], "lds": False,
                                "epochs": 3, "many_bins": [2, 3, 4, 9]}
    # the library's errors, in one line under the flag's (flat) name
    for argv, message in ((["--lr", "abc"], "--lr: expected a number, got 'abc'"),
                          (["--optim.epochs", "1.5"], "--epochs: expected an integer, got '1.5'"),
                          (["--epsilon", "big"], "--epsilon: expected a number or 'auto', got "
                                                 "'big'"),
                          (["--milestones", "60,x"], "--milestones: expected an integer, got 'x'"),
                          (["--fds", "3"], "unrecognized arguments: 3")):
        with pytest.raises(SystemExit) as e:
            main(["train", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err == f"ssir-fast train: error: {message} (see ssir-fast train --help)\n", err


def test_file_values_are_typed_by_the_library(tmp_path):
    path = tmp_path / "c.toml"   # TOML: read by the library's loader; strings typed by the library
    path.write_text('[data]\nname = "two_gaussians"\n[method]\nreweight = "inverse"\n'
                    '[method.lds]\nenabled = "yes"\nks = 7.0\n[optim]\nlr = "1e-3"\n'
                    'milestones = "2,3"\nschedule = "multistep"\n[ssir]\nenabled = 1\n'
                    'epsilon = "auto"\n')
    values = load_config_file(str(path))
    assert values == {"data": "two_gaussians", "reweight": "inverse", "lds": True, "lds_ks": 7,
                      "lr": 1e-3, "milestones": [2, 3], "schedule": "multistep", "ssir": True,
                      "epsilon": "auto"}
    assert type(values["lds_ks"]) is int and type(values["lr"]) is float
    with pytest.raises(ConfigError, match=r"option lr: expected a number, got 'fast' \(str\)"):
        make_config({}, {"optim": {"lr": "fast"}})
