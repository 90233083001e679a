"""Time MMSR training epochs (and full-sort evaluation) through RecBole's trainer.

    python benchmarks/bench_mmsr.py --data_path DATA --dataset scientific --epochs 2
    # SCRATCH: any scratch folder
    python benchmarks/bench_mmsr.py --data_path SCRATCH/sci2 --dataset scientific2 \
        --modalities image text --epochs 2 --export SCRATCH/mmsr_official/data

``DATA`` is the folder holding ``scientific/`` (docs/datasets.md); ``scientific2`` is that set with
a second modality added (docs/benchmarks/mmsr.md says how it was made).

``--export DIR`` also writes the same training/test rows and the same modality codes in the
official code's pickle format (``train.pkl``, ``test.pkl``: [sequences, image code lists,
text code lists, targets]; ``codes.pkl``: centres and item->code lists, code ids offset by
the item count as the official embedding table expects), so the official implementation can
be timed on identical data (see docs/benchmarks/mmsr.md).
"""
import argparse
import os
import pickle
import sys
import time

import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from common import add_data_args, data_overrides, run_entry_point, scratch_dir  # first: this checkout on sys.path
from recbole_mm import registry
from recbole_mm.config import Config
from recbole_mm.quick_start import create_dataset


def export_official(model, dataset_split, path, n_codes):
    """Rows of one split as [sequences, image codes per position, text codes per position, targets]."""
    inter = dataset_split.inter_feat
    seqs, lens, targets = inter["item_id_list"], inter["item_length"], inter["item_id"]
    tables = [model.eval_item_codes_0, model.eval_item_codes_1]
    n_items = model.n_items
    rows = [[], [], [], []]
    for seq, length, target in zip(seqs.tolist(), lens.tolist(), targets.tolist()):
        items = seq[:length]
        rows[0].append(items)
        for m, table in enumerate(tables):
            offset = n_items + m * n_codes
            rows[1 + m].append([[offset + c for c in table[i].tolist() if c >= 0] for i in items])
        rows[3].append(target)
    with open(path, "wb") as handle:
        pickle.dump(rows, handle)


def export_official_folder(model, train_split, test_split, folder, n_codes):
    """``train.pkl``, ``test.pkl`` (rows of the two splits) and ``codes.pkl`` (centres, item->code
    lists, item count) in ``folder``, as the official code reads them."""
    os.makedirs(folder, exist_ok=True)
    export_official(model, train_split, os.path.join(folder, "train.pkl"), n_codes)
    export_official(model, test_split, os.path.join(folder, "test.pkl"), n_codes)
    codes = {"centres": [t.weight.detach().numpy() for t in model.code_embeddings],
             "item_codes": [(model.eval_item_codes_0.clamp(min=0) + model.n_items).tolist(),
                            (model.eval_item_codes_1.clamp(min=0) + model.n_items + n_codes).tolist()],
             "n_items": model.n_items}
    with open(os.path.join(folder, "codes.pkl"), "wb") as handle:
        pickle.dump(codes, handle)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, dataset="scientific")
    parser.add_argument("--modalities", nargs="+", default=["text"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--max_len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="sparse", choices=["sparse", "dense"])
    parser.add_argument("--export", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features = {m: {"file": f"{m}_feat.npy"} for m in args.modalities}
    config = Config(model="MMSR", dataset=args.dataset, parse_argv=False, config_dict=dict(
        **data_overrides(args), multimodal_features=features,
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
        train_batch_size=args.batch, eval_batch_size=args.batch, embedding_size=args.dim,
        MAX_ITEM_LIST_LENGTH=args.max_len, epochs=args.epochs, show_progress=False, state="WARNING",
        checkpoint_dir=scratch_dir("bench_mmsr_saved"), graph_cache_dir=scratch_dir("bench_mmsr_cache"),
        graph_backend=args.backend))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    start = time.time()
    model = registry.get_model("MMSR")(config, train_data._dataset).to(config["device"])
    print(f"model + codes: {time.time() - start:.1f}s; training rows {len(train_data.dataset)}")
    if args.export:
        export_official_folder(model, train_data.dataset, test_data.dataset, args.export, config["code_num"])
    trainer = registry.get_trainer(config["MODEL_TYPE"], "MMSR")(config, model)
    for epoch in range(args.epochs):
        start = time.time()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        train_time = time.time() - start
        start = time.time()
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        print(f"epoch {epoch}: train {train_time:.1f}s loss {float(loss):.2f}; "
              f"test eval {time.time() - start:.1f}s {dict(result)}")


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
