"""Shared test helpers: tiny on-disk datasets, a tiny-run config, and the shared data paths.

Every RecBole run in tests goes through :func:`tiny_run_config` (1 epoch, no progress bars,
no checkpoints unless asked) and runs with the working directory in a temp folder.
"""
import os

import numpy as np
import pytest
import torch
from recbole.config import Config as _RecBoleConfig

# RecBole aliases np.float & co. only when a Config is built; tests that build Interactions
# or metrics without a Config need them too.
_RecBoleConfig.compatibility_settings(None)
import recbole.model.sequential_recommender  # noqa: E402,F401  (its sine.py turns anomaly mode on)

torch.autograd.set_detect_anomaly(False)
torch.set_num_threads(1)  # tiny models: threads only add overhead

def pytest_configure(config):
    """The packaging marker, and the known, harmless warnings the command-line entry points hide
    (recbole_mm.cli)."""
    from recbole_mm.cli import KNOWN_WARNINGS

    config.addinivalue_line("markers", "packaging: builds the wheel and runs it from a fresh venv "
                            "(CI runs it; deselect locally with -m 'not packaging')")

    for spec in KNOWN_WARNINGS:
        config.addinivalue_line("filterwarnings", ":".join([
            "ignore", spec.get("message", ""), spec["category"].__name__, spec.get("module", "")]))


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCIENTIFIC_DIR = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "datasets", "scientific"))
ML100K_FEATURES = os.path.join(REPO_ROOT, "dataset", "ml-100k")




def tiny_run_config(tmp_path, **overrides):
    """Config dict for a fast, quiet, deterministic RecBole run writing only under tmp_path."""
    config = {
        "epochs": 1,
        "show_progress": False,
        "state": "ERROR",
        "seed": 2020,
        "reproducibility": True,
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_wandb": False,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 1024,
        "eval_batch_size": 4096,
        "mm_feature_path": None,
    }
    config.update(overrides)
    return config


def ml100k_config(tmp_path, **overrides):
    """Tiny-run config on the embedded ml-100k, reusing the repo's generated feature cache."""
    return tiny_run_config(tmp_path, mm_feature_path=ML100K_FEATURES, **overrides)


# A tiny protocol file for command-line runs (run_hyper.py, run_benchmark.py) on write_tiny_dataset's data.
TINY_PROTOCOL = """\
epochs: 1
show_progress: false
state: ERROR
embedding_size: 16
hidden_size: 16
inner_size: 32
n_layers: 1
n_heads: 1
MAX_ITEM_LIST_LENGTH: 10
train_batch_size: 256
save_dataset: false
load_col: {inter: [user_id, item_id, timestamp]}
"""


def shutdown_ray_cluster(cluster):
    """``ray.cluster_utils.Cluster.shutdown`` plus a kill of whatever of its processes outlives it
    (a node's dashboard agent can, when its raylet is killed)."""
    import psutil

    started = psutil.Process().children(recursive=True)
    cluster.shutdown()
    for process in started:
        try:
            process.kill()
        except psutil.Error:
            pass


def write_tiny_dataset(root, name="tiny", n_users=30, n_items=40, seq_len=(5, 9), seed=0,
                       dims=None, shuffle_tokens=True, with_ids=False):
    """Write ``root/name/name.inter`` plus feature files; returns a dict describing them.

    Item tokens are integers 0..n_items-1, written in a shuffled order so RecBole's internal
    ids differ from the tokens. Feature row r of modality m is ``value(m, r)`` below, so
    alignment can be checked exactly.
    """
    rng = np.random.default_rng(seed)
    dims = dims or {"text": 6, "image": 4}
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    order = rng.permutation(n_items) if shuffle_tokens else np.arange(n_items)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    sequences = {}
    for u in range(n_users):
        length = int(rng.integers(seq_len[0], seq_len[1] + 1))
        items = rng.choice(n_items, size=length, replace=False)
        if u == 0:  # make the first-seen items follow the shuffled order
            items = order[:length]
        sequences[u] = items
        for t, item in enumerate(items):
            lines.append(f"{u}\t{item}\t{t}")
    with open(os.path.join(folder, f"{name}.inter"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    declaration = {}
    for m_index, (modality, dim) in enumerate(dims.items()):
        matrix = np.stack([feature_value(m_index, r, dim) for r in range(n_items)]).astype(np.float32)
        entry = {"file": f"{modality}_feat.npy"}
        if with_ids:
            perm = rng.permutation(n_items)
            np.save(os.path.join(folder, f"{modality}_feat.npy"), matrix[perm])
            with open(os.path.join(folder, f"{modality}_ids.txt"), "w") as handle:
                handle.write("\n".join(str(t) for t in perm) + "\n")
            entry["ids"] = f"{modality}_ids.txt"
        else:
            np.save(os.path.join(folder, f"{modality}_feat.npy"), matrix)
        declaration[modality] = entry
    return {"data_path": str(root), "name": name, "folder": folder, "features": declaration,
            "sequences": sequences, "dims": dims}


def feature_value(modality_index, token, dim):
    """Deterministic, distinct feature vector of item token ``token`` (never all zero)."""
    return np.arange(dim, dtype=np.float32) + 100.0 * (token + 1) + 0.5 * modality_index


@pytest.fixture
def tiny_dataset(tmp_path):
    return write_tiny_dataset(str(tmp_path / "data"))


@pytest.fixture
def scientific_dir():
    if not os.path.isfile(os.path.join(SCIENTIFIC_DIR, "scientific.inter")):
        pytest.skip("../shared/datasets/scientific is absent")
    return SCIENTIFIC_DIR


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with cwd = tmp_path (RecBole writes log/ and saved/ into cwd)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_text_model(folder):
    """A random-init BERT (hidden 8) with a 14-word vocabulary, saved as a local model folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    os.makedirs(folder, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "glue", "gel", "super", "gloves",
             "nitrile", "magnet", "red", "blue", "."]
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(words) + "\n")
    BertTokenizer(os.path.join(folder, "vocab.txt"), model_max_length=32).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16, max_position_embeddings=32)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_vision_model(folder):
    """A random-init ViT (16x16 images, hidden 8), saved with its image processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=16)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def tiny_resnet_model(folder):
    """A random-init ResNet (two basic stages, 16-d pooled output), saved with its image processor."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    return folder
