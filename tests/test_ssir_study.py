"""tools/ssir_study.py: the study's table arithmetic (mean ± std over seeds, paired differences)
on hand-made rows, and its method list."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study():
    spec = importlib.util.spec_from_file_location("ssir_study",
                                                  os.path.join(ROOT, "tools", "ssir_study.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(method, seed, all_mae, few_mae, **extra):
    row = {"data": "fair", "method": method, "seed": seed, "seconds": 2.0}
    for g in ("all", "many", "medium", "few"):
        row.update({f"{g}_mae": all_mae if g != "few" else few_mae, f"{g}_gm": 1.0,
                    f"{g}_count": 10})
    return {**row, **extra}


def test_methods_cover_every_variant_alone_and_with_sqinv():
    s = _study()
    for v in ("SSIR", "SSIR eps=0", "SSIR auto", "SSIR 1-step", "SSIR subset=0.5", "SSIR bf16"):
        assert s.METHODS[v]["ssir"] and s.METHODS["SQINV + " + v]["reweight"] == "sqrt_inv"
        assert s.base_of(v) == "Vanilla" and s.base_of("SQINV + " + v) == "SQINV"
    assert s.METHODS["SSIR eps=0"]["epsilon"] == 0.0
    assert s.METHODS["SSIR auto"]["epsilon"] == "auto"
    assert s.base_of("SQINV") is None and s.base_of("Vanilla") is None


def test_report_means_stds_and_paired_differences():
    s = _study()
    diag = dict(similarity=1.0, perturbation=1e-4, output_change=0.01)
    rows = [_row("Vanilla", 0, 2.0, 10.0), _row("Vanilla", 1, 4.0, 12.0),
            _row("SSIR", 0, 1.0, 9.9, **diag), _row("SSIR", 1, 3.0, 11.9, **diag)]
    table = s.report(rows, seeds=2)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
             if line.startswith("| ")}
    # Vanilla: all MAE mean 3, population std 1; few MAE 11 ± 1
    assert "| 3.000 ± 1.000 | 11.000 ± 1.000 |" in lines["Vanilla"]
    # SSIR - Vanilla per seed: few -0.1, -0.1 (inside the std 1); all -1, -1 (not beyond std 1)
    assert "| -0.100 ± 0.000 | -1.000 ± 0.000 |" in lines["SSIR"]
    assert "beyond std" not in lines["SSIR"]
    rows[2]["all_mae"], rows[3]["all_mae"] = 0.0, 2.0   # -2 per seed: beyond the std of 1
    assert "-2.000 ± 0.000 **beyond std**" in s.report(rows, seeds=2)
