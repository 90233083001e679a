"""The results file: one JSON object per line, appended as each cell finishes.

A row is written with a single ``write`` of the whole line on a file opened for appending, then
flushed to disk, so a killed runner leaves either the whole row or a torn tail without a newline.
:meth:`ResultStore.rows` ignores such a tail and :meth:`ResultStore.repair` cuts it off before
new rows are appended, so a rerun completes the grid without a half-written row.

Split tables (the test users, their target items and how often each target occurs in training)
are the same for every model on a dataset; they are stored once, content-addressed, next to the
results file (``<results>.splits/<sha1>.json``) and rows refer to them by that hash. A row's
per-user target ranks (one number per test user, the bulk of a row) are kept the same way in
``<results>.ranks/<sha1>.json``, written before the row: the line holds their hash, and
:meth:`ResultStore.rows` puts the list back, so readers always see ``row["ranks"]`` as a list
(rows written with the list inline are read as they are).
"""
import hashlib
import json
import os

from recbole_mm.utils import atomic_write


class ResultStore:
    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.split_dir = os.path.splitext(self.path)[0] + ".splits"
        self.ranks_dir = os.path.splitext(self.path)[0] + ".ranks"

    # ------------------------------------------------------------------ rows
    def rows(self):
        """Every complete row, in file order (a torn last line is skipped)."""
        if not os.path.isfile(self.path):
            return []
        rows = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn tail of a killed writer
                line = line.strip()
                if line:
                    row = json.loads(line)
                    if isinstance(row.get("ranks"), str):
                        row["ranks"] = _get(self.ranks_dir, row["ranks"])
                    rows.append(row)
        return rows

    def finished(self):
        """{cell key: row} of the cells that finished successfully (the last row of a key wins)."""
        return {row["key"]: row for row in self.rows() if row.get("status") == "ok"}

    def repair(self):
        """Cut a torn last line (no newline) left by a killed writer; returns bytes removed."""
        if not os.path.isfile(self.path):
            return 0
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if not data or data.endswith(b"\n"):
                return 0
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)
            return len(data) - keep

    def append(self, row):
        """Append ``row`` as one line; a ``ranks`` list goes to its own file first (module docstring)."""
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        if isinstance(row.get("ranks"), list):
            row = {**row, "ranks": _put(self.ranks_dir, row["ranks"])}
        line = (json.dumps(row, sort_keys=True, default=_plain) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ splits
    def put_split(self, table):
        """Store a split table (dict of equal-length lists) once; returns its hash."""
        return _put(self.split_dir, table)

    def get_split(self, digest):
        return _get(self.split_dir, digest)


def _put(folder, value):
    """Write ``value`` as JSON to ``folder/<hash>.json`` unless it is there; returns the hash."""
    payload = json.dumps(value, sort_keys=True).encode("utf-8")
    digest = hashlib.sha1(payload).hexdigest()[:16]
    path = os.path.join(folder, f"{digest}.json")
    if not os.path.isfile(path):
        atomic_write(path, lambda handle: handle.write(payload))
    return digest


def _get(folder, digest):
    with open(os.path.join(folder, f"{digest}.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _plain(value):
    """JSON for numpy scalars and other numbers RecBole hands back."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
