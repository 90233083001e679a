"""Checks of config values shared by several models. Imports nothing of recbole_mm but its errors,
so model modules can use it without depending on :mod:`recbole_mm.config` (which looks models up)."""
from recbole_mm.errors import ConfigError


def require_cross_entropy(config, model_name, error_class=ConfigError):
    """Refuse any ``loss_type`` but CE for models trained with cross-entropy over all items."""
    if config["loss_type"] != "CE":
        raise error_class(f"{model_name} trains with cross-entropy over all items; config key 'loss_type' "
                          f"must be CE, got {config['loss_type']!r}. Fix: set loss_type: CE and "
                          f"train_neg_sample_args: ~ (properties/model/{model_name}.yaml).")
