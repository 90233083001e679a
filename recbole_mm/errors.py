"""User-facing errors of recbole_mm and the one place they become an ``error:`` line.

Every mistake a user can make (a config key or value, a dataset or feature file, a model switch,
a search space, a path we cannot read or write) raises a subclass of :class:`RecBoleMMError`
whose message names the key or file and the fix. The entry points (``run_recbole_mm.py``,
``run_hyper.py``, ``python -m recbole_mm.prepare``, benchmark scripts) run their work through
:func:`run_entry_point`, which turns such an error into one ``error: ...`` line on stderr and exit
code 2. Anything else is a bug and keeps its traceback.

Subclasses also derive from the builtin they replaced (``ValueError``, ``FileNotFoundError``), so
``except ValueError`` written against older versions still catches them.

This module imports nothing from the rest of recbole_mm, so any module may import it.
"""
import sys

USAGE_EXIT_CODE = 2


class RecBoleMMError(Exception):
    """Base of every user-facing error; the message names the key or file and the fix."""


class ConfigError(RecBoleMMError, ValueError):
    """A bad configuration key or value."""


class DatasetError(RecBoleMMError, ValueError):
    """The dataset cannot be used as configured; the message names the cause and the fix."""


class UserPathError(RecBoleMMError, OSError):
    """A path the user gave (or its default) cannot be read or written."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or folder the configuration names, or needs, does not exist."""


def one_line(message):
    """The message on one line (yaml and pandas errors span several)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def report(error, stream=None):
    """Print ``error: <message>`` on one line to ``stream`` (stderr); returns the exit code 2."""
    print(f"error: {one_line(error)}", file=stream or sys.stderr, flush=True)
    return USAGE_EXIT_CODE


def run_entry_point(work, *args, **kwargs):
    """Call ``work(*args, **kwargs)``; a :class:`RecBoleMMError` becomes one ``error:`` line and
    exit code 2. Otherwise returns ``work``'s return value when it is an exit code (an int), else 0.
    For scripts (benchmark runners included)::

        sys.exit(run_entry_point(main))
    """
    try:
        result = work(*args, **kwargs)
    except RecBoleMMError as err:
        return report(err)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
