"""User-facing errors of recbole_mm (minimal: the base class only).

Every mistake a user can make raises a subclass of :class:`RecBoleMMError` whose message names
the key or file and the fix; entry points print it as one ``error:`` line and exit with code 2.
This module imports nothing from the rest of recbole_mm, so any module may import it.
"""


class RecBoleMMError(ValueError):
    """Base of every user-facing error; the message names the key or file and the fix."""
