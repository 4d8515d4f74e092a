"""`ssir-fast info`: the facts a bug report needs, in one block to paste.

    ssir_fast version / path, Python, platform
    torch version, and the torch the compiled extension was built against
    CUDA: driver (what the installed driver supports), torch's CUDA, the CUDA (nvcc) the
          extension was compiled with
    kernels: each ssir_fast op and whether it has a CPU and a CUDA kernel
    DALI version and whether its GPU ("mixed") JPEG decoder works here
    GPUs: name, compute capability, bf16 support

Nothing here raises: a fact that cannot be found reads "unknown" or "no (why)".
"""
import ctypes
import io
import os
import platform
import sys

import torch

__all__ = ["collect", "format_info"]


def _cuda_driver_version():
    """The CUDA version the installed driver supports (cuDriverGetVersion), e.g. '12.4'."""
    try:
        lib = ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
            return "unknown"
        return f"{v.value // 1000}.{v.value % 1000 // 10}"
    except OSError:
        return "none (no NVIDIA driver found)"


def _kernels():
    """{op name: (has CPU kernel, has CUDA kernel)} for the registered ssir_fast ops."""
    out = {}
    for name in sorted(torch._C._dispatch_get_all_op_names()):
        if not name.startswith("ssir_fast::"):
            continue
        cpu = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
        cuda = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
        if cpu or cuda:   # skip the build-info ops, which have no device kernels
            out[name.split("::", 1)[1]] = (cpu, cuda)
    return out


def _tiny_jpeg():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(buf, format="JPEG")
    return buf.getvalue()


def _dali():
    """(version or None, GPU decoder status)."""
    try:
        import nvidia.dali as dali
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        return None, f"no (DALI not importable: {type(e).__name__})"
    version = getattr(dali, "__version__", "unknown")
    if not torch.cuda.is_available():
        return version, "no (no CUDA device)"
    try:
        import numpy as np
        from nvidia.dali import fn, pipeline_def

        data = np.frombuffer(_tiny_jpeg(), dtype=np.uint8)

        @pipeline_def(batch_size=1, num_threads=1, device_id=torch.cuda.current_device())
        def pipe():
            enc = fn.external_source(source=lambda: [data], batch=True)
            return fn.decoders.image(enc, device="mixed")

        p = pipe()
        p.build()
        out = p.run()[0]
        shape = tuple(out.as_cpu().at(0).shape)
        return version, "yes" if shape == (8, 8, 3) else f"no (decoded shape {shape})"
    except Exception as e:  # noqa: BLE001
        return version, f"no ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def collect():
    """The facts as a dict of plain values."""
    import ssir_fast
    from ssir_fast import _extension
    build = _extension._build_info
    info = {
        "ssir_fast": ssir_fast.__version__,
        "ssir_fast_path": os.path.dirname(os.path.abspath(ssir_fast.__file__)),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "extension_loaded": bool(_extension.HAS_EXTENSION),
        "extension_built_against_torch": getattr(build, "TORCH_VERSION", None),
        "extension_built_with_cuda": bool(getattr(build, "WITH_CUDA", False)),
        "extension_abi": (f"LibTorch stable ABI, torch >= {build.TORCH_TARGET}, Python abi3 >= 3.10"
                          if getattr(build, "TORCH_TARGET", None) else None),
        "extension_cuda_archs": getattr(build, "CUDA_ARCHS", "") or None,
        "cpu_kernels_loaded": bool(_extension.HAS_EXTENSION),
        "cuda_kernels_loaded": bool(_extension.HAS_CUDA_KERNELS),
        "cuda_driver": _cuda_driver_version(),
        "cuda_torch": torch.version.cuda,
        "cuda_extension_nvcc": None,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "kernels": {k: {"cpu": c, "cuda": g} for k, (c, g) in _kernels().items()},
        "gpus": [],
    }
    if _extension.HAS_CUDA_KERNELS:
        v = _extension.cuda_version()
        info["cuda_extension_nvcc"] = f"{v // 1000}.{v % 1000 // 10}" if v > 0 else None
    info["dali"], info["dali_gpu_decoder"] = _dali()
    if torch.cuda.is_available():
        from .train.precision import bf16_supported
        for i in range(torch.cuda.device_count()):
            cc = torch.cuda.get_device_capability(i)
            try:
                bf16 = bf16_supported(torch.device("cuda", i))
            except Exception:  # noqa: BLE001
                bf16 = None
            info["gpus"].append({"index": i, "name": torch.cuda.get_device_name(i),
                                 "compute_capability": f"{cc[0]}.{cc[1]}", "bf16": bf16})
    return info


def format_info(info=None):
    """The facts as aligned text lines."""
    i = info or collect()
    none = lambda v: "none" if v is None else str(v)  # noqa: E731
    ext = (f"loaded, built against torch {none(i['extension_built_against_torch'])}"
           if i["extension_loaded"] else
           f"NOT loaded (pure-PyTorch fallback; built against torch "
           f"{none(i['extension_built_against_torch'])})")
    lines = [
        ("ssir_fast", f"{i['ssir_fast']} ({i['ssir_fast_path']})"),
        ("python", i["python"]),
        ("platform", i["platform"]),
        ("torch", i["torch"]),
        ("extension", ext),
        ("extension ABI", none(i["extension_abi"])),
        ("kernels loaded", "CPU " + ("yes" if i["cpu_kernels_loaded"] else "no") + ", CUDA "
                           + ("yes" if i["cuda_kernels_loaded"] else "no")),
        ("CUDA archs inside", none(i["extension_cuda_archs"])),
        ("CUDA driver", i["cuda_driver"]),
        ("CUDA torch", none(i["cuda_torch"])),
        ("CUDA extension (nvcc)", none(i["cuda_extension_nvcc"])),
        ("cuDNN", none(i["cudnn"])),
    ]
    for name, k in i["kernels"].items():
        lines.append((f"kernel {name}", f"CPU {'yes' if k['cpu'] else 'no'}, "
                                        f"CUDA {'yes' if k['cuda'] else 'no'}"))
    if not i["kernels"]:
        lines.append(("kernels", "none registered"))
    lines.append(("DALI", none(i["dali"])))
    lines.append(("DALI GPU decoder", i["dali_gpu_decoder"]))
    for g in i["gpus"]:
        bf16 = {True: "yes", False: "no", None: "unknown"}[g["bf16"]]
        lines.append((f"GPU {g['index']}", f"{g['name']}, compute capability "
                                           f"{g['compute_capability']}, bf16 {bf16}"))
    if not i["gpus"]:
        lines.append(("GPU", "none visible"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
