"""The run folder: which folder a run writes to, and who may write there.

    out = choose_folder(cfg)          # --out, or runs/<data>-<method>-s<seed>[-vN] (a fresh one)
    with RunLock(out, cfg) as lock:   # refuses a folder holding another run, or in use
        ...

A run refuses a non-empty --out unless it continues the run there (--resume) or replaces it
(--overwrite, which deletes the files a run writes, and only those). Without --out the default
name gets the first free suffix -v2, -v3, ... so the same command can be run twice. The lock
file `.ssir-fast.lock` is held (flock) while the run lives, with its process id and host inside:
a second run on the same folder fails at once naming the first; a killed run's lock is released
by the system. Every refusal happens before anything in the folder changes.
"""
import os
import shutil
import socket
import time

from .config import ConfigError

__all__ = ["LOCK_NAME", "RUN_FILES", "choose_folder", "fresh_folder", "holds_run", "RunLock"]

LOCK_NAME = ".ssir-fast.lock"
# what a run writes to its folder (--overwrite deletes these and nothing else)
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json",
             "test_metrics.json", "test_per_bin.csv", "val_metrics.json", "val_per_bin.csv",
             "per_bin_test.png", "curves.png", "similarity.png")
RUN_DIRS = ("tensorboard",)

try:
    import fcntl
except ImportError:   # Windows: the lock is the file's existence (see _acquire)
    fcntl = None


def default_folder(cfg):
    return os.path.join("runs", f"{cfg.data.name}-{cfg.method_name()}-s{cfg.seed}")


def _entries(path):
    """What the folder holds, besides a lock file."""
    return sorted(set(os.listdir(path)) - {LOCK_NAME}) if os.path.isdir(path) else []


def _occupied(path):
    return bool(_entries(path))


def choose_folder(cfg):
    """cfg.out, or the default folder name; when that holds something already, the first of
    <name>-v2, <name>-v3, ... that does not (a fresh folder for a fresh run)."""
    return cfg.out or fresh_folder(default_folder(cfg))


def fresh_folder(base):
    """`base`, or when it holds something, the first of <base>-v2, <base>-v3, ... that does not."""
    path, n = base, 1
    while os.path.exists(path) and (not os.path.isdir(path) or _occupied(path)):
        n += 1
        path = f"{base}-v{n}"
    return path


def _check_path(out):
    """A ConfigError when `out` cannot be a folder: it is a file, or lies inside one."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file, not a folder: choose a folder for the run")
    parent = os.path.dirname(os.path.abspath(out))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"--out {out} lies inside {parent}, which is a file, not a folder")


def _holder(path):
    """'process 123 on host, since 12:00:00' from a lock file, or 'another process'."""
    try:
        with open(path) as f:
            parts = f.read().split()
    except OSError:
        parts = []
    if len(parts) >= 3:
        return f"process {parts[0]} on {parts[1]}, started {' '.join(parts[2:])}"
    return "another process"


def holds_run(path):
    """True when folder `path` holds a run's files (config.json, last.pt, ...)."""
    return bool(set(_entries(path)) & set(RUN_FILES + RUN_DIRS))


class RunLock:
    """Claim run folder `out` for this process (see the module docstring); a context manager.
    `resume` / `overwrite`: the run continues / replaces the one in `out`."""

    def __init__(self, out, resume=False, overwrite=False):
        self.out, self.resume, self.overwrite = out, resume, overwrite
        self.path = os.path.join(out, LOCK_NAME)
        self._file = None

    def _in_use(self):
        """The holder of the folder's lock when a live process holds it, else None."""
        if not os.path.exists(self.path):
            return None
        if fcntl is None:   # a released lock file is empty
            return _holder(self.path) if os.path.getsize(self.path) else None
        with open(self.path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return _holder(self.path)
            fcntl.flock(f, fcntl.LOCK_UN)
        return None

    def acquire(self):
        out = self.out
        _check_path(out)
        holder = self._in_use()
        if holder is not None:
            raise ConfigError(f"--out {out} is in use by another ssir-fast run ({holder}); wait "
                              f"for it to finish or choose another --out")
        if self.resume and not os.path.isfile(os.path.join(out, "last.pt")):
            raise ConfigError(f"--resume: no run to continue in {out} (checkpoint not found: "
                              f"{os.path.join(out, 'last.pt')})")
        if _occupied(out) and not (self.resume or self.overwrite):
            held = sorted(set(_entries(out)) & set(RUN_FILES + RUN_DIRS))
            what = (f"holds another run ({', '.join(held[:4])})" if held
                    else f"is not empty ({', '.join(_entries(out)[:4])})")
            raise ConfigError(f"--out {out} {what}: continue that run with --resume, replace it "
                              f"with --overwrite, or choose another --out")
        try:
            os.makedirs(out, exist_ok=True)
            self._file = open(self.path, "a+")
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:   # another run took it between the check and now
                self._file.close()
                self._file = None
                raise ConfigError(f"--out {out} is in use by another ssir-fast run "
                                  f"({_holder(self.path)}); choose another --out") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()} {socket.gethostname()} "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._file.flush()
        if self.overwrite and not self.resume:
            for name in RUN_FILES:
                p = os.path.join(out, name)
                if os.path.isfile(p):
                    os.remove(p)
            for name in RUN_DIRS:
                shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        return self

    def release(self):
        if self._file is None:
            return
        try:   # emptied, not deleted: deleting would race with a run opening it
            self._file.seek(0)
            self._file.truncate()
        except OSError:
            pass
        if fcntl is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
