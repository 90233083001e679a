"""Name lookups: models (ours first, then RecBole's), trainers and datasets.

``--model=X`` resolves case-insensitively to a class named ``X`` in any module of
:mod:`recbole_mm.model`; nothing is registered by hand. RecBole's own models come next,
so baselines (SASRec, GRU4Rec, BERT4Rec, ...) run through the same entry point.
"""
import difflib
import importlib
import os
import pkgutil

from recbole.model.abstract_recommender import AbstractRecommender

from recbole_mm.errors import ConfigError

# RecBole's model packages that work without optional third-party libraries.
_RECBOLE_MODEL_PACKAGES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
]

# Public multimodal sets distributed in MMRec format; used for the "missing dataset" message.
MMREC_DATASETS = ("baby", "sports", "clothing", "elec")


_BROKEN_MODULES = {}


class UnknownNameError(ConfigError):
    """An unknown model or dataset name; the message lists what exists."""


def _our_model_classes():
    import recbole_mm.model as package

    classes = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            continue
        try:
            module = importlib.import_module(f"recbole_mm.model.{info.name}")
        except Exception as err:  # noqa: BLE001 - one broken model must not hide the others
            _BROKEN_MODULES[info.name] = f"{type(err).__name__}: {err}"
            continue
        for attr in vars(module).values():
            if (
                isinstance(attr, type)
                and issubclass(attr, AbstractRecommender)
                and attr.__module__ == module.__name__
            ):
                classes[attr.__name__.lower()] = attr
    return classes


def _recbole_model_names():
    import recbole.model as rb_model

    names = {}
    for package in _RECBOLE_MODEL_PACKAGES:
        folder = os.path.join(os.path.dirname(rb_model.__file__), package)
        for info in pkgutil.iter_modules([folder]):
            names[info.name.lower()] = (package, info.name)
    return names


def _recbole_model_class(package, module_name, wanted):
    module = importlib.import_module(f"recbole.model.{package}.{module_name}")
    for attr in vars(module).values():
        if (
            isinstance(attr, type)
            and issubclass(attr, AbstractRecommender)
            and attr.__name__.lower() == wanted.lower()
        ):
            return attr
    return None


def _recbole_class_names():
    """RecBole's model class names as written (SASRec, BERT4Rec), from each family's package."""
    names = set()
    for package in _RECBOLE_MODEL_PACKAGES:
        try:
            module = importlib.import_module(f"recbole.model.{package}")
        except Exception:  # noqa: BLE001 - a family with missing extras: fall back to module names
            names.update(module for family, module in _recbole_model_names().values() if family == package)
            continue
        names.update(attr.__name__ for attr in vars(module).values()
                     if isinstance(attr, type) and issubclass(attr, AbstractRecommender)
                     and attr.__module__.startswith(f"recbole.model.{package}."))
    return names


def available_models():
    """Sorted lists of (our models, RecBole's models) class names."""
    ours = sorted(cls.__name__ for cls in _our_model_classes().values())
    return ours, sorted(_recbole_class_names(), key=str.lower)


def get_model(name):
    """Return the model class for ``name`` (ours first, then RecBole's).

    Raises :class:`UnknownNameError` with one line listing what exists.
    """
    if not isinstance(name, str):
        return name
    ours = _our_model_classes()
    if name.lower() in ours:
        return ours[name.lower()]
    recbole_names = _recbole_model_names()
    if name.lower() in recbole_names:
        package, module_name = recbole_names[name.lower()]
        cls = _recbole_model_class(package, module_name, name)
        if cls is not None:
            return cls
    our_names, their_names = available_models()
    by_lower = {n.lower(): n for n in our_names + their_names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    hint = f" Did you mean {by_lower[close[0]]}?" if close else ""
    broken = "".join(f" (recbole_mm.model.{m} failed to import: {e})" for m, e in _BROKEN_MODULES.items())
    raise UnknownNameError(
        f"unknown model '{name}'.{hint} recbole_mm models: {', '.join(our_names) or '(none)'}; "
        f"RecBole models: {', '.join(their_names)}{broken}"
    )


def get_trainer(model_type, model_name):
    """Trainer class: ``<Model>Trainer`` from the model's own module, else MMTrainer for our
    models, else RecBole's trainer made safe for torch>=2.6 checkpoint loading."""
    from recbole.utils import get_trainer as recbole_get_trainer

    from recbole_mm.trainer import MMTrainer, make_safe_trainer

    ours = _our_model_classes()
    if model_name.lower() in ours:
        module = importlib.import_module(ours[model_name.lower()].__module__)
        custom = getattr(module, ours[model_name.lower()].__name__ + "Trainer", None)
        return custom if custom is not None else MMTrainer
    return make_safe_trainer(recbole_get_trainer(model_type, model_name))


def is_our_model(model_class):
    return model_class.__module__.startswith("recbole_mm.")
