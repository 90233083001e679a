"""Small helpers shared across recbole_mm."""
import os
import tempfile


def atomic_write(path, write):
    """Write a file atomically: ``write(handle)`` fills a temp file in the same folder, which
    then replaces ``path``. A crash half-way leaves the old file (or none), never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
