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
from recbole.utils import EvaluatorType, ModelType, get_environment, init_seed, set_color

from recbole_mm import registry
from recbole_mm.config import Config
from recbole_mm.data.dataset import MultimodalSequentialDataset, dataset_fingerprint, saved_dataset_path
from recbole_mm.distributed import is_main_process, stop_cleanly_when_a_rank_is_lost
from recbole_mm.errors import DatasetError, UserPathError
from recbole_mm.trainer import load_checkpoint
from recbole_mm.utils import SealBroken, SealStale, init_logger, read_sealed


class DatasetNotFoundError(DatasetError, FileNotFoundError):
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
    dataset = _load_saved_dataset(config)
    if dataset is None:
        dataset = MultimodalSequentialDataset(config)
        if config["save_dataset"] and is_main_process(config):  # DDP: one writer
            dataset.save()
    return dataset


def check_ranking_fits(config, dataset):
    """Full ranking keeps the top ``max(topk)`` of the dataset's items (torch.topk fails beyond)."""
    if config["eval_type"] != EvaluatorType.RANKING or "full" not in config["eval_args"]["mode"].values():
        return
    n_items, largest = dataset.item_num - 1, max(config["topk"])
    if largest > n_items:
        raise DatasetError(f"dataset '{config['dataset']}' has {n_items} items after filtering, but config key "
                           f"'topk' asks for the top {largest}. Fix: topk values of at most {n_items}, or a larger "
                           "dataset (check user_inter_num_interval / item_inter_num_interval).")


def _load_saved_dataset(config):
    """RecBole's filtered-dataset cache (``save_dataset`` / ``dataset_save_path``), used only when its
    seal holds: checksum intact and built from the same arguments, atomic files and feature files
    (:func:`recbole_mm.data.dataset.dataset_fingerprint`). Anything else is rebuilt."""
    path = config["dataset_save_path"] or saved_dataset_path(config)
    if not os.path.isfile(path):
        return None
    try:
        dataset = pickle.loads(read_sealed(path, dataset_fingerprint(config)))
    except SealStale:
        getLogger().info(f"saved dataset {path} was built from other data or settings: rebuilding it")
        return None
    except (SealBroken, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        getLogger().warning(f"saved dataset {path} failed its check ({err}): rebuilding it")
        return None
    except (OSError, ValueError) as err:  # feature declaration or files unreadable: the build reports it
        getLogger().info(f"saved dataset {path} not used ({err})")
        return None
    if not isinstance(dataset, MultimodalSequentialDataset):
        return None
    getLogger().info(f"Load filtered dataset from: [{path}]")
    return dataset


def _build_model(config, train_data):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = registry.get_model(config["model"])
    return model_class(config, train_data._dataset).to(config["device"])


def run_recbole_mm(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                   parse_argv=False, queue=None, record_target_ranks=False):
    """Train and evaluate one model; returns RecBole's result dict (``best_valid_score``,
    ``valid_score_bigger``, ``best_valid_result``, ``test_result``) plus ``checkpoint`` (the
    best-epoch checkpoint this run wrote; None with ``saved=False``), ``log_file`` and ``training``
    (epochs run, best epoch, whether patience stopped it, every validation result).

    Config key ``resume`` (``--resume=PATH``) continues a killed run from its last saved epoch.
    ``record_target_ranks=True`` adds ``test_target_ranks``: for every test row the user and
    target item tokens, the target's rank among all items (after history masking) and how often
    the target occurs in training, from which per-user metrics follow (``recbole_mm.benchmark.metrics``).
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, parse_argv=parse_argv)
    init_seed(config["seed"], config["reproducibility"])
    log_file = init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    check_ranking_fits(config, dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = _build_model(config, train_data)
    logger.info(model)

    with stop_cleanly_when_a_rank_is_lost(config):  # DDP: a dead peer is one error line, not a gloo trace
        trainer = registry.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        if config["resume"]:
            trainer.resume_checkpoint(config["resume"])
        checkpoint = getattr(trainer, "saved_model_file", None) if saved else None
        if checkpoint:
            logger.info(f"checkpoint: {checkpoint} (a killed run continues with --resume={checkpoint})")
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
        "checkpoint": checkpoint,
        "log_file": log_file,
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
    check_ranking_fits(config, dataset)
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
    """Load a recbole_mm (or RecBole) checkpoint: (config, model, dataset, train, valid, test).

    Works in a fresh process: the model evaluates, predicts and trains on (build a trainer with
    ``registry.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)``)."""
    if not os.path.isfile(model_file):
        raise UserPathError(f"checkpoint not found: {model_file}. Fix: pass the path a training run printed.")
    try:
        checkpoint = load_checkpoint(model_file)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise UserPathError(f"cannot read checkpoint {model_file} ({type(err).__name__}: {err}). "
                            "Fix: pass a checkpoint written by recbole_mm or RecBole.") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise UserPathError(f"{model_file} is not a model checkpoint (a -last.pth file only serves --resume). "
                            "Fix: pass the checkpoint path the run printed.")
    config = checkpoint["config"]
    # RecBole sets numpy aliases (np.float, ...) its metrics need in Config.__init__, which an
    # unpickled config never ran.
    config.compatibility_settings()
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
