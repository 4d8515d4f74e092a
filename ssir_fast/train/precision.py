"""Mixed precision for the training loop: bf16 autocast where the GPU supports it, else fp16
autocast with a gradient scaler.

    bf16 (compute capability >= 8.0: A100, H100, RTX 30xx+):  autocast(bf16), plain backward/step
    fp16 (older GPUs: V100, T4, RTX 20xx):                     autocast(fp16), GradScaler:
        scaled loss s * L backward;  step with grads / s, skipped when any is inf/NaN (then
        s <- s / 2); s <- 2 s after 2000 finite steps
    off (CPU, --no-amp):                                       float32

`--amp-dtype bf16` on a GPU without bf16 is refused with a `PrecisionError` naming the GPU.
"""
import contextlib

import torch

__all__ = ["Precision", "PrecisionError", "choose_precision", "bf16_supported", "AMP_DTYPES"]

AMP_DTYPES = ("auto", "bf16", "fp16")


class PrecisionError(ValueError):
    """The precision asked for is not one there is (`AMP_DTYPES`) or one this device cannot
    compute in (bf16 on an older GPU)."""


def bf16_supported(device):
    """Whether `device` (a CUDA device) runs bf16 natively (torch's own check: compute capability
    >= 8.0 on CUDA, not emulated)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


class Precision:
    """autocast + backward + optimiser step for one precision. `dtype` None: float32."""

    def __init__(self, device_type, dtype=None):
        self.device_type, self.dtype = device_type, dtype
        self.scaler = (torch.amp.GradScaler(device_type) if dtype == torch.float16 else None)

    @property
    def name(self):
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss, inputs=None):
        """loss.backward() (scaled for fp16); `inputs`: the tensors whose gradients are formed,
        None for every leaf (torch's default)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward(inputs=inputs)

    def step(self, opt):
        """opt.step(), through the scaler for fp16 (which skips steps with inf/NaN grads)."""
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()

    def state_dict(self):
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state):
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def choose_precision(device, amp=True, amp_dtype="auto", log=None):
    """The Precision for a run: off on the CPU or without amp; on CUDA bf16 when supported,
    else fp16 with a GradScaler ("auto"), or the dtype asked for."""
    device = torch.device(device)
    if not amp or device.type != "cuda":
        return Precision(device.type, None)
    if amp_dtype not in AMP_DTYPES:
        raise PrecisionError(f"--amp-dtype must be auto, bf16 or fp16, got {amp_dtype!r}")
    has_bf16 = bf16_supported(device)
    if amp_dtype == "bf16" and not has_bf16:
        name = torch.cuda.get_device_name(device)
        cc = ".".join(map(str, torch.cuda.get_device_capability(device)))
        raise PrecisionError(f"--amp-dtype bf16: {name} (compute capability {cc}) has no "
                             f"bf16 support; use --amp-dtype fp16 (with a gradient scaler) or "
                             f"--no-amp")
    if amp_dtype == "fp16" or (amp_dtype == "auto" and not has_bf16):
        if amp_dtype == "auto" and log is not None:
            log(f"mixed precision: {torch.cuda.get_device_name(device)} has no bf16; using fp16 "
                f"autocast with a gradient scaler")
        return Precision("cuda", torch.float16)
    return Precision("cuda", torch.bfloat16)
