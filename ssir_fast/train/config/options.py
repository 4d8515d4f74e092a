"""The sections of the training configuration, one typed dataclass each: the field's type is
what jsonargparse checks a value against; its metadata carries the help, the flat name (the
flag; default: its key), the choices and the flag's own syntax where it has one."""
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Union

from ...imbalance import KERNELS, REWEIGHTS
from ...losses import DISTANCES, LOSSES
from ..models import MODELS
from ..precision import AMP_DTYPES
from ..schedule import SCHEDULES

__all__ = ["DataSection", "ModelSection", "MethodSection", "FocalSection", "BMSESection",
           "LDSSection", "FDSSection", "RankSimSection", "SMOGNSection", "RRTSection",
           "SSIRSection", "OptimSection", "OutputSection", "LOSSES", "SCHEDULES", "AMP_DTYPES"]


def _f(default, help, flat=None, choices=None, kind=None):
    """A leaf option: its default, help, flat name (the flag; default: the key), choices and
    the flag's own syntax where it has one ("ints", "floats": 60,80; "ranges": 2-5,9; "kv":
    k=v,k=v); the field's type is what the values are checked against."""
    if kind is None and isinstance(default, bool):
        kind = "bool"
    return field(default=default, metadata={"help": help, "flat": flat, "choices": choices,
                                            "kind": kind})


def _sub(cls):
    return field(default_factory=cls)


@dataclass
class DataSection:
    name: str = _f("default", "data set (registered in ssir_fast.data.registry)", "data")
    root: Optional[str] = _f(None, "where the data set is", "data_root")
    image_size: Optional[int] = _f(None, "input image size (the default data are built at "
                                   "that size)")
    target: Optional[str] = _f(None, "target column (tabular); a,b: several (a vector target)")
    ratio: float = _f(10.0, "imbalance ratio N1/N2 (two_gaussians)")
    options: Optional[dict] = _f(None, "options of the data set's loader, k=v,k=v",
                                 "data_options", kind="kv")
    augment: Optional[bool] = _f(None, "DIR training augmentation (pad-16 random crop + flip; "
                                 "off for the default data: a flip changes the rotation angle)",
                                 kind="bool")
    backend: str = _f("auto", "image loader backend", choices=("auto", "dali", "torch"))
    workers: Optional[int] = _f(None, "loader workers (default: 0 for images <= 32 px, else "
                                "min(4, CPUs))")


@dataclass
class ModelSection:
    name: Optional[str] = _f(None, "model", "model", MODELS)
    width: Optional[int] = _f(None, "base width (mlp hidden / cnn / resnet channels)")
    standardize_target: Optional[bool] = _f(None, "the head predicts (y - mean) / std of the "
                                            "training labels", kind="bool")


@dataclass
class FocalSection:
    beta: float = _f(0.2, "Focal-R beta", "focal_beta")
    gamma: float = _f(1.0, "Focal-R gamma", "focal_gamma")
    activate: str = _f("sigmoid", "Focal-R activation", "focal_activate", ("sigmoid", "tanh"))


@dataclass
class BMSESection:
    sigma: float = _f(1.0, "Balanced MSE initial noise sigma (learned)", "bmse_sigma")
    gmm_components: int = _f(8, "Balanced MSE GAI: GMM components", "gmm_components")


@dataclass
class LDSSection:
    enabled: bool = _f(False, "label distribution smoothing (needs --reweight)", "lds")
    kernel: str = _f("gaussian", "LDS kernel", "lds_kernel", KERNELS)
    ks: int = _f(5, "LDS kernel size (odd)", "lds_ks")
    sigma: float = _f(2.0, "LDS kernel sigma", "lds_sigma")
    int_counts: bool = _f(False, "INV + LDS: truncate the smoothed counts to integers as the "
                          "official DIR code does (its weights differ from the exact ones by "
                          "2-8%)", "lds_int_counts")


@dataclass
class FDSSection:
    enabled: bool = _f(False, "feature distribution smoothing", "fds")
    kernel: str = _f("gaussian", "FDS kernel", "fds_kernel", KERNELS)
    ks: int = _f(5, "FDS kernel size (odd)", "fds_ks")
    sigma: float = _f(2.0, "FDS kernel sigma", "fds_sigma")
    momentum: float = _f(0.9, "FDS momentum", "fds_momentum")
    start_update: int = _f(0, "FDS first epoch collecting statistics", "fds_start_update")
    start_smooth: int = _f(1, "FDS first epoch calibrating features", "fds_start_smooth")
    clip: Optional[List[float]] = _f(None, "FDS variance-ratio clamp lo,hi", "fds_clip",
                                     kind="floats")


@dataclass
class RankSimSection:
    enabled: bool = _f(False, "RankSim regulariser on the features", "ranksim")
    gamma: float = _f(100.0, "RankSim weight gamma", "ranksim_gamma")
    lam: float = _f(2.0, "RankSim interpolation lambda", "ranksim_lam")


@dataclass
class SMOGNSection:
    enabled: bool = _f(False, "SMOGN over-sampling of the training set (tabular data)", "smogn")
    k: int = _f(5, "SMOGN neighbours", "smogn_k")
    pert: float = _f(0.02, "SMOGN Gaussian perturbation", "smogn_pert")
    thres: float = _f(0.5, "SMOGN relevance threshold", "smogn_thres")


@dataclass
class RRTSection:
    enabled: bool = _f(False, "second stage: re-train the last layer with re-weighting, "
                       "starting from --checkpoint", "rrt")
    epochs: Optional[int] = _f(None, "RRT epochs (default: --epochs)", "rrt_epochs")
    checkpoint: Optional[str] = _f(None, "model checkpoint (RRT first stage)", "checkpoint")


@dataclass
class MethodSection:
    loss: Optional[str] = _f(None, "supervised loss", choices=LOSSES)
    reweight: str = _f("none", "re-weighting (inverse = INV, sqrt_inv = SQINV)",
                       choices=REWEIGHTS)
    focal: FocalSection = _sub(FocalSection)
    bmse: BMSESection = _sub(BMSESection)
    lds: LDSSection = _sub(LDSSection)
    fds: FDSSection = _sub(FDSSection)
    ranksim: RankSimSection = _sub(RankSimSection)
    smogn: SMOGNSection = _sub(SMOGNSection)
    rrt: RRTSection = _sub(RRTSection)


@dataclass
class SSIRSection:
    enabled: bool = _f(False, "SSIR consistency loss", "ssir")
    lam: Optional[float] = _f(None, "SSIR lambda", "lam")
    epsilon: Optional[Union[float, Literal["auto"]]] = _f(None, "SSIR perturbation radius; 0 = "
                                                          "output noise "
                                              "only (ablation); auto = eps_i = rho * delta / "
                                              "||grad_x D_i|| per sample", "epsilon")
    rho: float = _f(0.5, "auto-epsilon: first-order output change as a fraction of delta, in "
                    "(0, 1]", "ssir_rho")
    eps_max: Optional[float] = _f(None, "auto-epsilon: cap on the per-sample radius",
                                  "ssir_eps_max")
    n_steps: int = _f(2, "SSIR adversarial steps (1: fast mode, one forward and one input "
                      "backward fewer)", "n_steps")
    subset: Optional[float] = _f(None, "fast mode: consistency term on this fraction of each "
                                 "batch, drawn in proportion to rarity (1 / bin count)",
                                 "ssir_subset")
    bf16: bool = _f(False, "fast mode: the direction-finding passes (steps 2..n) under bf16 "
                    "autocast when the model trains in fp32", "ssir_bf16")
    target: str = _f("noisy", "SSIR target", "ssir_target", ("noisy", "clean"))
    distance: str = _f("auto", "SSIR distance (auto: follows the loss)", "ssir_distance",
                       ("auto",) + tuple(DISTANCES))
    clip: bool = _f(True, "clip perturbed inputs to the valid (normalised) range", "ssir_clip")
    bin_width: Optional[float] = _f(None, "SSIR noise range / similarity threshold (default: "
                                    "the data set's bin width)", "ssir_bin_width")


@dataclass
class OptimSection:
    epochs: Optional[int] = _f(None, "epochs")
    batch_size: Optional[int] = _f(None, "global batch size (split across DDP ranks)")
    lr: Optional[float] = _f(None, "Adam learning rate")
    weight_decay: Optional[float] = _f(None, "weight decay")
    schedule: Optional[str] = _f(None, "learning-rate schedule", choices=SCHEDULES)
    milestones: Optional[List[int]] = _f(None, "multistep milestones (epochs), e.g. 60,80",
                                    kind="ints")
    step_size: Optional[int] = _f(None, "step schedule period (epochs)")
    gamma: float = _f(0.1, "learning-rate decay factor")
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "deterministic algorithms (slower on GPU)")
    device: str = _f("auto", "device: auto, cpu, cuda, cuda:N")
    amp: bool = _f(True, "mixed precision on GPU (ignored on CPU): bf16 autocast, or fp16 with "
                   "a gradient scaler on GPUs without bf16")
    amp_dtype: str = _f("auto", "mixed-precision dtype (auto: bf16 where supported, else fp16)",
                        choices=AMP_DTYPES)
    channels_last: bool = _f(True, "channels_last memory format on GPU (ignored on CPU)")
    compile: bool = _f(False, "torch.compile the model")
    threads: Optional[int] = _f(None, "CPU threads for torch (unset: torch's; small models gain "
                                "little from more and suffer most on busy cores)")
    skip_nonfinite: bool = _f(False, "skip a batch whose loss is NaN or inf (one host sync per "
                              "step) instead of stopping the run")


@dataclass
class OutputSection:
    # evaluation: shot groups by training count thresholds, or by fixed lists of bins
    many_thr: float = _f(100, "many-shot: more than this many training labels in the bin")
    few_thr: float = _f(20, "few-shot: fewer than this many training labels in the bin")
    many_bins: Optional[List[int]] = _f(None, "many-shot bins as a list of bin indices, e.g. "
                                        "2-38,40 "
                                   "(replaces the thresholds)", kind="ranges")
    medium_bins: Optional[List[int]] = _f(None, "medium-shot bin indices (see --many-bins)",
                                     kind="ranges")
    few_bins: Optional[List[int]] = _f(None, "few-shot bin indices (see --many-bins)",
                                      kind="ranges")
    out: Optional[str] = _f(None, "run folder (default runs/<data>-<method>-s<seed>)")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = _f(False, "replace the run in --out (its files are deleted) instead of "
                         "refusing a folder that holds one")
    tensorboard: bool = _f(False, "also log to TensorBoard (needs tensorboard)")
    progress: bool = _f(True, "progress bars")
    plots: bool = _f(True, "PNG plots at the end (needs matplotlib)")
    stop_after: Optional[int] = _f(None, "stop after this many epochs in this invocation (as if "
                                   "interrupted; continue with --resume)")
