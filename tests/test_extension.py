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
    cuda = torch.ops.ssir_fast.cuda_version()
    assert (cuda >= 11000) if WITH_CUDA else (cuda == -1)
    assert ssir_fast.HAS_CUDA_KERNELS == WITH_CUDA


def test_torch_version_mismatch_is_a_readable_error(monkeypatch):
    class FakeInfo:
        TORCH_VERSION = "1.0.0"
    monkeypatch.setattr(_extension, "_build_info", FakeInfo)
    with pytest.raises(ImportError, match="built against torch 1.0.0 but torch .* is installed; "
                                          "rebuild it with `pip install --no-build-isolation -e .`"):
        _extension._load()


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


# ---- the one dispatch rule (issue 10 defect 3) ---------------------------------------------
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


# ---- fake kernels check like the C++ kernels (one contract, issue 10) ------------------------
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


def test_gpu_selftest_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", "gpu_selftest.sh")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
