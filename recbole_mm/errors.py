"""The base class of every error a user can cause (config, data, features, model keys, tuning,
paths). Entry points catch it once and print one ``error:`` line (exit code 2)."""


class RecBoleMMError(ValueError):
    """A user-facing error: the message names the key or file and the fix."""
