"""MMSR against the official code: same rows, same codes, same protocol and settings (docs/results/mmsr_parity.md).

    # SCRATCH: any scratch folder; DATA: the folder holding scientific/ (docs/datasets.md)
    # 1. scientific with a second (image-like) modality: text features x a fixed random 384 x 512 matrix
    python benchmarks/bench_mmsr_vs_official.py data --data_path DATA --out SCRATCH/sci2
    # 2. ours, one seed per call: MMSR's paper protocol (80/20 per user, every held-out interaction a
    #    target, history not masked) at the official defaults; --export writes the same rows and codes
    #    in the official pickle format (bench_mmsr.py's exporter)
    python benchmarks/bench_mmsr_vs_official.py ours --data_path SCRATCH/sci2 --epochs 30 --seed 2020 \
        --export SCRATCH/mmsr_official/data --out benchmarks/results/mmsr_parity.jsonl   # then seeds 2021, 2022
    # 3. the official code (a checkout of HoldenHu/MMSR, files unmodified; the CPU patches below are
    #    applied in this process) on the exported data, its own train_and_test once per epoch
    python benchmarks/bench_mmsr_vs_official.py official --official_dir OFFICIAL \
        --export SCRATCH/mmsr_official/data --epochs 30 --seed 2020 --out benchmarks/results/mmsr_parity.jsonl
    # 4. the table
    python benchmarks/bench_mmsr_vs_official.py compare --results benchmarks/results/mmsr_parity.jsonl \
        --out docs/results/mmsr_parity.md

One JSON line per epoch is appended to ``--out`` as soon as the epoch ends (a killed run keeps its
finished epochs): code, seed, epoch, training loss as each code reports it (ours: RecBole's sum over
the epoch's batches; official: the mean per batch), epoch time, HR/MRR@5/20 on the held-out 20 %.
Both codes are read the way the official code reads itself: each metric's best epoch on the held-out
part (there is no validation part in this protocol), so the comparison is of two implementations,
not an honest estimate of either (docs/results/mmsr_paper.md has the honest one).

CPU patches for the official code (none edits its files): ``Tensor.cuda`` and ``Module.cuda``
become no-ops (it calls ``.cuda()`` unconditionally), a stub ``torch_geometric`` module stands in
for the ``GATConv`` import that the default aggregator never uses, and the loaders use
``num_workers=0``. The official ``model.train_and_test`` (training pass, scheduler step, test pass
and metrics) runs unchanged; its NDCG is not compared (bug B7 in docs/models/MMSR.md).
"""
import argparse
import json
import logging
import os
import pickle
import random
import shutil
import statistics
import sys
import time
import types

import numpy as np

from common import add_data_args, append_record, data_overrides, run_entry_point, scratch_dir  # first: this checkout
from recbole_mm.errors import DatasetError, MissingFileError

# The official defaults (config/VLGraph::4::beauty.yaml): both codes use these.
OFFICIAL = {"embedding_size": 128, "batch_size": 128, "lr": 0.002, "dropout_local": 0.4, "dropout_atten": 0.2,
            "n_layer": 1, "max_len": 50, "code_num": 20, "code_k": 1}
METRICS = ("hit@5", "mrr@5", "hit@20", "mrr@20")


def metric_name(metric):
    """``hit@20`` -> ``HR@20``, as the tables name the metrics."""
    return metric.upper().replace("HIT", "HR")


def stamp(args):
    """Date, threads and 1-minute load average of the machine when an epoch ended."""
    return {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "threads": args.threads,
            "load": round(os.getloadavg()[0], 1)}


def make_data(args):
    """scientific2 = scientific + image_feat.npy (text features x a seeded 384 x 512 Gaussian matrix)."""
    src = os.path.join(data_overrides(args, "scientific")["data_path"], "scientific")
    out = os.path.join(args.out, "scientific2")
    os.makedirs(out, exist_ok=True)
    shutil.copyfile(os.path.join(src, "scientific.inter"), os.path.join(out, "scientific2.inter"))
    text = np.load(os.path.join(src, "text_feat.npy")).astype(np.float32)
    projection = np.random.default_rng(0).standard_normal((text.shape[1], 512)).astype(np.float32)
    np.save(os.path.join(out, "text_feat.npy"), text)
    np.save(os.path.join(out, "image_feat.npy"), text @ projection / np.sqrt(text.shape[1]))
    print(f"wrote {out}: scientific2.inter, text_feat.npy {text.shape}, image_feat.npy {(text.shape[0], 512)}")


def run_ours(args):
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from bench_mmsr import export_official_folder
    from recbole_mm import registry
    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    torch.set_num_threads(args.threads)
    config = Config(model="MMSR", dataset=args.dataset, parse_argv=False, config_dict=dict(
        **data_overrides(args), multimodal_features={"image": {"file": "image_feat.npy"}, "text": {"file": "text_feat.npy"}},
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
        eval_args={"split": {"RS": [0.8, 0.2, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"},
        mask_history_items=False, metrics=["Hit", "MRR"], topk=[5, 20], valid_metric="MRR@20",
        train_batch_size=OFFICIAL["batch_size"], eval_batch_size=OFFICIAL["batch_size"],
        embedding_size=OFFICIAL["embedding_size"], learning_rate=OFFICIAL["lr"],
        hidden_dropout_prob=OFFICIAL["dropout_local"], attn_dropout_prob=OFFICIAL["dropout_atten"],
        n_layers=OFFICIAL["n_layer"], MAX_ITEM_LIST_LENGTH=OFFICIAL["max_len"], code_num=OFFICIAL["code_num"],
        code_k=OFFICIAL["code_k"], epochs=args.epochs, seed=args.seed, show_progress=False, state="WARNING",
        checkpoint_dir=scratch_dir("bench_mmsr_parity_saved"), graph_cache_dir=scratch_dir("bench_mmsr_parity_cache")))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, heldout_data, _ = data_preparation(config, dataset)
    model = registry.get_model("MMSR")(config, train_data._dataset).to(config["device"])
    if args.export:
        export_official_folder(model, train_data.dataset, heldout_data.dataset, args.export, config["code_num"])
        print(f"exported {len(train_data.dataset)} training and {len(heldout_data.dataset)} held-out rows to {args.export}")
    trainer = registry.get_trainer(config["MODEL_TYPE"], "MMSR")(config, model)
    for epoch in range(args.epochs):
        start = time.time()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        train_s = time.time() - start
        result = trainer.evaluate(heldout_data, load_best_model=False, show_progress=False)
        append_record(args.out, {**stamp(args), "code": "recbole_mm", "seed": args.seed, "epoch": epoch, "loss": round(float(loss), 3),
                                 "train_s": round(train_s, 1), "epoch_s": round(time.time() - start, 1),
                                 **{m: round(float(result[m]), 4) for m in METRICS}})


def load_official(official_dir):
    """Import the official modules from ``official_dir`` with the CPU patches of the module docstring."""
    import torch
    from torch import nn

    if not os.path.isfile(os.path.join(official_dir, "model.py")):
        raise MissingFileError(f"--official_dir {official_dir}: no model.py; pass a checkout of HoldenHu/MMSR")
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    stub = types.ModuleType("torch_geometric")
    stub.nn = types.ModuleType("torch_geometric.nn")
    stub.nn.GATConv = None
    sys.modules.setdefault("torch_geometric", stub)
    sys.modules.setdefault("torch_geometric.nn", stub.nn)
    sys.path.insert(0, os.path.abspath(official_dir))
    import data_utils
    import model as official_model
    official_model.tqdm = lambda iterable, *a, **k: iterable  # no progress bars in the log
    return data_utils, official_model


def run_official(args):
    import torch

    torch.set_num_threads(args.threads)
    loaded = []
    for name in ("train.pkl", "test.pkl", "codes.pkl"):
        if not os.path.isfile(os.path.join(args.export, name)):
            raise MissingFileError(f"--export {args.export}: no {name}; write the folder first with "
                                   "`bench_mmsr_vs_official.py ours --export FOLDER`")
        with open(os.path.join(args.export, name), "rb") as handle:
            loaded.append(pickle.load(handle))
    train_rows, test_rows, codes = loaded
    data_utils, official_model = load_official(args.official_dir)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    name = "exported"
    config = {"dataset": name, "num_node": {name: data_utils.get_item_num(train_rows, test_rows)},
              "cluster_num": {name: OFFICIAL["code_num"]}, "batch_size": OFFICIAL["batch_size"],
              "embedding_size": OFFICIAL["embedding_size"], "lr": OFFICIAL["lr"], "l2": 0.0,
              "lr_dc": 0.0001, "lr_dc_step": 40, "dropout_local": OFFICIAL["dropout_local"],
              "dropout_atten": OFFICIAL["dropout_atten"], "n_layer": OFFICIAL["n_layer"],
              "aggregator": "hete_attention", "alpha": 0.1, "max_relid": 10, "fusion_type": "asy_mask",
              "auxiliary_info": ["pos", "node_type"], "seq_pooling": "last", "modality_prediction": False,
              "noise_type": [], "noise_level": 0}
    if config["num_node"][name] != codes["n_items"]:
        raise DatasetError(f"item count {config['num_node'][name]} of the rows differs from the codes' {codes['n_items']}")
    train = data_utils.Data(config, train_rows, OFFICIAL["code_k"])
    test = data_utils.Data(config, test_rows, OFFICIAL["code_k"])
    model = official_model.VLGraph(config, codes["centres"][0], codes["centres"][1],
                                   codes["item_codes"][0], codes["item_codes"][1])
    train_loader = torch.utils.data.DataLoader(train, num_workers=0, batch_size=OFFICIAL["batch_size"], shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, num_workers=0, batch_size=OFFICIAL["batch_size"], shuffle=False)
    logger = logging.getLogger("official_mmsr")
    losses = []

    class LossLine(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "Loss:" in message:
                losses.append(float(message.split()[-1]))

    logger.addHandler(LossLine())
    logger.setLevel(logging.INFO)
    print(f"official: {len(train)} training rows, {len(test)} held-out rows, graphs padded to {train.max_len} "
          f"/ {test.max_len} nodes", flush=True)
    for epoch in range(args.epochs):
        start = time.time()
        result = official_model.train_and_test(model, train_loader, test_loader, [5, 20], logger)
        (hit5, mrr5, _), (hit20, mrr20, _) = result  # percentages; NDCG not compared (B7)
        append_record(args.out, {**stamp(args), "code": "official", "seed": args.seed, "epoch": epoch,
                                 "loss": round(losses[-1] / len(train_loader), 3) if losses else None,
                                 "epoch_s": round(time.time() - start, 1), "hit@5": round(hit5 / 100, 4),
                                 "mrr@5": round(mrr5 / 100, 4), "hit@20": round(hit20 / 100, 4),
                                 "mrr@20": round(mrr20 / 100, 4)})


PAGE_HEAD = """# MMSR against its official code

*Generated by `python benchmarks/bench_mmsr_vs_official.py compare` from `{source}`; do not edit by hand.*

Does recbole_mm's MMSR learn as well as the authors' implementation when both see the very same
data? Both codes ran on the same training rows and held-out rows, with the same modality codes,
under the official protocol and the official default settings:

- **Data**: the `scientific` set with a second modality (its MiniLM text features times a fixed
  random 384 x 512 Gaussian matrix, standing in for image features), so the graph has item,
  image-code and text-code nodes as in the paper; 20 codes per modality, one per item, fitted
  once by our code and exported to the official pickle format with the rows.
- **Protocol** (the official one): each user's time-ordered sequence cut 80/20; every interaction
  of the last 20 % is a target predicted from its whole prefix (last 50 items); full ranking over
  all items; history not masked; HR and MRR at 5 and 20. There is no validation part: as the
  official code does, each metric is read at its best epoch on the held-out part, for both codes.
  This compares implementations; it overstates both (docs/results/mmsr_paper.md has the honest
  protocol).
- **Settings** (official defaults): d 128, batch 128, Adam lr 0.002, no weight decay, dropout 0.4
  on node states and 0.2 on attention, one layer, sequence length 50; ours otherwise at its
  documented defaults (the paper's equations where the official code departs from them,
  docs/models/MMSR.md).
- **Runs**: the first {epochs} epochs of every run are read (the count of the shortest run; an
  official run is stopped once its own early-stopping rule, below, has fired); {n_official} official
  run(s), {n_ours} of ours, each a seed; 1 torch thread per process; the official code unmodified
  but for the CPU patches listed in `benchmarks/bench_mmsr_vs_official.py`.
"""


def official_stop_epoch(run, patience=8):
    """The epoch after which the official main loop stops: an epoch 'improves' when any metric beats
    its best so far; the bad-epoch counter grows only on a non-improving epoch that follows another,
    and the loop breaks when it reaches ``patience``. None if the run never stops. (The official
    rule also counts NDCG, which is not recorded here.)"""
    best = {m: 0.0 for m in METRICS}
    bad, last_flag = 0, 0
    for row in run:
        flag = 0
        for m in METRICS:
            if row[m] > best[m]:
                best[m], flag = row[m], 1
        bad = bad + 1 if (last_flag == 0 and flag == 0) else 0
        last_flag = flag
        if bad >= patience:
            return row["epoch"]
    return None


def compare(args):
    rows = [json.loads(line) for line in open(args.results, encoding="utf-8") if line.strip()]
    runs = {}
    for row in rows:
        runs.setdefault((row["code"], row["seed"]), []).append(row)
    epochs = min(len(v) for v in runs.values())
    names = " | ".join(metric_name(m) for m in METRICS)
    out = [PAGE_HEAD.format(source=os.path.relpath(args.results, os.path.dirname(args.out)) if args.out else args.results,
                            epochs=epochs, n_official=sum(c == "official" for c, _ in runs),
                            n_ours=sum(c == "recbole_mm" for c, _ in runs)),
           f"## Best epoch of each metric over epochs 0-{epochs - 1} (held-out 20 %)", "",
           f"| code | seed | {names} | best MRR@20 epoch | wall s per epoch |", "|---|---|" + "---|" * (len(METRICS) + 2)]
    runs = {key: sorted(run, key=lambda r: r["epoch"])[:epochs] for key, run in runs.items()}
    best = {}
    for (code, seed), run in sorted(runs.items()):
        best[(code, seed)] = {m: max(r[m] for r in run) for m in METRICS}
        top = max(run, key=lambda r: r["mrr@20"])["epoch"]
        out.append(f"| {code} | {seed} | " + " | ".join(f"{best[(code, seed)][m]:.4f}" for m in METRICS)
                   + f" | {top} | {statistics.mean(r['epoch_s'] for r in run):.0f} |")
    per_code = {code: [b for (c, _), b in best.items() if c == code] for code in sorted({c for c, _ in runs})}
    for code, values in per_code.items():
        if len(values) > 1:
            out.append(f"| {code} | mean ± sd | " + " | ".join(
                f"{statistics.mean(v[m] for v in values):.4f} ± {statistics.stdev(v[m] for v in values):.4f}"
                for m in METRICS) + " | | |")
    ours, official = per_code.get("recbole_mm", []), per_code.get("official", [])
    if len(ours) > 1 and official:
        out += ["", "Official against ours, per metric: the official mean minus ours, in units of our seed sd "
                "(|z| <= 2: within our seed noise; z < -2: ours better; z > 2: official better)."]
        verdicts = []
        for m in METRICS:
            mean, sd = statistics.mean(v[m] for v in ours), statistics.stdev(v[m] for v in ours)
            name = metric_name(m)
            if sd == 0:
                verdicts.append(f"{name}: our seeds agree exactly, no z")
                continue
            z = (statistics.mean(v[m] for v in official) - mean) / sd
            label = "within seed noise" if abs(z) <= 2 else ("ours better" if z < 0 else "official better")
            verdicts.append(f"{name} z = {z:+.1f} ({label})")
        out += ["", "- " + "; ".join(verdicts) + "."]
    loads = [r.get("load", 0) for run in runs.values() for r in run]
    out += ["", f"- Wall seconds per epoch are shown for orientation only: these runs shared the 2 cores with "
            f"other jobs unevenly (1-minute load average {min(loads):.1f}-{max(loads):.1f}, 1 torch thread each). "
            "The speed comparison, both codes at once under equal conditions, is docs/benchmarks/mmsr.md."]
    out += ["", "The official stopping rule (patience 8, any of these metrics improving), applied to each run's "
            "epochs: " + "; ".join(
                f"{code} seed {seed} " + (f"stops after epoch {stop}" if stop is not None else "has not stopped")
                for (code, seed), stop in sorted((key, official_stop_epoch(run)) for key, run in runs.items())) + "."]
    out += ["", f"## MRR@20 on the held-out part, epoch by epoch", ""]
    for (code, seed), run in sorted(runs.items()):
        out.append(f"- {code}, seed {seed}: " + ", ".join(f"{r['mrr@20']:.4f}" for r in run))
    dates = sorted(r["date"] for r in rows if "date" in r)
    if dates:
        out += ["", f"Measured {dates[0]} to {dates[-1]} (UTC) on the machine described in docs/benchmarks.md."]
    text = "\n".join(out) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {args.out}")
    else:
        print(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write scientific2 (scientific + a projected second modality)")
    data.add_argument("--data_path", default=None, help="folder holding scientific/")
    data.add_argument("--out", required=True)
    ours = sub.add_parser("ours", help="train recbole_mm's MMSR under the official protocol, one line per epoch")
    add_data_args(ours, dataset="scientific2")
    ours.add_argument("--export", default=None, help="also write the rows and codes in the official format here")
    for command in (ours, sub.add_parser("official", help="run the official code on exported data")):
        command.add_argument("--epochs", type=int, default=12)
        command.add_argument("--seed", type=int, default=2020)
        command.add_argument("--threads", type=int, default=1)
        command.add_argument("--out", default="mmsr_parity.jsonl")
    official = sub.choices["official"]
    official.add_argument("--official_dir", required=True, help="a checkout of HoldenHu/MMSR")
    official.add_argument("--export", required=True, help="the folder `ours --export` wrote")
    both = sub.add_parser("compare", help="table of both codes' epochs")
    both.add_argument("--results", required=True)
    both.add_argument("--out", default=None, help="write the page here (default: print it)")
    args = parser.parse_args()
    {"data": make_data, "ours": run_ours, "official": run_official, "compare": compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
