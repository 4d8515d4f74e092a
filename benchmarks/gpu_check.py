"""Helpers of benchmarks/gpu_check.sh: what the machine lacks, and the summary it writes as it goes.

    python benchmarks/gpu_check.py preflight                 # versions, device, missing modules
    python benchmarks/gpu_check.py missing                   # optional modules not installed
    python benchmarks/gpu_check.py ignores tests             # --ignore=... for unimportable files
    python benchmarks/gpu_check.py stage WORK OUT NAME STATUS RC SECONDS LIMIT LOG [NOTE]
    python benchmarks/gpu_check.py summary WORK OUT           # rewrite OUT/summary.md

`stage` appends one stage record to WORK/stages.jsonl and rewrites OUT/summary.md from every
record so far and OUT/results.jsonl (the benchmark rows, harness.py's schema), so a run cut short
still leaves a summary of what finished. Standard library only: it must run where nothing can be
installed.
"""
import ast
import datetime
import importlib.util
import json
import os
import re
import sys

# Modules some tests or stages need that a bare GPU machine may lack (the project's test extras).
OPTIONAL = ("PIL", "scipy", "sklearn", "pandas", "smogn", "matplotlib", "yaml", "tqdm",
            "torchvision", "pytest_benchmark", "nvidia.dali")
STATUSES = ("passed", "failed", "timed out", "skipped", "dry ok", "dry failed")


def missing_modules(names=OPTIONAL):
    """The names in `names` that cannot be imported here (found by spec, nothing is imported)."""
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):   # a parent package that is missing
            found = False
        if not found:
            out.append(name)
    return out


def _top_level_imports(path):
    """Top-level module names imported at module level by the file at `path` (not inside
    functions, where a test imports what only it needs)."""
    tree = ast.parse(open(path).read(), filename=path)
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return names


def unimportable_tests(test_dir, is_missing=None):
    """{test file: missing module} for the test_*.py files of `test_dir` whose module-level
    imports (followed into the helper modules of that folder) cannot be satisfied here: pytest
    would stop the whole run on their collection errors."""
    if is_missing is None:
        def is_missing(name):
            return bool(missing_modules([name]))
    local = {f[:-3] for f in os.listdir(test_dir) if f.endswith(".py")}

    def first_missing(module, seen):
        if module in seen:
            return None
        seen.add(module)
        for name in _top_level_imports(os.path.join(test_dir, module + ".py")):
            if name in local:
                found = first_missing(name, seen)
                if found:
                    return found
            elif is_missing(name):
                return name
        return None

    result = {}
    for f in sorted(os.listdir(test_dir)):
        if f.startswith("test_") and f.endswith(".py"):
            name = first_missing(f[:-3], set())
            if name:
                result[os.path.join(test_dir, f)] = name
    return result


# ---- the summary ---------------------------------------------------------------------------
_PYTEST_TOTALS = re.compile(r"\b\d+ (?:passed|failed|skipped|errors?|deselected|xfailed|xpassed|"
                            r"warnings?|tests? collected)\b.*")


def log_detail(text):
    """One line that says how a stage's log ended: pytest's totals, compute-sanitizer's error
    summary, or the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR SUMMARY" in ln:
            return ln.strip("= ")
    for ln in reversed(lines):
        if (_PYTEST_TOTALS.search(ln) or "no tests collected" in ln or "no tests ran" in ln) \
                and not ln.startswith(("FAILED", "ERROR")):
            return ln.strip("= ")
    return lines[-1][:160] if lines else ""


def log_failures(text, limit=25):
    """pytest's FAILED/ERROR lines and compute-sanitizer's error lines in a stage's log."""
    keep = [ln.rstrip() for ln in text.splitlines()
            if ln.startswith(("FAILED ", "ERROR ", "ERROR:")) or
            re.match(r"=+ (Invalid|Race|Error|Uninitialized|Leaked|Program hit)", ln)]
    return keep[:limit] + ([f"... and {len(keep) - limit} more"] if len(keep) > limit else [])


def record_stage(work, out, name, status, rc, seconds, limit, log_path, note=""):
    """Append a stage's record to work/stages.jsonl and rewrite out/summary.md. A failed stage
    whose log has no FAILED/ERROR/sanitizer lines shows the last 15 lines of its log instead."""
    if not any(status.startswith(s) for s in STATUSES):
        raise ValueError(f"status must start with one of {STATUSES}, got {status!r}")
    text = open(log_path, errors="replace").read() if log_path and os.path.isfile(log_path) else ""
    failures = log_failures(text)
    if not failures and status.startswith(("failed", "timed out", "dry failed")):
        failures = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-15:]  # the log's end
    rec = dict(stage=name, status=status, rc=int(rc), seconds=round(float(seconds), 1),
               limit=int(limit), detail=note or log_detail(text), failures=failures)
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "stages.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    write_summary(work, out)
    return rec


def _read_jsonl(path):
    rows = []
    if os.path.isfile(path):
        for line in open(path):
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:      # a line cut by a kill mid-write
                    pass
    return rows


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    return str(v)


# A bench's figures worth a column: ratios, bandwidths, throughputs.
_FIGURE = re.compile(r"(over|speedup|fraction|gbps|efficiency|img_s|_ms$|first_batch)")
_SCHEMA = {"bench", "case", "mode", "device", "n", "median_ms", "q25_ms", "q75_ms", "min_ms",
           "max_ms", "peak_mem_mb", "torch", "time", "device_name"}


def bench_table(rows):
    """Markdown: one line per bench (its case medians, then its figures), in the order run."""
    benches = {}
    for r in rows:
        b = benches.setdefault(r.get("bench", "?"), {"cases": [], "figures": {}, "device": ""})
        if "median_ms" in r:
            b["cases"].append(f"{r.get('case')}{'' if r.get('mode', 'forward') == 'forward' else ' ' + r['mode']}"
                              f" {r['median_ms']:.4g}")
        b["device"] = r.get("device_name", r.get("device", b["device"]))
        for k, v in r.items():
            if k not in _SCHEMA and v is not None and _FIGURE.search(k):
                b["figures"][k] = v
    lines = ["| bench | device | case medians (ms) | figures |", "|---|---|---|---|"]
    for name, b in benches.items():
        figs = ", ".join(f"{k} {_fmt(v)}" for k, v in b["figures"].items())
        lines.append(f"| {name} | {b['device']} | {'; '.join(b['cases'])} | {figs} |")
    return "\n".join(lines)


def write_summary(work, out):
    stages = _read_jsonl(os.path.join(work, "stages.jsonl"))
    header = _read_jsonl(os.path.join(work, "header.jsonl"))
    lines = ["# GPU check", ""]
    for h in header:
        lines += [f"- {h['key']}: {h['value']}"]
    lines += ["", "| stage | result | seconds | limit s | detail |", "|---|---|---|---|---|"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['limit']} | "
                     f"{s['detail'].replace('|', '/')} |")
    failing = [s for s in stages if s["failures"]]
    if failing:
        lines += ["", "## Failures", ""]
        for s in failing:
            lines += [f"{s['stage']}:", "```", *s["failures"], "```"]
    rows = _read_jsonl(os.path.join(out, "results.jsonl"))
    if rows:
        lines += ["", "## Benchmark rows (results.jsonl)", "", bench_table(rows)]
    lines += ["", f"written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"]
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, ".summary.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(out, "summary.md"))


def add_header(work, key, value):
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "header.jsonl"), "a") as f:
        f.write(json.dumps({"key": key, "value": value}) + "\n")


def preflight(work=None):
    """Print (and, with `work`, keep for the summary) what this machine has."""
    facts = {"python": sys.version.split()[0]}
    try:
        import torch
        facts["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            facts["device"] = (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, "
                               f"sm_{p.major}{p.minor}")
        else:
            facts["device"] = "no CUDA device"
    except ImportError as e:
        facts["torch"] = f"not importable: {e}"
    facts["CPUs"] = str(os.cpu_count())
    facts["missing optional modules"] = ", ".join(missing_modules()) or "none"
    for k, v in facts.items():
        print(f"{k}: {v}")
        if work:
            add_header(work, k, v)
    return facts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "preflight":
        preflight(*args[:1])
    elif cmd == "missing":
        print(" ".join(missing_modules()))
    elif cmd == "ignores":
        for path, name in unimportable_tests(args[0]).items():
            print(f"--ignore={path}")
            print(f"{path}: not collected, no module {name}", file=sys.stderr)
    elif cmd == "header":
        add_header(*args[:3])
    elif cmd == "stage":
        work, out, name, status, rc, seconds, limit, log = args[:8]
        rec = record_stage(work, out, name, status, rc, seconds, limit, log, *args[8:9])
        print(f"[{name}] {rec['status']} in {rec['seconds']} s: {rec['detail']}")
    elif cmd == "summary":
        write_summary(*args[:2])
    else:
        raise SystemExit(f"unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main()
