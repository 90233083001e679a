"""Config: RecBole's Config with recbole_mm's property files layered in.

Order, later wins (as in RecBole, plus our four layers):
RecBole internal yaml (overall, model, sample, dataset, quick-start) →
``properties/overall.yaml`` → ``properties/model/<Model>.yaml`` →
``properties/dataset/<dataset>.yaml`` (packaged) → ``<data_path>/<dataset>/<dataset>.yaml`` (written
by ``python -m recbole_mm.prepare`` next to the data, or by hand) → ``config_file_list`` →
``config_dict`` → command line.

A dataset whose ``multimodal_features`` nobody declares, but whose folder holds
``<modality>_feat.npy`` files (MMRec layout), gets one modality per such file
(:func:`recbole_mm.data.features.discover_feature_files`).

Only protocol keys live in our ``overall.yaml`` so RecBole baselines keep their own defaults.
"""
import os

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_mm import registry

# The default yaml files ship inside the package (package_data in setup.py), so editable and
# wheel installs find them at the same place; the checkout's top-level ``properties`` is a link here.
PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the fix."""


def require_cross_entropy(config, model_name, error_class=ConfigError):
    """Refuse any ``loss_type`` but CE for models trained with cross-entropy over all items."""
    if config["loss_type"] != "CE":
        raise error_class(f"{model_name} trains with cross-entropy over all items; config key 'loss_type' "
                          f"must be CE, got {config['loss_type']!r}. Fix: set loss_type: CE and "
                          f"train_neg_sample_args: ~ (properties/model/{model_name}.yaml).")


def _check_yaml_mapping(path):
    """One ConfigError naming ``path`` when it is not a yaml mapping."""
    with open(path, encoding="utf-8") as handle:
        try:
            content = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid yaml: {err}") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value pairs.")


def dataset_folder_yaml(data_root, dataset):
    """``<data_root>/<dataset>/<dataset>.yaml``: the dataset's own config, next to its data."""
    return os.path.join(data_root, dataset, f"{dataset}.yaml")


class Config(RecBoleConfig):
    """RecBole ``Config`` that knows recbole_mm's models and property files.

    Args:
        parse_argv: read ``--key=value`` pairs from ``sys.argv`` (RecBole's behaviour). Only the
            command-line entry points should set it; library calls, tests and Ray trials must not,
            or foreign flags (pytest's, Ray worker's) become config keys.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, parse_argv=True):
        self._parse_argv = parse_argv
        self._check_config_files(config_file_list)
        super().__init__(model, dataset, config_file_list, config_dict)
        self._check_values()

    # ----------------------------------------------------------------- loading
    @staticmethod
    def _check_config_files(config_file_list):
        for path in config_file_list or []:
            if not os.path.isfile(path):
                raise ConfigError(f"config file not found: {path}. Fix: pass an existing yaml file to --config_files.")
            _check_yaml_mapping(path)

    def _load_cmd_line(self):
        return super()._load_cmd_line() if self._parse_argv else {}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ConfigError("no model given. Fix: pass --model=NAME (e.g. MuSTRec or SASRec).")
        model_class = registry.get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise ConfigError("no dataset given. Fix: pass --dataset=NAME (e.g. ml-100k).")
        return model_class.__name__, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        packaged_dataset_yaml = os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")
        for path in (
            os.path.join(PROPERTIES_DIR, "overall.yaml"),
            os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
            packaged_dataset_yaml,
            None,  # the dataset folder's own yaml: its folder depends on data_path, known only now
        ):
            is_dataset_yaml = path is None or path == packaged_dataset_yaml
            if path is None:
                data_root = self.external_config_dict.get("data_path") or self.internal_config_dict.get("data_path")
                path = dataset_folder_yaml(data_root or "dataset/", dataset)
                if os.path.isfile(path):
                    _check_yaml_mapping(path)
            if not os.path.isfile(path):
                continue
            loaded = self._update_internal_config_dict(path)
            if loaded and is_dataset_yaml:
                # RecBole keys its dataset cache on this (module-level) list.
                self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]
        for key in ("multimodal_features", "mm_feature_path", "mm_modalities"):
            if key not in self.parameters["Dataset"]:
                self.parameters["Dataset"].append(key)

    def _set_default_parameters(self):
        # Keep the user's data root: RecBole rewrites data_path (and pins ml-100k to its package copy).
        data_root = self.final_config_dict.get("data_path") or "dataset/"
        self.final_config_dict["mm_data_root"] = data_root
        super()._set_default_parameters()
        if self.final_config_dict.get("mm_feature_path") is None:
            self.final_config_dict["mm_feature_path"] = os.path.join(data_root, self.dataset)
        if self.final_config_dict.get("multimodal_features") is None:  # MMRec layout laid out by hand
            from recbole_mm.data.features import discover_feature_files

            discovered = discover_feature_files(self.final_config_dict["mm_feature_path"])
            if discovered:
                self.final_config_dict["multimodal_features"] = discovered

    # distributed: gloo on CPU, nccl on GPU, torchrun's environment (recbole_mm/distributed.py)
    def _init_device(self):
        from recbole_mm.distributed import init_device

        if not init_device(self.final_config_dict):
            super()._init_device()

    # -------------------------------------------------------------- validation
    def _check_values(self):
        cfg = self.final_config_dict
        positive_ints = ["epochs", "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH"]
        for key in positive_ints:
            value = cfg.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"config key '{key}' must be a positive integer, got {value!r}.")
        lr = cfg.get("learning_rate")
        if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
            raise ConfigError(f"config key 'learning_rate' must be a positive number, got {lr!r}.")
        for key in ("mask_history_items", "fused_optimizer"):
            flag = cfg.get(key)
            if flag is not None and not isinstance(flag, bool):
                raise ConfigError(f"config key '{key}' must be true or false, got {flag!r}.")
        features = cfg.get("multimodal_features")
        if features is not None and not isinstance(features, dict):
            raise ConfigError(
                "config key 'multimodal_features' must map modality names to files, e.g. "
                "{text: {file: text_feat.npy}}; got " + repr(features)
            )
