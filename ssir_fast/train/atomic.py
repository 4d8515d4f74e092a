"""Files replaced atomically: written to a temporary file next to the target, then renamed over
it, so a reader (or a crash, Ctrl-C, a full disk) never sees a half-written file. On a failure
the temporary file is removed and the previous version of the target is left as it was."""
import os

__all__ = ["atomic_write"]


def atomic_write(path, write, mode="w", newline=None):
    """Call `write(f)` on a temporary file in `path`'s folder, then replace `path` with it. An
    OSError (no space left, no permission, ...) says which file was not written."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if "b" in mode:
            with open(tmp, mode) as f:
                write(f)
        else:
            with open(tmp, mode, newline=newline) as f:
                write(f)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OSError(e.errno, f"{e.strerror or e}: {path} was not written (its previous "
                          f"version, if any, is kept)", path) from None
        raise
