"""Loading the compiled extension: readable errors on a mismatch, a working pure-PyTorch fallback."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ssir_fast
from ssir_fast import _extension


def _run(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_ops_are_registered():
    assert ssir_fast.HAS_EXTENSION
    assert hasattr(torch.ops.ssir_fast, "perturb")
    from ssir_fast._build_info import WITH_CUDA
    cuda = _extension.cuda_version()
    # The CUDA kernels load exactly when they were built and torch is a CUDA build of their major.
    from ssir_fast._build_info import TORCH_CUDA
    loads = (WITH_CUDA and torch.version.cuda is not None
             and torch.version.cuda.split(".")[0] == str(TORCH_CUDA).split(".")[0])
    assert ssir_fast.HAS_CUDA_KERNELS == loads
    assert (cuda >= 11000) if loads else (cuda == -1)
    # a CPU torch (or another CUDA major) never loads the CUDA library, nor what it links
    assert ("ssir_fast._C_cuda" in sys.modules) == loads


def test_compiled_kernels_serve_the_cpu_ops(monkeypatch):
    """The CPU ops are answered by the compiled library (ssir_fast._C, an abi3 stable-ABI
    binary), not the fallbacks: every op has a CPU kernel registered, and with the four
    pure-PyTorch fallbacks made to fail, the four wrappers still return the reference values."""
    from ssir_fast import info
    import importlib
    p_mod, br_mod, bfs_mod, fc_mod = (importlib.import_module(f"ssir_fast.ops.{m}") for m in (
        "perturb", "bin_reduce", "bin_feature_stats", "fds_calibrate"))
    kernels = info._kernels()
    for op in ("perturb", "perturb_", "perturb_out", "bin_reduce", "bin_feature_stats",
               "fds_calibrate"):
        assert kernels[op][0], f"{op} has no compiled CPU kernel"
    lib = sys.modules["ssir_fast._C"].__file__
    assert lib.endswith(".abi3.so"), lib

    def no_fallback(*args, **kwargs):
        raise AssertionError("a pure-PyTorch fallback ran")
    for mod, name in ((p_mod, "perturb_torch"), (br_mod, "bin_reduce_torch"),
                      (bfs_mod, "bin_feature_stats_torch"), (fc_mod, "fds_calibrate_torch")):
        monkeypatch.setattr(mod, name, no_fallback)
    torch.manual_seed(0)
    x, g = torch.randn(3, 4), torch.randn(3, 4)
    ref = ssir_fast.reference.perturb_reference(x, g, 0.5)
    assert (ssir_fast.ops.perturb(x, g, 0.5).double() - ref).abs().max() < 1e-5
    p, y = torch.rand(50) * 5, torch.rand(50) * 5
    table = ssir_fast.ops.bin_reduce(p, y, 0.0, 1.0, 5)
    assert int(table[:, 0].sum()) == 50
    idx = torch.tensor([0, 1, 1])
    count, mean, var = ssir_fast.ops.bin_feature_stats(x, idx, 2)
    assert count.tolist() == [1, 2] and torch.allclose(mean[1], x[1:].mean(0), atol=1e-6)
    out = ssir_fast.ops.fds_calibrate(x, idx, mean, var, mean, var)
    assert torch.allclose(out, x, atol=1e-5)  # calibrating with the same statistics: identity


@pytest.mark.skipif(os.environ.get("SSIR_EXPECT_CUDA_KERNELS", "0") != "1",
                    reason="set SSIR_EXPECT_CUDA_KERNELS=1 where the CUDA kernels must be present")
def test_every_op_has_a_cuda_kernel():
    """Under a CUDA torch of the wheel's CUDA major (no GPU needed) every op has a CUDA kernel."""
    from ssir_fast import info
    assert ssir_fast.HAS_CUDA_KERNELS and _extension.cuda_version() > 0
    kernels = info._kernels()
    for op in ("perturb", "perturb_", "perturb_out", "bin_reduce", "bin_feature_stats",
               "fds_calibrate"):
        assert kernels[op][1], f"{op} has no CUDA kernel"


def test_old_torch_warns_once_and_falls_back(monkeypatch):
    """A torch older than the stable-ABI target never imports the kernels: one warning, the
    pure-PyTorch ops."""
    monkeypatch.setattr(torch, "__version__", "2.9.1+cpu")
    with pytest.warns(RuntimeWarning, match=r"need torch >= 2.10 .* torch 2.9.1\+cpu is installed; "
                                            r"using the pure-PyTorch ops") as rec:
        assert _extension._load() == (False, False)
    assert len(rec) == 1


def test_cuda_major_mismatch_warns_and_keeps_the_cpu_kernels(monkeypatch):
    class FakeInfo:
        WITH_CUDA, TORCH_CUDA = True, "12.8"
    monkeypatch.setattr(_extension, "_build_info", FakeInfo)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.warns(RuntimeWarning, match=r"compiled for CUDA 12.x but torch .* uses CUDA 13.0; "
                                            r"CUDA tensors use the pure-PyTorch ops") as rec:
        assert _extension._load_cuda() is False
    assert len(rec) == 1
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU torch: nothing to load, no warning
    assert _extension._load_cuda() is False


def test_disabled_extension_falls_back_to_pytorch():
    r = _run("""
        import torch, ssir_fast
        from ssir_fast.reference import perturb_reference
        assert not ssir_fast.HAS_EXTENSION
        x, g = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
        err = (ssir_fast.ops.perturb(x, g, 0.3, -1.0, 1.0).double()
               - perturb_reference(x, g, 0.3, -1.0, 1.0)).abs().max()
        assert err < 1e-6, err
        out = torch.empty_like(x)
        assert ssir_fast.ops.perturb(x, g, 0.3, out=out) is out
        model = torch.nn.Linear(20, 1)
        res = ssir_fast.SSIRLoss()(model, torch.randn(8, 20), torch.randn(8))
        res.loss.backward()
        print("fallback ok")
    """, SSIR_FAST_DISABLE_EXTENSION="1")
    assert r.returncode == 0, r.stderr
    assert "fallback ok" in r.stdout


def test_missing_extension_warns_and_falls_back():
    # Hide ssir_fast._C as if it had never been built.
    r = _run("""
        import sys, warnings, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "ssir_fast._C":
                    raise ImportError("No module named 'ssir_fast._C'")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import ssir_fast
        assert not ssir_fast.HAS_EXTENSION
        assert any("pure-PyTorch" in str(x.message) for x in w), [str(x.message) for x in w]
        import torch
        print(ssir_fast.ops.perturb(torch.ones(2, 3), torch.ones(2, 3), 1.0).shape)
    """)
    assert r.returncode == 0, r.stderr
    assert "torch.Size([2, 3])" in r.stdout


# ---- the one dispatch rule ---------------------------------------------------------------
def test_dispatch_rule_per_device(monkeypatch):
    from ssir_fast.ops._common import use_kernel
    monkeypatch.setattr(_extension, "HAS_EXTENSION", True)
    monkeypatch.setattr(_extension, "HAS_CUDA_KERNELS", False)
    assert use_kernel("cpu") and not use_kernel("cuda") and not use_kernel("meta")
    monkeypatch.setattr(_extension, "HAS_CUDA_KERNELS", True)
    assert use_kernel("cpu") and use_kernel(torch.device("cuda", 0)) and not use_kernel("meta")
    monkeypatch.setattr(_extension, "HAS_EXTENSION", False)
    assert not use_kernel("cpu") and not use_kernel("cuda")


def test_every_op_follows_the_dispatch_rule(monkeypatch):
    """With the rule saying "no kernel" (here: no extension) every op answers from its PyTorch
    fallback without touching torch.ops, as a _C without CUDA kernels must for CUDA tensors."""
    from ssir_fast.ops import bin_feature_stats, bin_reduce, fds_calibrate, perturb

    class NoOps:
        def __getattr__(self, name):
            raise AssertionError(f"torch.ops.ssir_fast.{name} called although the rule says fallback")

    monkeypatch.setattr(_extension, "HAS_EXTENSION", False)
    monkeypatch.setattr(torch.ops, "ssir_fast", NoOps())
    x, g = torch.randn(3, 4), torch.randn(3, 4)
    assert perturb(x, g, 0.5).shape == (3, 4)
    assert perturb(x, g, torch.tensor([0.5, 0.0, 1.0])).shape == (3, 4)
    assert bin_reduce(x.abs() + 1, g.abs() + 1, 0.0, 1.0, 4).shape == (4, 12)
    idx = torch.tensor([0, 1, 1])
    count, mean, var = bin_feature_stats(x, idx, 2)
    assert count.tolist() == [1, 2]
    assert fds_calibrate(x, idx, mean, var, mean, var).shape == (3, 4)


# ---- fake kernels check like the C++ kernels (one contract) ----------------------------------
@pytest.mark.parametrize("call, exc, words", [
    (lambda: torch.ops.ssir_fast.perturb(torch.empty(2, 3), torch.empty(2, 4), 0.1, None, None),
     ValueError, "same shape"),
    (lambda: torch.ops.ssir_fast.perturb(torch.empty(2, 3), torch.empty(2, 3), -1.0, None, None),
     ValueError, "epsilon must be finite"),
    (lambda: torch.ops.ssir_fast.perturb(torch.empty(2, 3), torch.empty(2, 3), 1.0, None, None,
                                         torch.empty(3)), ValueError, r"shape \[N\]"),
    (lambda: torch.ops.ssir_fast.perturb_out(torch.empty(2, 3), torch.empty(2, 3), 1.0, None, None,
                                             torch.empty(2, 2)), ValueError, "out must match x"),
    (lambda: torch.ops.ssir_fast.bin_reduce(torch.empty(5), torch.empty(5).half(), 0.0, 1.0, 3),
     TypeError, "same dtype"),
    (lambda: torch.ops.ssir_fast.bin_reduce(torch.empty(5), torch.empty(5), 0.0, 1.0, 0),
     ValueError, "num_bins"),
    (lambda: torch.ops.ssir_fast.bin_feature_stats(torch.empty(5), torch.zeros(5, dtype=torch.long), 3),
     ValueError, "2-D"),
    (lambda: torch.ops.ssir_fast.fds_calibrate(torch.empty(4, 3), torch.zeros(4, dtype=torch.long),
                                               *[torch.empty(2, 3)] * 3, torch.empty(2, 2), 0.1, 10.0),
     ValueError, "smoothed_var"),
])
def test_fake_kernels_check_arguments(call, exc, words):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(), pytest.raises(exc, match=words):
        call()


# ---- the GPU self-test's parts that can run here ---------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ops_sanitizer_script_runs_on_cpu():
    # benchmarks/ops_sanitizer.py is what compute-sanitizer runs on the GPU; its calls must be
    # valid (no unexpected error) on any device.
    import importlib.util
    spec = importlib.util.spec_from_file_location("ops_sanitizer",
                                                  os.path.join(ROOT, "benchmarks", "ops_sanitizer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.run("cpu") > 200
