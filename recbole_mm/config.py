"""Config: RecBole's Config with recbole_mm's property files layered in, and checked.

Order, later wins (as in RecBole, plus our four layers):
RecBole internal yaml (overall, model, sample, dataset, quick-start) →
``properties/overall.yaml`` → ``properties/model/<Model>.yaml`` →
``properties/dataset/<dataset>.yaml`` (packaged) → ``properties/dataset/<dataset>/<Model>.yaml``
(packaged settings of one model on one dataset, e.g. CPU-sized widths for the embedded ml-100k demo;
see :func:`dataset_model_yaml`) → ``<data_path>/<dataset>/<dataset>.yaml`` (written by
``python -m recbole_mm.prepare`` next to the data, or by hand) → ``config_file_list`` →
``config_dict`` → command line.

A dataset whose ``multimodal_features`` nobody declares, but whose folder holds
``<modality>_feat.npy`` files (MMRec layout), gets one modality per such file
(:func:`recbole_mm.data.features.discover_feature_files`).

Only protocol keys live in our ``overall.yaml`` so RecBole baselines keep their own defaults.

Every key a user passes (command line, ``config_dict``, yaml files, search spaces) must be known:
a key of RecBole (its property files and argument lists, plus the selected model's yaml), a key of
one of our yaml files, or one of :data:`EXTRA_KNOWN_KEYS`. Anything else is a :class:`ConfigError`
with the closest known key, unless ``allow_unknown_keys: true``; a key in :data:`RENAMED_KEYS`
always is, naming the new key. Values RecBole would only trip over later (a seed that is not an
integer, a ``valid_metric`` the evaluation does not compute, a checkpoint folder that cannot be
written, ``log_wandb`` without wandb) are checked here too.
"""
import difflib
import functools
import glob
import importlib.util
import os
import sys

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_mm import registry
from recbole_mm.checks import require_cross_entropy  # noqa: F401  (re-exported)
from recbole_mm.errors import ConfigError
from recbole_mm.utils import writable_folder

# The default yaml files ship inside the package (package_data in setup.py), so editable and
# wheel installs find them at the same place; the checkout's top-level ``properties`` is a link here.
PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")

# Keys that are known although no yaml file declares them.
EXTRA_KNOWN_KEYS = frozenset({
    "model", "dataset",
    # RecBole's multi-process keys (set by recbole_mm.launcher, or by hand for several machines)
    "local_rank", "world_size", "nproc", "ip", "port", "offset",
    # recbole_mm.distributed: torchrun's rendezvous
    "dist_init_method",
    # read by RecBole 1.2.1 code outside its yaml files: file encoding, data transforms, trainers of
    # other model families (tests/test_config_keys.py checks this list against RecBole's source)
    "encoding", "MASK_INDEX", "MASK_ITEM_SEQ", "mask_ratio", "ft_ratio", "CROP_ITEM_SEQ", "CROP_ITEM_SEQ_LEN",
    "REORDER_ITEM_SEQ", "INVERSE_ITEM_SEQ", "POS_ITEMS", "NEG_ITEMS", "eta", "beta", "token_num_threshold",
    "tail_ratio", "convert_token_to_onehot", "valid_neg_sample_args", "test_neg_sample_args", "reg_weight",
    "pretrain_epochs", "save_step", "train_rec_step", "train_kg_step", "kge_interval", "warm_up_step", "m_step",
    "n_enc_epochs", "n_dec_epochs", "lgb_params", "lgb_num_boost_round", "xgb_params", "xgb_model",
    "xgb_num_boost_round", "xgb_early_stopping_rounds", "xgb_verbose_eval", "xgb_silent", "xgb_nthread",
    # accepted for every model so one protocol file serves RecBole baselines too (our models read
    # embedding_size and check that hidden_size, if given, agrees)
    "hidden_size",
})

# Flags of our command-line entry points that RecBole's argv parsing must not take as config keys.
RUNNER_FLAGS = frozenset({"config_files", "nproc"})

_RECBOLE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules[RecBoleConfig.__module__].__file__)))


# One config vocabulary across the models: old key -> the key that replaced it. Setting an old
# key anywhere (yaml file, config_dict, command line) is a ConfigError naming the new one.
RENAMED_KEYS = {
    "mm_modalities": "modalities",    # dataset loader
    "mmsr_modalities": "modalities",  # MMSR
    "modality": "modalities",         # IDAgnosticMMSR: text / image / both -> [text] / [image] / [text, image]
}
# Models whose width is ``embedding_size`` alone; ``hidden_size`` is accepted for them only when
# it equals ``embedding_size`` (one protocol file can then serve RecBole's baselines too).
EMBEDDING_SIZE_MODELS = ("MuSTRec", "MMSR", "MDSRec", "IDAgnosticMMSR", "FeatureSASRec")


def config_yaml_files():
    """Our yaml files that hold config keys: overall, the main job, model and dataset defaults,
    and the benchmark protocols (``properties/benchmark/*protocol*.yaml``; the grid and claims
    files beside them describe benchmarks, not configs)."""
    patterns = ("overall.yaml", "default_job.yaml", os.path.join("model", "*.yaml"),
                os.path.join("dataset", "*.yaml"), os.path.join("dataset", "*", "*.yaml"),
                os.path.join("benchmark", "*protocol*.yaml"))
    return sorted(path for pattern in patterns for path in glob.glob(os.path.join(PROPERTIES_DIR, pattern)))


def _yaml_keys(path):
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle)
    return set(content) if isinstance(content, dict) else set()


@functools.lru_cache(maxsize=None)
def _shared_known_keys():
    from recbole.utils import argument_list

    keys = set(EXTRA_KNOWN_KEYS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, name))
    recbole_props = os.path.join(_RECBOLE_DIR, "properties")
    files = [os.path.join(recbole_props, "overall.yaml"), os.path.join(recbole_props, "dataset", "sample.yaml"),
             os.path.join(recbole_props, "dataset", "ml-100k.yaml")]
    files += glob.glob(os.path.join(recbole_props, "quick_start_config", "*.yaml"))
    files += config_yaml_files()
    for path in files:
        keys |= _yaml_keys(path)
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def known_keys(model_name=None):
    """Every config key a run of ``model_name`` may be given (see the module docstring)."""
    keys = set(_shared_known_keys())
    if model_name:
        path = os.path.join(_RECBOLE_DIR, "properties", "model", f"{model_name}.yaml")
        if os.path.isfile(path):
            keys |= _yaml_keys(path)
    return frozenset(keys)


def check_keys(keys, model_name=None, where="", allow_unknown=False):
    """Raise :class:`ConfigError` for a renamed key, or (unless ``allow_unknown``) an unknown one,
    naming ``where`` it was found and the closest known key."""
    known = known_keys(model_name)
    place = f" ({where})" if where else ""
    for key in keys:
        if key in RENAMED_KEYS:
            raise ConfigError(f"config key '{key}' was renamed to '{RENAMED_KEYS[key]}'{place}. "
                              f"Fix: write {RENAMED_KEYS[key]} instead.")
        if allow_unknown or key in known:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown config key '{key}'{place}.{hint} Fix: correct the name, or set "
                          "allow_unknown_keys: true to pass extra keys on purpose.")



def _check_yaml_mapping(path):
    """One ConfigError naming ``path`` when it is not a yaml mapping."""
    with open(path, encoding="utf-8") as handle:
        try:
            content = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid yaml: {err}") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value pairs.")


def dataset_model_yaml(dataset, model):
    """``properties/dataset/<dataset>/<Model>.yaml``: packaged settings of ``model`` on ``dataset``
    only, loaded right after the dataset's yaml (so the dataset folder's yaml, config files,
    config_dict and the command line still override them). It holds what a model needs to differ
    on one dataset, e.g. the CPU-sized widths of the ml-100k demo, while the model's yaml keeps the
    paper's values for every other dataset."""
    return os.path.join(PROPERTIES_DIR, "dataset", dataset, f"{model}.yaml")


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
        self._keys_by_file = {}
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

    def _load_config_files(self, file_list):
        merged = {}
        for path in file_list or []:
            loaded = super()._load_config_files([path])
            self._keys_by_file[path] = list(loaded)
            merged.update(loaded)
        return merged

    def _load_cmd_line(self):
        """``--key=value`` pairs of ``sys.argv`` (RecBole's parsing, but a value may hold '=' and the
        same key given twice with different values is a :class:`ConfigError`, not a SyntaxError).
        Other arguments are left to the entry point's own parser."""
        if not self._parse_argv or "ipykernel_launcher" in sys.argv[0]:
            return {}
        given = {}
        for arg in sys.argv[1:]:
            if not arg.startswith("--") or "=" not in arg:
                continue
            name, value = arg[2:].split("=", 1)
            if name in RUNNER_FLAGS:
                continue
            if name in given and given[name] != value:
                raise ConfigError(f"--{name} is given twice with different values ({given[name]!r} and "
                                  f"{value!r}). Fix: keep one of them.")
            given[name] = value
        return self._convert_config_dict(given)

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

    def _dataset_model_defaults(self):
        """``dataset_model_defaults`` as the user gave it (files, dict or command line); default true."""
        value = self.external_config_dict.get("dataset_model_defaults", True)
        if isinstance(value, str):
            value = value.strip().lower() not in ("false", "0", "no")
        return bool(value)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        packaged_dataset_yaml = os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")
        for path in (
            os.path.join(PROPERTIES_DIR, "overall.yaml"),
            os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
            packaged_dataset_yaml,
            dataset_model_yaml(dataset, model) if self._dataset_model_defaults() else False,
            None,  # the dataset folder's own yaml: its folder depends on data_path, known only now
        ):
            if path is False:
                continue
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
        for key in ("multimodal_features", "mm_feature_path", "modalities"):
            if key not in self.parameters["Dataset"]:
                self.parameters["Dataset"].append(key)

    def _set_default_parameters(self):
        self._check_user_keys()
        self._check_before_recbole()
        # Keep the user's data root: RecBole rewrites data_path (and pins ml-100k to its package copy).
        data_root = self.final_config_dict.get("data_path") or "dataset/"
        self.final_config_dict["mm_data_root"] = data_root
        try:
            super()._set_default_parameters()  # RecBole's checks of metrics, topk, eval_args, losses
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as err:
            raise ConfigError(f"{str(err).rstrip('. ')}. Fix: correct that config value.") from None
        if self.final_config_dict.get("mm_feature_path") is None:
            self.final_config_dict["mm_feature_path"] = os.path.join(data_root, self.dataset)
        self._check_metrics()
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
    def check_keys(self, keys, where=""):
        """:func:`check_keys` for this run's model (e.g. the names of a search space)."""
        check_keys(keys, self.model, where, allow_unknown=self._allow_unknown_keys())

    def _allow_unknown_keys(self):
        return self.external_config_dict.get("allow_unknown_keys") is True

    def _check_user_keys(self):
        allow = self._allow_unknown_keys()
        for path, keys in self._keys_by_file.items():
            check_keys(keys, self.model, path, allow)
        check_keys(self.variable_config_dict, self.model, "config_dict", allow)
        check_keys(self.cmd_config_dict, self.model, "command line", allow)

    def _check_before_recbole(self):
        """Values RecBole would fail on with a traceback, or only once training has started."""
        cfg = self.final_config_dict
        seed = cfg.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"config key 'seed' must be an integer, got {seed!r}. Fix: e.g. --seed=2020.")
        for key in ("metrics", "topk"):
            if cfg.get(key) is None:
                raise ConfigError(f"config key '{key}' is empty. Fix: e.g. metrics: [Hit, NDCG], topk: [10, 20].")
        valid_metric = cfg.get("valid_metric")
        if not isinstance(valid_metric, str) or not valid_metric.split("@")[0]:
            raise ConfigError(f"config key 'valid_metric' must be a metric name such as NDCG@20, got {valid_metric!r}.")
        if cfg.get("log_wandb") is True and importlib.util.find_spec("wandb") is None:
            raise ConfigError("log_wandb is true but wandb is not installed. Fix: pip install "
                              "'recbole_mm[wandb]' (or wandb), or set log_wandb: false.")
        for key in ("allow_unknown_keys", "save_last_state"):
            flag = cfg.get(key)
            if flag is not None and not isinstance(flag, bool):
                raise ConfigError(f"config key '{key}' must be true or false, got {flag!r}.")

    def _check_metrics(self):
        """RecBole computes only ``metrics`` at ``topk``; a ``valid_metric`` outside them fails after
        the first training epoch (KeyError)."""
        cfg = self.final_config_dict
        valid_metric = cfg["valid_metric"]
        name, _, cut = valid_metric.partition("@")
        metrics = [str(m).lower() for m in cfg["metrics"]]
        if name.lower() not in metrics:
            raise ConfigError(f"valid_metric {valid_metric} is not computed: config key 'metrics' is {cfg['metrics']}. "
                              f"Fix: add {name} to metrics or choose valid_metric among them.")
        if cut:
            if not cut.isdigit():
                raise ConfigError(f"valid_metric {valid_metric}: the cut-off after '@' must be an integer, e.g. NDCG@20.")
            if int(cut) not in cfg["topk"]:
                raise ConfigError(f"valid_metric {valid_metric} is not computed: config key 'topk' is {cfg['topk']}. "
                                  f"Fix: add {cut} to topk or choose valid_metric at one of {cfg['topk']}.")

    def _check_checkpoint_dir(self):
        """The trainer creates ``checkpoint_dir`` and writes there only at the end of the first
        evaluated epoch; check now (without creating anything) that it can."""
        folder = os.path.abspath(self.final_config_dict.get("checkpoint_dir") or "saved")
        if not writable_folder(folder):
            raise ConfigError(f"config key 'checkpoint_dir': cannot create or write to {folder}. "
                              "Fix: --checkpoint_dir=A_WRITABLE_FOLDER.")

    def _check_values(self):
        self._check_checkpoint_dir()
        cfg = self.final_config_dict
        self._check_vocabulary(cfg)
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

    def _check_vocabulary(self, cfg):
        for old, new in RENAMED_KEYS.items():
            if old in cfg:
                raise ConfigError(f"config key '{old}' was renamed to '{new}'. Fix: write {new}: ... instead "
                                  f"(e.g. {new}: [text] or {new}: [text, image]; ~ = every modality of the dataset).")
        hidden, width = cfg.get("hidden_size"), cfg.get("embedding_size")
        if self.model in EMBEDDING_SIZE_MODELS and hidden is not None and hidden != width:
            raise ConfigError(f"{self.model} reads its width from 'embedding_size' ({width!r}), but 'hidden_size' is "
                              f"set to {hidden!r}. Fix: set embedding_size: {hidden} and drop hidden_size "
                              "(or give both the same value).")
