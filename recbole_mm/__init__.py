"""recbole_mm: multimodal sequential recommendation as a RecBole plugin.

The public API is imported lazily so that light commands (``python -m recbole_mm.prepare``)
start without loading RecBole, Ray and every model.

Importing recbole_mm leaves the warning filters alone; the command-line entry points hide the
known, harmless warnings of the pinned stack (:func:`recbole_mm.cli.silence_known_warnings`).
"""

__version__ = "0.1.0"

_LAZY = {
    "Config": "recbole_mm.config",
    "run_recbole_mm": "recbole_mm.quick_start",
    "objective_function": "recbole_mm.quick_start",
    "load_data_and_model": "recbole_mm.quick_start",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recbole_mm' has no attribute {name!r}")
