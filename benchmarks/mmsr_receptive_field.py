"""How far back does a model look? Replace every input item older than the last ``keep`` with a
random item and measure how much the test scores move.

MMSR's readout is the last item's node after ``n_layers`` rounds of message passing over the
sequence graph; with one layer that node only hears its direct neighbours, so older items can only
matter through shared code nodes. This script trains each configuration briefly on one dataset,
then, on the test users, compares full-sort scores for the true inputs and for inputs whose items
before the last ``keep`` were replaced (same length, same padding): the largest score change,
the share of users whose top-10 list is unchanged, and test NDCG@10 on both inputs.

    python benchmarks/mmsr_receptive_field.py --data_path DATA --dataset scientific \\
        --out benchmarks/results/mmsr_receptive_field.json --markdown docs/results/mmsr_receptive_field.md

Runs: MMSR with 1 layer (the default), 2 layers, 1 invasive layer, and SASRec as a contrast, all
with the leaderboard protocol file, ``--epochs`` epochs, one seed. ``DATA`` is the folder holding
``scientific/`` (docs/datasets.md).
"""
import argparse
import json
import os
import sys
import time

import torch

from common import add_data_args, data_overrides, run_entry_point

RUNS = {
    "MMSR, 1 layer (default)": ("MMSR", {"n_layers": 1}),
    "MMSR, 2 layers": ("MMSR", {"n_layers": 2}),
    "MMSR, 1 layer, invasive": ("MMSR", {"n_layers": 1, "non_invasive": False}),
    "SASRec": ("SASRec", {}),
}


def train(model_name, dataset, config_files, config_dict):
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm import registry
    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    config = Config(model=model_name, dataset=dataset, config_file_list=config_files, config_dict=config_dict,
                    parse_argv=False)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    model = registry.get_model(model_name)(config, train_data._dataset).to(config["device"])
    trainer = registry.get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=False)
    trainer.evaluate(test_data, load_best_model=True)  # loads the best checkpoint into the model
    return config, model, trainer, test_data


@torch.no_grad()
def compare(config, model, trainer, test_data, keep, seed):
    """Scores on the true test inputs vs inputs with items before the last ``keep`` replaced."""
    from recbole.data.interaction import Interaction

    generator = torch.Generator().manual_seed(seed)
    seq_field, len_field = model.ITEM_SEQ, model.ITEM_SEQ_LEN
    max_diff, same_top10, identical, users, hits = 0.0, 0, 0, 0, {"true": [], "replaced": []}
    model.eval()
    if hasattr(model, "on_eval_start"):
        model.on_eval_start()
    for batched in test_data:
        interaction, history_index, positive_u, positive_i = batched
        item_seq, lengths = interaction[seq_field], interaction[len_field]
        replaced = item_seq.clone()
        positions = torch.arange(item_seq.shape[1])[None, :]
        older = positions < (lengths[:, None] - keep)  # left-aligned sequences: the last item sits at length-1
        random_items = torch.randint(1, model.n_items, item_seq.shape, generator=generator)
        replaced[older] = random_items[older]
        scores = {}
        for name, seq in (("true", item_seq), ("replaced", replaced)):
            probe = Interaction({**interaction.interaction, seq_field: seq})
            _, batch_scores, _, _ = trainer._full_sort_batch_eval((probe, history_index, positive_u, positive_i))
            scores[name] = batch_scores.clone()
            target = batch_scores[positive_u, positive_i]
            rank = (batch_scores[positive_u] > target[:, None]).sum(1) + 1
            hits[name].append(torch.where(rank <= 10, 1.0 / torch.log2(rank.float() + 1), torch.zeros(())))
        finite = torch.isfinite(scores["true"])
        change = torch.where(finite, scores["true"] - scores["replaced"], torch.zeros(())).abs().amax(dim=1)
        max_diff = max(max_diff, float(change.max()))
        identical += int((change <= 1e-5).sum())
        same_top10 += int((scores["true"].topk(10).indices == scores["replaced"].topk(10).indices).all(1).sum())
        users += len(item_seq)
    return {"users": users, "max_abs_score_change": max_diff, "share_same_top10": same_top10 / users,
            "share_identical_scores": identical / users,
            "ndcg@10_true": float(torch.cat(hits["true"]).mean()), "ndcg@10_replaced": float(torch.cat(hits["replaced"]).mean())}


def markdown(results, args):
    lines = ["# How far back each model looks (generated)", "",
             f"*Generated by `benchmarks/mmsr_receptive_field.py` on {results['date']}; do not edit by hand.*", "",
             f"Dataset `{args.dataset}`, protocol `{os.path.basename(args.protocol)}`, {args.epochs} training epochs "
             f"(best validation epoch kept), seed {args.seed}. On every test user, the items older than the last "
             f"{args.keep} of the input were replaced by random items; the table compares full-sort scores (history "
             "masking as in the protocol).", "",
             "| model | users with unchanged scores (all items, 1e-5) | users with the same top-10 | max score change | "
             "test NDCG@10, true input | replaced input |",
             "|---|---|---|---|---|---|"]
    for name, row in results["runs"].items():
        lines.append(f"| {name} | {row['share_identical_scores']:.1%} | {row['share_same_top10']:.1%} | "
                     f"{row['max_abs_score_change']:.2e} | "
                     f"{row['ndcg@10_true']:.4f} | {row['ndcg@10_replaced']:.4f} |")
    lines += ["", f"Machine: {results['machine']}; {results['threads']} thread(s); wall {results['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, dataset="scientific")
    parser.add_argument("--protocol", default=None, help="protocol yaml (default: the packaged one)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--keep", type=int, default=2, help="how many of the last items stay (default 2)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/mmsr_receptive_field.json")
    parser.add_argument("--markdown", default=None, help="also write the generated Markdown table here")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help="subset of: " + "; ".join(RUNS))
    args = parser.parse_args(argv)
    data = data_overrides(args)
    torch.set_num_threads(args.threads)
    import tempfile

    from recbole_mm.benchmark.runner import host_facts
    from recbole_mm.config import PROPERTIES_DIR

    protocol = os.path.abspath(args.protocol or os.path.join(PROPERTIES_DIR, "benchmark", "protocol.yaml"))

    facts = host_facts(args.threads)
    start = time.time()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{facts['cpu']}, {facts['cores']} cores",
               "threads": args.threads, "load_before": os.getloadavg()[0], "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.runs:
            model_name, overrides = RUNS[name]
            config_dict = {**data, "epochs": args.epochs, "seed": args.seed,
                           "checkpoint_dir": os.path.join(folder, "saved"), "state": "ERROR", **overrides}
            config, model, trainer, test_data = train(model_name, args.dataset, [protocol], config_dict)
            results["runs"][name] = compare(config, model, trainer, test_data, args.keep, args.seed)
            print(name, json.dumps(results["runs"][name]), flush=True)
    results["wall_s"] = time.time() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
