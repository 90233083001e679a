"""Checks of config values shared by several models. Imports nothing of recbole_mm but its errors,
so model modules can use it without depending on :mod:`recbole_mm.config` (which looks models up)."""
from recbole_mm.errors import ConfigError


def require_cross_entropy(config, model_name, error_class=ConfigError):
    """Refuse any ``loss_type`` but CE for models trained with cross-entropy over all items."""
    if config["loss_type"] != "CE":
        raise error_class(f"{model_name} trains with cross-entropy over all items; config key 'loss_type' "
                          f"must be CE, got {config['loss_type']!r}. Fix: set loss_type: CE and "
                          f"train_neg_sample_args: ~ (properties/model/{model_name}.yaml).")


def select_modalities(config, available, model_name, error_class=ConfigError):
    """The modalities a model uses, from config key ``modalities``: ~ = every modality in
    ``available`` (the dataset's feature modalities, in their order); a list keeps its own order
    and must be a non-empty subset of ``available``."""
    requested = config["modalities"] if "modalities" in config else None
    available = list(available)
    if requested is None:
        chosen = available
    else:
        chosen = [requested] if isinstance(requested, str) else list(requested)
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise error_class(f"config key 'modalities' names {unknown}, but {model_name} can use only the "
                              f"dataset's feature modalities {available}. Fix: choose from those, or set "
                              "modalities: ~ (all).")
    if not chosen:
        raise error_class(f"{model_name} needs at least one modality, but the dataset has no feature file "
                          "(or modalities is empty). Fix: declare multimodal_features in the dataset yaml.")
    return chosen
