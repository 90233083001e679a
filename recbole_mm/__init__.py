"""recbole_mm: multimodal sequential recommendation as a RecBole plugin."""
__version__ = "0.1.0"

from recbole_mm.config import Config  # noqa: E402,F401
from recbole_mm.quick_start import load_data_and_model, objective_function, run_recbole_mm  # noqa: E402,F401
