"""Checks of single options. A value that a toolkit constructor owns is checked by that
constructor (SSIRLoss, the LDS/FDS kernel window, FDS, the shot-group bins) and its message is
reported under the flag's name; the rest are ranges of plain numbers and choices."""
import math

from ...fds import FDS
from ...imbalance import LabelBins, lds_kernel
from ...shot_groups import check_shot_bins
from ...ssir import SSIRLoss
from .sections import LEAVES, get_path

__all__ = ["field_errors"]


def _flag(name):
    return "--" + name.replace("_", "-")


def _owned(errs, flag, param, build, *args, **kw):
    """Run the owner's constructor; its error, named by `param`, is reported under `flag`."""
    try:
        build(*args, **kw)
    except (TypeError, ValueError) as e:
        msg = str(e)
        if param and msg.startswith(param + " "):
            msg = flag + msg[len(param):]
        errs.append(msg if msg.startswith(flag) else f"{flag}: {msg}")


def _is_int(v, low):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _owner_errors(cfg):
    errs = []
    for param, name in (("epsilon", "epsilon"), ("lam", "lam"), ("rho", "ssir_rho"),
                        ("eps_max", "ssir_eps_max"), ("subset", "ssir_subset"),
                        ("n_steps", "n_steps"), ("bin_width", "ssir_bin_width")):
        value = getattr(cfg, name)
        if value is not None or param in ("epsilon", "lam"):   # (None: unset, the default)
            _owned(errs, _flag(name), param, SSIRLoss, **{param: value})
    m = cfg.method
    for section in ("lds", "fds"):
        sub = getattr(m, section)
        for param in ("kernel", "ks", "sigma"):
            _owned(errs, _flag(f"{section}_{param}"), param, lds_kernel,
                   **{param: getattr(sub, param)})
    bins = LabelBins(0.0, 1.0, 1)
    fds = m.fds
    _owned(errs, "--fds-momentum", "momentum", FDS, 1, bins, momentum=fds.momentum)
    if fds.clip is not None:
        _owned(errs, "--fds-clip", "clip", FDS, 1, bins, clip=fds.clip)
    if fds.enabled and all(_is_int(v, 0) for v in (fds.start_update, fds.start_smooth)):
        _owned(errs, "--fds-start-smooth", "start_smooth", FDS, 1, bins,
               start_update=fds.start_update, start_smooth=fds.start_smooth)
    out = cfg.output
    groups = {g: getattr(out, f"{g}_bins") for g in ("many", "medium", "few")}
    given = [b for v in groups.values() for b in (v or [])]
    if given:
        top = max((b for b in given if _is_int(b, 0)), default=0)
        _owned(errs, "--many/medium/few-bins", "", check_shot_bins, groups, top + 1,
               "--many/medium/few-bins")
    return errs


# option -> lowest value, for plain integers and numbers (None: unset, allowed where marked)
_INTS = {"epochs": 1, "batch_size": 1, "smogn_k": 1, "gmm_components": 1}
_OPTIONAL_INTS = {"image_size": 1, "width": 1, "rrt_epochs": 1, "workers": 0,
                  "fds_start_update": 0, "fds_start_smooth": 0, "threads": 1, "stop_after": 1}
_POSITIVE = ("lr", "bmse_sigma")
_NONNEG = ("weight_decay", "gamma", "ranksim_gamma", "smogn_pert", "focal_beta", "ranksim_lam",
           "smogn_thres")


def field_errors(cfg):
    """The messages for single options out of their range or choices (empty: none)."""
    errs = []
    for leaf in LEAVES:
        choices, v = leaf.meta["choices"], get_path(cfg, leaf.path)
        if choices and v not in choices:
            errs.append(f"{_flag(leaf.flat)} must be one of {list(choices)}, got {v!r}")
        if leaf.meta["kind"] == "bool" and not isinstance(v, bool) and not (
                v is None and leaf.default is None):
            errs.append(f"{_flag(leaf.flat)} must be true or false, got {v!r}")
    for name, low in _INTS.items():
        v = getattr(cfg, name)
        if not _is_int(v, low):
            errs.append(f"{_flag(name)} must be an integer >= {low}, got {v!r}")
    for name, low in _OPTIONAL_INTS.items():
        v = getattr(cfg, name)
        if v is not None and not _is_int(v, low):
            errs.append(f"{_flag(name)} must be an integer >= {low}, got {v!r}")
    for name in _POSITIVE + _NONNEG:
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not (ok and (v > 0 if name in _POSITIVE else v >= 0)):
            errs.append(f"{_flag(name)} must be {'>' if name in _POSITIVE else '>='} 0, "
                        f"got {v!r}")
    if not (isinstance(cfg.ratio, (int, float)) and cfg.ratio >= 1):
        errs.append(f"--ratio must be >= 1, got {cfg.ratio}")
    thr = {n: getattr(cfg, n) for n in ("many_thr", "few_thr")}
    for name, v in thr.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
            errs.append(f"{_flag(name)} must be a number >= 0, got {v!r}")
    if all(isinstance(v, (int, float)) for v in thr.values()) and \
            thr["few_thr"] > thr["many_thr"] + 1:
        errs.append(f"--few-thr must be <= --many-thr + 1, got {thr['few_thr']} and "
                    f"{thr['many_thr']}")
    device = str(cfg.device)
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        errs.append(f"--device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    return errs + _owner_errors(cfg)
