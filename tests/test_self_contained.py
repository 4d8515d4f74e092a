"""The repository explains itself: no tracked text file points to a document or a tracker that a
reader of the repository cannot open (a specification file kept elsewhere, numbered tickets, a
folder next to the checkout). What the code implements is written in docs/algorithm.md."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each pattern is assembled from pieces so that this file does not match itself.
PATTERNS = {
    "a reference to the outside specification": re.compile(r"\b" + "SP" + r"EC\b"),
    "a ticket number": re.compile(r"\b" + "issue" + r"s? #?\d+", re.IGNORECASE),
    "a path into a folder outside the repository": re.compile(r"(?<![\w.-])" + "shared" + "/"),
    "the folder outside the repository": re.compile("shared" + r"\s+folder", re.IGNORECASE),
}

# (path, pattern name, why): uses that are legitimate. Empty today; an entry needs its reason.
ALLOWED = ()


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
        return [p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):   # a source tree without git metadata
        found = []
        for top, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in
                       ("build", "dist", "__pycache__", "runs") and not d.endswith(".egg-info")]
            found += [os.path.relpath(os.path.join(top, f), ROOT) for f in files]
        return found


def _text(root, path):
    try:
        with open(os.path.join(root, path), "rb") as f:
            data = f.read()
    except OSError:       # listed by git but deleted in the work tree
        return None
    if b"\0" in data:
        return None       # binary
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def find_outside_references(paths, root=ROOT):
    """["path:line: what: text", ...] for every line of `paths` (relative to `root`) that matches
    a pattern."""
    hits = []
    for path in paths:
        text = _text(root, path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for what, pattern in PATTERNS.items():
                if pattern.search(line) and not any(a[0] == path and a[1] == what
                                                    for a in ALLOWED):
                    hits.append(f"{path}:{n}: {what}: {line.strip()}")
    return hits


def test_no_tracked_file_points_outside_the_repository():
    paths = _tracked_files()
    assert len(paths) > 50 and "docs/algorithm.md" in paths
    hits = find_outside_references(paths)
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def test_the_patterns_catch_what_they_are_for(tmp_path):
    # each pattern fires on the forms seen before the clean-up and not on ordinary words
    bad = ["see " + "SP" + "EC 3.2", "(" + "SP" + "EC §7)", "Is" + "sue 10/12 kernel changes",
           "per-sample epsilon (" + "issue" + " 12 item 2)", "fixes " + "issue" + "s #13",
           "see ../" + "shared" + "/gpu/DALI.md", "in the " + "shared" + " folder"]
    good = ["importlib.util.find_spec(name)", "a DataSpec per data set", "the specification",
            "an issue with the loader", "issues: none", "a shared machine", "shared memory",
            "docs/algorithm.md, section 3", "the official code", "/dev/shm", "not_shared/x"]
    names = []
    for i, line in enumerate(bad + good):
        names.append(f"f{i:02d}.txt")
        (tmp_path / names[-1]).write_text("first line\n" + line + "\n", encoding="utf-8")
    hits = find_outside_references(names, root=str(tmp_path))
    assert [h.split(": ")[0] for h in hits] == [f"{n}:2" for n in names[:len(bad)]]
