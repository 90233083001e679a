"""recbole_mm: multimodal sequential recommendation as a RecBole plugin."""
import warnings

__version__ = "0.1.0"

# Known, harmless warnings of the pinned stack (RecBole 1.2.1 on pandas 2.x / torch 2.13 / ray 2.6):
# they would bury our own messages.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.cuda\.amp\.GradScaler.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(thop|ray|hyperopt|pkg_resources)")
warnings.filterwarnings("ignore", category=UserWarning, message=r".*pkg_resources is deprecated.*")

from recbole_mm.config import Config  # noqa: E402,F401
from recbole_mm.quick_start import load_data_and_model, objective_function, run_recbole_mm  # noqa: E402,F401
