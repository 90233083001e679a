"""recbole_mm: multimodal sequential recommendation as a RecBole plugin.

The public API is imported lazily so that light commands (``python -m recbole_mm.prepare``)
start without loading RecBole, Ray and every model.
"""
import warnings

__version__ = "0.1.0"

# Known, harmless warnings of the pinned stack (RecBole 1.2.1 on pandas 2.x / torch 2.13 / ray 2.6):
# they would bury our own messages.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.cuda\.amp\.GradScaler.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(thop|ray|hyperopt|pkg_resources)")
warnings.filterwarnings("ignore", category=UserWarning, message=r".*pkg_resources is deprecated.*")

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
