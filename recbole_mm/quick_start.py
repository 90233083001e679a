"""Entry points mirroring ``recbole.quick_start``: ``run_recbole_mm``, ``objective_function``,
``load_data_and_model``; plus ``create_dataset`` that picks the multimodal dataset class."""
import logging
import os
import pickle
import sys
from logging import getLogger

import numpy as np
import torch
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation
from recbole.utils import ModelType, get_environment, init_logger, init_seed, set_color

from recbole_mm import registry
from recbole_mm.config import Config
from recbole_mm.data.dataset import MultimodalSequentialDataset
from recbole_mm.trainer import load_checkpoint


class DatasetNotFoundError(FileNotFoundError):
    """The named dataset's files are absent; the message says what to put where."""


def check_dataset_files(config):
    """Raise :class:`DatasetNotFoundError` with instructions when the dataset files are absent."""
    name = config["dataset"]
    if name == "ml-100k":
        return
    data_path = config["data_path"]
    inter = os.path.join(data_path, f"{name}.inter")
    benchmark = config["benchmark_filename"]
    if os.path.isfile(inter) or (
        benchmark and all(os.path.isfile(os.path.join(data_path, f"{name}.{b}.inter")) for b in benchmark)
    ):
        return
    root = config["mm_data_root"]
    if name.lower() in registry.MMREC_DATASETS:
        raise DatasetNotFoundError(
            f"dataset '{name}' is not in {data_path}. It comes in MMRec format: put {name}.inter "
            f"(userID itemID rating timestamp x_label), image_feat.npy and text_feat.npy into one folder SRC, then run "
            f"`python -m recbole_mm.prepare mmrec --src SRC --name {name} --out {root}`, which writes "
            f"{os.path.join(root, name)}/ in recbole_mm's format."
        )
    raise DatasetNotFoundError(
        f"dataset '{name}' not found: expected {inter}. Fix: put RecBole atomic files there (or pass "
        f"--data_path=FOLDER holding {name}/{name}.inter), or convert with `python -m recbole_mm.prepare` "
        "(subcommands mmrec, unisrec). The embedded default dataset is ml-100k."
    )


def create_dataset(config):
    """RecBole's ``create_dataset``, but sequential models (ours and RecBole's baselines alike)
    get :class:`MultimodalSequentialDataset`, so filtering is identical across models."""
    check_dataset_files(config)
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return recbole_create_dataset(config)
    cached = _load_saved_dataset(config)
    if cached is not None:
        return cached
    dataset = MultimodalSequentialDataset(config)
    if config["save_dataset"]:
        dataset.save()
    return dataset


def _load_saved_dataset(config):
    """RecBole's filtered-dataset cache (``save_dataset`` / ``dataset_save_path``), also
    invalidated when a feature file changed on disk (size or mtime) since it was saved."""
    from recbole.utils.argument_list import dataset_arguments

    from recbole_mm.data.features import configured_feature_specs, features_fingerprint

    default_file = os.path.join(config["checkpoint_dir"], f"{config['dataset']}-MultimodalSequentialDataset.pth")
    path = config["dataset_save_path"] or default_file
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        dataset = pickle.load(handle)
    if not isinstance(dataset, MultimodalSequentialDataset):
        return None
    if any(config[arg] != dataset.config[arg] for arg in dataset_arguments + ["seed", "repeatable"]):
        return None
    try:
        specs = configured_feature_specs(config)
        current = features_fingerprint(specs) if specs else "no-features"
    except (OSError, ValueError):
        return None
    if current != dataset._features_fingerprint:
        getLogger().warning(f"feature files changed since {path} was saved: rebuilding the dataset")
        return None
    getLogger().info(f"Load filtered dataset from: [{path}]")
    return dataset


def _build_model(config, train_data):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = registry.get_model(config["model"])
    return model_class(config, train_data._dataset).to(config["device"])


def run_recbole_mm(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                   parse_argv=False, queue=None, record_target_ranks=False):
    """Train and evaluate one model; returns RecBole's result dict
    (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``, ``test_result``) plus
    ``training`` (epochs run, best epoch, whether patience stopped it, every validation result).

    ``record_target_ranks=True`` adds ``test_target_ranks``: for every test row the user and
    target item tokens and the target's rank among all items (after history masking), from
    which per-user metrics follow (``recbole_mm.benchmark.metrics``)."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, parse_argv=parse_argv)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = _build_model(config, train_data)
    logger.info(model)

    trainer = registry.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    if record_target_ranks:
        trainer.target_ranks = []
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "training": trainer.training_summary(),
    }
    if record_target_ranks:
        result["test_target_ranks"] = target_rank_table(trainer.target_ranks, dataset, train_data.dataset)
    if not config["single_spec"]:
        import torch.distributed as dist

        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def training_item_counts(train_dataset):
    """How often each item id occurs in the training split (repeats counted)."""
    if hasattr(train_dataset, "train_sequences"):  # recbole_mm's sequential dataset: full sequences
        sequences = train_dataset.train_sequences()
        items = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
    else:  # RecBole's general datasets: one row per interaction
        items = train_dataset.inter_feat[train_dataset.iid_field].numpy()
    return np.bincount(items.astype(np.int64), minlength=train_dataset.item_num)


def target_rank_table(recorded, dataset, train_dataset):
    """(user ids, item ids, ranks) batches of a trainer → user and item tokens, the target's rank
    and how often the target occurs in the training split, as plain lists."""
    users = torch.cat([batch[0] for batch in recorded]).numpy() if recorded else np.zeros(0, dtype=np.int64)
    items = torch.cat([batch[1] for batch in recorded]).numpy() if recorded else np.zeros(0, dtype=np.int64)
    ranks = torch.cat([batch[2] for batch in recorded]).tolist() if recorded else []
    counts = training_item_counts(train_dataset)
    user_tokens = dataset.field2id_token[dataset.uid_field]
    item_tokens = dataset.field2id_token[dataset.iid_field]
    return {"user": [str(user_tokens[u]) for u in users], "item": [str(item_tokens[i]) for i in items],
            "rank": [int(r) for r in ranks], "train_count": [int(counts[i]) for i in items]}


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """Objective for hyper-parameter search (RecBole's signature; never parses argv)."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list, parse_argv=False)
    init_seed(config["seed"], config["reproducibility"])
    logging.basicConfig(level=logging.ERROR)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = _build_model(config, train_data)
    trainer = registry.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def load_data_and_model(model_file):
    """Load a recbole_mm (or RecBole) checkpoint: (config, model, dataset, train, valid, test)."""
    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    # a checkpoint written by a distributed run reloads in this single process
    config["single_spec"], config["local_rank"], config["world_size"] = True, 0, 1
    if config["device"] is not None and config["device"].type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = _build_model(config, train_data)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
