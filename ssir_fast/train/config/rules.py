"""Rules across options: combinations that cannot run (LDS without re-weighting, RRT without a
checkpoint, SMOGN on images, a data set's own rules, ...) and options that do nothing in the
chosen configuration (`unused_options`: an error for a method's option without the method, a
warning for a setting the device or schedule ignores). Single options are checked by the
constructors that own them (see `checks`)."""
import math


from ...data import registry
from .values import integral

__all__ = ["combination_errors", "unused_options"]

# option prefix or name -> (the flag that makes it count, whether that flag is on)
_NEEDS = (
    (("lam", "epsilon", "n_steps", "ssir_rho", "ssir_eps_max", "ssir_subset", "ssir_bf16",
      "ssir_target", "ssir_distance", "ssir_clip", "ssir_bin_width"), "--ssir",
     lambda c: c.ssir.enabled),
    (("lds_kernel", "lds_ks", "lds_sigma", "lds_int_counts"), "--lds", lambda c: c.lds),
    (("fds_kernel", "fds_ks", "fds_sigma", "fds_momentum", "fds_start_update",
      "fds_start_smooth", "fds_clip"), "--fds", lambda c: c.fds),
    (("ranksim_gamma", "ranksim_lam"), "--ranksim", lambda c: c.ranksim),
    (("smogn_k", "smogn_pert", "smogn_thres"), "--smogn", lambda c: c.smogn),
    (("rrt_epochs",), "--rrt", lambda c: c.rrt),
    (("focal_beta", "focal_gamma", "focal_activate"), "--loss focal-l1 or focal-mse",
     lambda c: str(c.loss).startswith("focal")),
    (("bmse_sigma",), "--loss bmc, gai or bni", lambda c: c.loss in ("bmc", "gai", "bni")),
    (("gmm_components",), "--loss gai", lambda c: c.loss == "gai"),
    (("ratio",), "--data two_gaussians", lambda c: c.data.name == "two_gaussians"),
)
# the same for settings of the schedule: a warning (a config file may keep them for later)
_SCHEDULE_NEEDS = (
    (("milestones",), "--schedule multistep", lambda c: c.schedule == "multistep"),
    (("step_size",), "--schedule step", lambda c: c.schedule == "step"),
    (("gamma",), "--schedule multistep or step", lambda c: c.schedule in ("multistep", "step")),
)


def unused_options(cfg, changed):
    """(errors, warnings) for the options in `changed` (set to a non-default value) that do
    nothing with cfg: a method's option without the method is surely a mistake (an error, e.g.
    --lam without --ssir); a setting the chosen device or schedule ignores is a warning."""
    errs, notes = [], []
    for names, flag, on in _NEEDS:
        given = [n for n in names if n in changed]
        if given and not on(cfg):
            errs.append(f"{', '.join('--' + n.replace('_', '-') for n in given)} only "
                        f"act{'s' if len(given) == 1 else ''} with {flag}, which is not set")
    if "lds_int_counts" in changed and cfg.lds and cfg.reweight != "inverse":
        notes.append("--lds-int-counts only changes --reweight inverse; ignored")
    if cfg.ssir.enabled and cfg.epsilon != "auto":
        for n in ("ssir_rho", "ssir_eps_max"):
            if n in changed:
                notes.append(f"--{n.replace('_', '-')} only acts with --epsilon auto; ignored "
                             f"with --epsilon {cfg.epsilon}")
    for names, flag, on in _SCHEDULE_NEEDS:
        for n in names:
            if n in changed and not on(cfg):
                notes.append(f"--{n.replace('_', '-')} only acts with {flag}; ignored with "
                             f"--schedule {cfg.schedule}")
    if cfg.device == "cpu":
        for n in ("amp", "amp_dtype", "channels_last"):
            if n in changed:
                notes.append(f"--{n.replace('_', '-')} only acts on a GPU; ignored with "
                             f"--device cpu")
    if "overwrite" in changed and cfg.resume:
        errs.append("--overwrite replaces the run in --out, --resume continues it: give one")
    return errs, notes


def _data_errors(cfg):
    """What the data set's registration says about cfg: its --data-root, models, --data-options
    (checked against its loader's signature) and its own rules."""
    try:
        spec = registry.get(cfg.data.name)
    except ValueError:
        return [f"--data must be one of {list(registry.names())}, got {cfg.data.name!r}"]
    errs = []
    if cfg.smogn and spec.kind != "tabular":
        tab = " or ".join(s.name for s in registry.specs() if s.kind == "tabular")
        errs.append(f"--smogn over-samples feature vectors: it needs tabular data "
                    f"(--data {tab}), not --data {cfg.data.name}")
    if spec.models and cfg.model.name not in spec.models:
        what = {"depth": "predicts depth maps", "tabular": "holds feature vectors"}.get(
            spec.kind, "is an image data set")
        errs.append(f"--data {cfg.data.name} {what}: use --model {' or '.join(spec.models)}, not "
                    f"{cfg.model.name}")
    if cfg.model.name == "depthnet" and spec.kind != "depth":
        depth = " or ".join(s.name for s in registry.specs() if s.kind == "depth")
        errs.append(f"--model depthnet is the NYUD2 depth model: use it with --data {depth}")
    if spec.needs_root and not cfg.data_root:
        errs.append(f"--data {cfg.data.name} needs --data-root ({spec.root})")
    opts = cfg.data_options or {}
    if not isinstance(opts, dict):
        return errs + [f"--data-options must be a mapping of option: value, got {opts!r}"]
    accepted = [o for o in spec.options if o not in spec.flags]
    for k in sorted(opts):
        flag = spec.flags.get(k)
        if flag is not None and getattr(cfg, flag) is not None:
            errs.append(f"--data-options {k}: set by --{flag.replace('_', '-')} for --data "
                        f"{cfg.data.name}; give it there")
        elif k not in spec.options:
            errs.append(f"--data-options: unknown option {k!r} for --data {cfg.data.name}; "
                        f"accepted: {', '.join(accepted)}")
    defaults = spec.option_defaults()   # (inspect.Parameter.empty: untyped, passes)
    for k in sorted(set(opts) & set(defaults)):
        bad = _option_type_error(opts[k], defaults[k])
        if bad:
            errs.append(f"--data-options {k}: expected {bad}, got {opts[k]!r}")
    if "on_error" in opts and opts["on_error"] not in registry.ON_ERROR:
        errs.append(f"--data-options on_error must be raise or skip, got {opts['on_error']!r}")
    flat = cfg.to_dict()   # the rules take plain values by name (registry.RULE_VALUES)
    return errs + spec.check(**{k: flat[k] for k in registry.RULE_VALUES})


def _option_type_error(value, default):
    """What a data option must be when `value` does not fit the kind of its `default` (an
    integer, a number, true/false), else None. Options without a typed default pass."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) or value in (0, 1) else "true or false"
    if isinstance(default, int):
        try:
            integral(value)
        except (TypeError, ValueError):
            return "an integer"
        return None
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok and math.isfinite(value) else "a finite number"
    return None



def combination_errors(cfg):
    """The messages for combinations of options that cannot run (empty: none). Reads no file
    and probes no device: what the machine must provide is `runtime.check_environment`'s."""
    errs = []
    m = cfg.method
    if m.lds.enabled and m.reweight == "none":
        errs.append("--lds smooths the counts of a re-weighting scheme: add --reweight inverse or "
                    "--reweight sqrt_inv")
    checkpoint = m.rrt.checkpoint
    if m.rrt.enabled:
        if not checkpoint:
            errs.append("--rrt re-trains the last layer of a trained model: give --checkpoint "
                        "PATH (the first-stage model)")
        if m.reweight == "none":
            errs.append("--rrt re-trains the last layer WITH re-weighting: add --reweight inverse "
                        "or sqrt_inv")
        if cfg.ssir.enabled or m.fds.enabled or m.ranksim.enabled:
            errs.append("--rrt is a second stage: train --ssir/--fds/--ranksim in the first stage")
    errs += _data_errors(cfg)
    o = cfg.optim
    if o.schedule == "multistep" and not (o.milestones and all(
            isinstance(e, int) and e >= 1 for e in o.milestones)):
        errs.append(f"--schedule multistep needs --milestones E1,E2,... (epochs >= 1), got "
                    f"{o.milestones}")
    if o.schedule == "step" and not (isinstance(o.step_size, int) and o.step_size >= 1):
        errs.append(f"--schedule step needs --step-size >= 1, got {o.step_size}")
    if cfg.output.resume and cfg.output.out is None:
        errs.append("--resume needs --out RUN_FOLDER (the run to continue)")
    return errs
