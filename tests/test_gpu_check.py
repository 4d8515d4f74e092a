"""benchmarks/gpu_check.py: the summary the GPU check writes after every stage, and the test files
it leaves out where a module is missing."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402

PYTEST_LOG = """\
..F.s
FAILED tests/test_perturb.py::test_cuda_equals_cpu[shape0-dtype0] - AssertionError: max 0.1
ERROR tests/test_data.py::test_cuda_batches - RuntimeError: CUDA error
=========== 1 failed, 3 passed, 1 skipped, 1 error in 12.31s ===========
"""


def test_summary_after_each_stage(tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    os.makedirs(out)
    log = tmp_path / "cuda_tests.log"
    log.write_text(PYTEST_LOG)
    gpu_check.add_header(work, "device", "NVIDIA H200, 140 GiB, sm_90")
    rec = gpu_check.record_stage(work, out, "cuda_tests", "failed (rc 1)", 1, 12.9, 120, str(log))
    assert rec["detail"] == "1 failed, 3 passed, 1 skipped, 1 error in 12.31s"
    assert rec["failures"] == PYTEST_LOG.splitlines()[1:3]
    summary = open(os.path.join(out, "summary.md")).read()
    assert "- device: NVIDIA H200, 140 GiB, sm_90" in summary
    assert "| cuda_tests | failed (rc 1) | 12.9 | 120 | 1 failed, 3 passed, 1 skipped, 1 error in 12.31s |" in summary
    assert "FAILED tests/test_perturb.py::test_cuda_equals_cpu[shape0-dtype0]" in summary
    assert "Benchmark rows" not in summary  # no results.jsonl yet

    # a later stage: its row is added, the earlier one kept; benchmark rows appear, a line cut
    # by a kill mid-write is passed over
    rows = [dict(bench="perturb/float32/scalar/cuda", case="ssir_fast", mode="forward",
                 device="cuda", n=10, median_ms=1.25, device_name="NVIDIA H200",
                 fraction_of_copy=0.912345, gbps=3600.0, shape=[256, 3, 224, 224]),
            dict(bench="perturb/float32/scalar/cuda", case="eager", mode="forward",
                 device="cuda", n=10, median_ms=4.5, device_name="NVIDIA H200",
                 fraction_of_copy=0.912345, gbps=3600.0),
            dict(bench="e2e_cuda", backend="torch", method="ssir", device="NVIDIA H200",
                 feed_efficiency=0.71, first_batch_s=[2.5, 0.4, 0.3], steady_img_s=1800.0)]
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"bench": "cut')
    sanitizer = tmp_path / "memcheck.log"
    sanitizer.write_text("========= Invalid __global__ read of size 16 bytes\n"
                         "=========     at perturb_kernel\n========= ERROR SUMMARY: 1 error\n")
    rec = gpu_check.record_stage(work, out, "memcheck", "timed out (75 s)", 124, 75, 75,
                                 str(sanitizer))
    assert rec["detail"] == "ERROR SUMMARY: 1 error"
    assert rec["failures"] == ["========= Invalid __global__ read of size 16 bytes"]
    summary = open(os.path.join(out, "summary.md")).read()
    assert summary.index("| cuda_tests |") < summary.index("| memcheck | timed out (75 s) |")
    assert ("| perturb/float32/scalar/cuda | NVIDIA H200 | ssir_fast 1.25; eager 4.5 | "
            "fraction_of_copy 0.9123, gbps 3600 |") in summary
    assert "| e2e_cuda | NVIDIA H200 |  | feed_efficiency 0.71, first_batch_s 2.5/0.4/0.3, " \
           "steady_img_s 1800 |" in summary


def test_stage_status_and_skipped_note(tmp_path):
    work, out = str(tmp_path / "w"), str(tmp_path / "o")
    with pytest.raises(ValueError, match="status must start with one of"):
        gpu_check.record_stage(work, out, "build", "ok", 0, 1, 10, None)
    rec = gpu_check.record_stage(work, out, "e2e_torch", "skipped", 0, 0, 150, None,
                                 "PIL is not installed")
    assert rec["detail"] == "PIL is not installed" and rec["failures"] == []
    assert "| e2e_torch | skipped | 0.0 | 150 | PIL is not installed |" in \
        open(os.path.join(out, "summary.md")).read()
    log = tmp_path / "build.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)) + "error: command 'nvcc' failed\n")
    rec = gpu_check.record_stage(work, out, "build", "failed (rc 1)", 1, 9, 200, str(log))
    assert rec["detail"] == "error: command 'nvcc' failed"
    assert rec["failures"] == [f"line {i}" for i in range(26, 40)] + ["error: command 'nvcc' failed"]
    ok = gpu_check.record_stage(work, out, "cuda_tests", "passed", 0, 9, 200, str(log))
    assert ok["failures"] == []


def test_log_detail_falls_back_to_the_last_line():
    assert gpu_check.log_detail("building\n  done: 3 ops with CUDA kernels  \n\n") == \
        "done: 3 ops with CUDA kernels"
    assert gpu_check.log_detail("") == ""
    assert gpu_check.log_detail("57 tests collected in 3.10s") == "57 tests collected in 3.10s"
    assert gpu_check.log_detail("\n\nno tests collected (16 deselected) in 0.05s\n") == \
        "no tests collected (16 deselected) in 0.05s"


def test_unimportable_tests_follow_local_helpers(tmp_path):
    (tmp_path / "_helper.py").write_text("import os\nfrom surely_absent_pkg_x import y\n")
    (tmp_path / "test_a.py").write_text("import os\nimport torch\n")
    (tmp_path / "test_b.py").write_text("import pytest\nfrom _helper import thing\n")
    (tmp_path / "test_c.py").write_text("def test_x():\n    import surely_absent_pkg_x\n")
    (tmp_path / "test_d.py").write_text("import surely_absent_pkg_z.sub as s\n")
    (tmp_path / "test_e.py").write_text("from . import _helper\n")  # relative: not followed
    got = gpu_check.unimportable_tests(str(tmp_path))
    assert got == {str(tmp_path / "test_b.py"): "surely_absent_pkg_x",
                   str(tmp_path / "test_d.py"): "surely_absent_pkg_z"}
    assert gpu_check.missing_modules(["os", "surely_absent_pkg_x", "surely_absent_pkg_z.sub"]) == \
        ["surely_absent_pkg_x", "surely_absent_pkg_z.sub"]


def test_this_repositorys_tests_all_collect_here():
    # with the test extras installed (CI), no test file is left out
    assert gpu_check.unimportable_tests(os.path.join(ROOT, "tests")) == {}


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_e2e.sh"])
def test_gpu_scripts_are_valid_bash(script):
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", script)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
