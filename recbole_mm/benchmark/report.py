"""Tables, significance tests and figures from a results file, and the generated results page.

Nothing here is typed by hand: every number comes from the rows of the JSONL results file and
the split tables next to it; the protocol paragraph is read from the grid's protocol files.

Which rows count: for an entry with a search space, the best trial on validation (its seed is the
grid's first) plus the ``final`` rows of the other seeds run with the chosen values; for other
entries, the ``final`` rows. When a cell was run twice, its last row counts.
"""
import math
import os

import numpy as np
import yaml

from recbole_mm.benchmark.grid import MACHINE_KEYS
from recbole_mm.benchmark.metrics import mean_sd, paired_t_p, per_user, wilcoxon_p

METRICS = ("hit@10", "hit@20", "ndcg@10", "ndcg@20", "mrr@20")
LABELS = {"hit": "HR", "ndcg": "NDCG", "mrr": "MRR", "recall": "Recall"}
COLD_THRESHOLD = 10  # IDAgnostic paper: a target seen fewer than 10 times in training is cold


def metric_label(metric):
    name, k = metric.split("@")
    return f"{LABELS.get(name, name)}@{k}"


# ------------------------------------------------------------------ selecting rows
def selected_runs(rows, grid):
    """{(entry, dataset): {"runs": [rows by seed], "params": chosen values, "trials": n}}."""
    latest = {}
    for row in rows:
        if row.get("status") == "ok":
            latest[row["key"]] = row  # the last row of a key wins
    groups = {}
    for row in latest.values():
        groups.setdefault((row["entry"], row["dataset"]), []).append(row)
    selected = {}
    for (entry_name, dataset), members in groups.items():
        entry = grid.entries.get(entry_name)
        if entry is None or dataset not in grid.datasets:
            continue
        trials = [r for r in members if r["role"] == "trial"]
        if entry.search and dataset not in grid.tuned_on:
            expected = len(entry.search_grid())
            if len(trials) < expected:
                continue  # tuning unfinished: no choice yet
            best = max(trials, key=lambda r: r["best_valid_score"])
            best = next(r for r in trials if r["best_valid_score"] == best["best_valid_score"]
                        and r["params"] == _first_best(trials, entry)["params"])
            runs = [best] + [r for r in members if r["role"] == "final" and r["params"] == best["params"]]
            params = best["params"]
        else:
            runs = [r for r in members if r["role"] == "final"]
            params = runs[0]["params"] if runs else {}
        seeds = grid.run_seeds(dataset)
        runs = [r for r in runs if r["seed"] in seeds]
        if entry.result_split == "valid":  # the protocol's selection split is its test part
            runs = [{**r, "test": r["valid"], "ranks": [], "split": None} for r in runs]
        runs.sort(key=lambda r: seeds.index(r["seed"]))
        if runs:
            selected[(entry_name, dataset)] = {"runs": runs, "params": params, "trials": len(trials)}
    return selected


def _first_best(trials, entry):
    """Best trial on validation, the first in grid order on ties (the runner's rule)."""
    order = [p for p in entry.search_grid()]
    ranked = sorted(trials, key=lambda r: (-r["best_valid_score"], order.index(r["params"])
                                           if r["params"] in order else len(order)))
    return ranked[0]


# ------------------------------------------------------------------ statistics
def summarize(selected, store, grid, dataset, entries, metrics=METRICS, primary="ndcg@20", reference=None):
    """Per entry: mean, sd and per-seed values of each test metric, the p-values against the best
    baseline (paired t over seeds; Wilcoxon over test users of the first seed), epochs and time.
    A table without a baseline (an ablation table) is tested against ``reference`` instead."""
    table = {}
    for name in entries:
        chosen = selected.get((name, dataset))
        if not chosen:
            continue
        runs = chosen["runs"]
        table[name] = {
            "n": len(runs), "seeds": [r["seed"] for r in runs],
            "values": {m: [r["test"].get(m, math.nan) for r in runs] for m in metrics},
            "epochs": [r["epochs_run"] for r in runs], "best_epoch": [r["best_epoch"] for r in runs],
            "capped": sum(not r["stopped_by_patience"] for r in runs), "wall_s": [r["wall_s"] for r in runs],
            "cpu_s": [r["cpu_s"] for r in runs], "peak_rss_mb": [r["peak_rss_mb"] for r in runs],
            "params": chosen["params"], "runs": runs,
        }
    baselines = [n for n in table if grid.entries[n].baseline]
    best_baseline = max(baselines, key=lambda n: np.mean(table[n]["values"][primary]), default=None)
    if best_baseline is None and reference in table:
        best_baseline = reference
    for name, stats in table.items():
        stats["p_seeds"] = stats["p_users"] = math.nan
        if best_baseline is not None and name != best_baseline:
            stats["p_seeds"], stats["p_users"] = _compare(table, name, best_baseline, store, primary)
    return table, best_baseline


def _compare(table, name_a, name_b, store, metric):
    """(paired t p over the seeds both rows ran, Wilcoxon p over the first seed's test users) of
    ``name_a`` against ``name_b``; nan where a test cannot be made."""
    a, b = table[name_a], table[name_b]
    pairs = [(x, y) for s, x in zip(a["seeds"], a["values"][metric])
             for t, y in zip(b["seeds"], b["values"][metric]) if s == t]
    p_seeds = paired_t_p([x for x, _ in pairs], [y for _, y in pairs])
    users = paired_user_values(a["runs"][0], b["runs"][0], store, metric)
    return p_seeds, (wilcoxon_p(*users) if users is not None else math.nan)


def paired_user_values(row_a, row_b, store, metric, store_b=None):
    """Per-user values of two runs on the same test users (matched by user token); ``store_b``
    holds ``row_b``'s split table when it comes from another results file."""
    if row_a["seed"] != row_b["seed"] or not row_a["split"] or not row_b["split"]:
        return None
    split_a, split_b = store.get_split(row_a["split"]), (store_b or store).get_split(row_b["split"])
    index_b = {user: i for i, user in enumerate(split_b["user"])}
    common = [(i, index_b[u]) for i, u in enumerate(split_a["user"]) if u in index_b]
    if not common:
        return None
    ranks_a = np.array([row_a["ranks"][i] for i, _ in common])
    ranks_b = np.array([row_b["ranks"][j] for _, j in common])
    return per_user(ranks_a, metric), per_user(ranks_b, metric)


def subset_metric(row, store, metric, keep):
    """``metric`` over the test users whose (target train count) passes ``keep``; (value, n)."""
    if not row["split"]:
        return math.nan, 0
    split = store.get_split(row["split"])
    mask = np.array([keep(c) for c in split["train_count"]], dtype=bool)
    if not mask.any():
        return math.nan, 0
    return float(per_user(np.asarray(row["ranks"])[mask], metric).mean()), int(mask.sum())


def target_subset(runs, store, metric, cold=True):
    """``metric`` of each run over the test users whose target is cold (fewer than COLD_THRESHOLD
    training occurrences) or, with ``cold=False``, warm; (values, users in the subset)."""
    keep = (lambda c: c < COLD_THRESHOLD) if cold else (lambda c: c >= COLD_THRESHOLD)
    measured = [subset_metric(r, store, metric, keep) for r in runs]
    return [value for value, _ in measured], (measured[0][1] if measured else 0)


# ------------------------------------------------------------------ formatting
def fmt(mean, sd=None, digits=4):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{mean:.{digits}f}".lstrip("0") if abs(mean) < 1 else f"{mean:.{digits}f}"
    if sd is not None:
        text += f" ± {sd:.{digits}f}".replace("0.", ".", 1)
    return text


def fmt_p(p):
    if p is None or math.isnan(p):
        return "—"
    return "<.001" if p < 0.001 else f"{p:.3f}".lstrip("0")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(table, best_baseline, metrics=METRICS, primary="ndcg@20", grid=None):
    """Markdown rows: entry, each metric as mean ± sd (best mean bold), p-values, epochs, time."""
    best = {m: max((np.mean(s["values"][m]) for s in table.values()), default=None) for m in metrics}
    header = ["model", "seeds"] + [metric_label(m) for m in metrics] + [
        f"p seeds ({metric_label(primary)})", f"p users ({metric_label(primary)})", "epochs (best)", "min/run"]
    rows = []
    for name, stats in table.items():
        cells = []
        for m in metrics:
            mean, sd = mean_sd(stats["values"][m])
            text = fmt(mean, sd if stats["n"] > 1 else None)
            cells.append(f"**{text}**" if best[m] is not None and np.isclose(mean, best[m]) else text)
        label = name + (" (baseline)" if grid and grid.entries[name].baseline else "")
        if name == best_baseline:
            label += " ◆"
        epochs = f"{np.mean(stats['epochs']):.0f} ({np.mean(stats['best_epoch']) + 1:.0f})"
        if stats["capped"]:
            epochs += f", {stats['capped']} capped"
        rows.append([label, stats["n"]] + cells + [fmt_p(stats["p_seeds"]), fmt_p(stats["p_users"]), epochs,
                                       f"{np.mean(stats['wall_s']) / 60:.1f}"])
    return markdown_table(header, rows)


def latex_table(tables, metrics=METRICS):
    """A booktabs table like RecBole's result tables: one block of rows per dataset."""
    columns = "l" + "c" * len(metrics)
    lines = [r"\begin{tabular}{" + columns + "}", r"\toprule",
             "Model & " + " & ".join(metric_label(m) for m in metrics) + r" \\"]
    for dataset, (table, _) in tables.items():
        lines += [r"\midrule", rf"\multicolumn{{{len(metrics) + 1}}}{{l}}{{\textit{{{dataset}}}}} \\"]
        best = {m: max((np.mean(s["values"][m]) for s in table.values()), default=None) for m in metrics}
        for name, stats in table.items():
            cells = []
            for m in metrics:
                mean, sd = mean_sd(stats["values"][m])
                text = f"{mean:.4f}$\\pm${sd:.4f}"
                cells.append(rf"\textbf{{{text}}}" if np.isclose(mean, best[m]) else text)
            lines.append(name.replace("_", r"\_") + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ protocol paragraph
def protocol_facts(grid):
    """The protocol keys as the cells see them (protocol files, in order, later wins)."""
    merged = {}
    for path in grid.protocol_files:
        with open(path, encoding="utf-8") as handle:
            merged.update(yaml.safe_load(handle) or {})
    return merged


def split_phrase(split):
    """RecBole's ``eval_args.split`` in words."""
    if "LS" in split:
        return "leave-one-out per user in time order (last item test, second-to-last validation)"
    if "RS" in split:
        train, valid, test = (list(split["RS"]) + [0, 0, 0])[:3]
        parts = f"{train:.0%} train / {valid:.0%} validation" + (f" / {test:.0%} test" if test else ", no test part")
        return (f"each user's time-ordered sequence cut {parts}, every interaction of a held-out part a target "
                "predicted from its whole prefix")
    return str(split)


def protocol_paragraph(grid, selected):
    facts = protocol_facts(grid)
    split = facts.get("eval_args", {}).get("split", {"LS": "valid_and_test"})
    entry_splits = {}  # split phrase -> entries that set their own split
    for entry in grid.entries.values():
        own = ((entry.config or {}).get("eval_args") or {}).get("split")
        if own is not None and own != split:
            entry_splits.setdefault(split_phrase(own), []).append(entry.name)
    on_selection_split = [e.name for e in grid.entries.values() if e.result_split == "valid"]
    budget = grid.search_budget()
    sizes = sorted(set(budget.values()))
    runs = [r for (_, dataset), chosen in selected.items() if not grid.fixed_budget(dataset) for r in chosen["runs"]]
    capped = sum(not r["stopped_by_patience"] for r in runs)
    fixed = sorted({d for _, d in selected if grid.fixed_budget(d)})
    lines = [
        "- **Split**: "
        + "; ".join(([split_phrase(split)] if sum(map(len, entry_splits.values())) < len(grid.entries) else [])
                    + [f"rows {', '.join(names)}: {phrase}" for phrase, names in entry_splits.items()])
        + f"; **full ranking** over all items; history items "
        f"{'**masked**' if facts.get('mask_history_items') else 'not masked'} (the target stays rankable).",
        f"- **Selection and early stopping** on validation {facts.get('valid_metric', 'NDCG@20')}, patience "
        f"{facts.get('stopping_step')} evaluations, evaluated every {facts.get('eval_step', 1)} epoch(s), at most "
        f"{facts.get('epochs')} epochs; test metrics only of the validation-selected checkpoint"
        + (f" (rows {', '.join(on_selection_split)} have no test part: they report the split they were "
           "selected on, as the paper's protocol does, so they overstate)" if on_selection_split else "")
        + f". {capped} of {len(runs)} runs reached the epoch cap"
        + (f" (not counted: the runs on {', '.join(fixed)}, which train a fixed number of epochs by design)"
           if fixed else "") + ".",
        f"- **Size**: embedding size {facts.get('embedding_size', facts.get('hidden_size'))} for every model; "
        f"sequence length {facts.get('MAX_ITEM_LIST_LENGTH')}; batch {facts.get('train_batch_size')}; "
        f"loss {facts.get('loss_type', 'CE')} (full softmax over items) unless a row says otherwise.",
        f"- **Tuning**: every model with a search space gets the same budget, an exhaustive grid of "
        f"{' / '.join(map(str, sizes)) if sizes else 0} configurations on the first seed, chosen on validation; "
        f"the other seeds rerun the chosen values. **Seeds**: {', '.join(map(str, grid.seeds))}; mean ± sample sd.",
        "- **Significance** against the best baseline (◆) on the primary metric: *p seeds* = paired t-test over "
        "seeds; *p users* = Wilcoxon signed-rank test over the test users of the first seed; in an ablation "
        "table without a baseline, against the full model (◆).",
    ]
    for name, keys in grid.datasets.items():
        own = [f"{k}={v}" for k, v in keys.items() if k not in MACHINE_KEYS]
        if name in grid.dataset_seeds:
            own.append(f"seeds {', '.join(map(str, grid.dataset_seeds[name]))}")
        if name in grid.tuned_on:
            own.append(f"values chosen on {grid.tuned_on[name]} (no search of its own)")
        if not any(dataset == name for _, dataset in selected):
            own.append("not run yet (no results)")
        if own:
            lines.append(f"- **{name}**: " + "; ".join(own) + ".")
    return "\n".join(lines)


# ------------------------------------------------------------------ figures
def bar_figure(tables, path, primary="ndcg@20"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 3.8), squeeze=False)
    for ax, (dataset, (table, best_baseline)) in zip(axes[0], tables.items()):
        names = list(table)
        means = [mean_sd(table[n]["values"][primary])[0] for n in names]
        sds = [mean_sd(table[n]["values"][primary])[1] for n in names]
        colors = ["#8c8c8c" if n == best_baseline else ("#bbbbbb" if table[n].get("baseline") else "#3b75af")
                  for n in names]
        ax.bar(range(len(names)), means, yerr=sds, capsize=3, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{dataset}: test {metric_label(primary)} (mean ± sd)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_figure(table, dataset, path, metric_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, stats in table.items():
        curve = stats["runs"][0]["valid_curve"]
        ax.plot([e + 1 for e, _ in curve], [s for _, s in curve], label=name, lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric_name}")
    ax.set_title(f"{dataset}: validation curves (first seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ the page
def table_metrics(selected):
    """The metric columns the rows have: hit, ndcg, mrr (then others), each by cut-off."""
    keys = set()
    for chosen in selected.values():
        keys.update(k for k in chosen["runs"][0]["test"] if "@" in k)
    order = {"hit": 0, "ndcg": 1, "mrr": 2}
    return sorted(keys, key=lambda k: (order.get(k.split("@")[0], 9), k.split("@")[0], int(k.split("@")[1])))


def build_report(grid, store, out_md, figure_dir=None, title="Results", intro="", claims=None, primary=None):
    """Write the results page (and figures, LaTeX) for ``grid`` from ``store``; returns the text."""
    rows = store.rows()
    selected = selected_runs(rows, grid)
    primary = (primary or protocol_facts(grid).get("valid_metric", "NDCG@20")).lower()
    metrics = table_metrics(selected) or list(METRICS)
    tables_by_name = {}
    for entry in grid.entries.values():
        names = tables_by_name.setdefault(entry.table, [])
        if entry.table != "main" and entry.tune_from and entry.tune_from not in names:
            names.append(entry.tune_from)  # an ablation table starts with the full model's row
        names.append(entry.name)
    parts = [f"# {title}", "", "*Generated by `python run_benchmark.py report` from "
             f"`{os.path.relpath(store.path, os.path.dirname(os.path.abspath(out_md)))}`; do not edit by hand.*", ""]
    intro = intro or grid.description
    if intro:
        parts += [intro.strip(), ""]
    parts += ["## Protocol (every row below)", "", protocol_paragraph(grid, selected), ""]
    main = {}
    for table_name, names in tables_by_name.items():
        if not any((name, dataset) in selected for name in names for dataset in grid.datasets):
            continue
        parts += [f"## {'Leaderboard' if table_name == 'main' else table_name}", ""]
        for dataset in grid.datasets:
            reference = None if table_name == "main" else names[0]  # ablations: against the full model
            table, best_baseline = summarize(selected, store, grid, dataset, names, metrics=metrics, primary=primary,
                                             reference=reference)
            if not table or (table_name != "main" and len(table) < 2):
                continue  # an ablation table needs the full model and at least one variant
            if table_name == "main":
                main[dataset] = (table, best_baseline)
            parts += [f"### {dataset}", "", results_table(table, best_baseline, metrics=metrics, primary=primary,
                                                          grid=grid), ""]
            missing = [e.name for e in grid.entries_for(dataset) if e.table == table_name and e.name not in table]
            if missing:
                parts += [f"Not run on {dataset} yet (in the grid, no results): {', '.join(missing)}.", ""]
    if main:
        protocol_end = parts.index("## Leaderboard")
        parts[protocol_end:protocol_end] = takeaways_section(main, store, primary, grid=grid)
        parts += cold_section(main, store)
    if selected:
        parts += chosen_section(grid, selected)
    if claims:
        parts += claims_section(claims, selected, store, grid)
    if figure_dir and main:
        os.makedirs(figure_dir, exist_ok=True)
        rel = os.path.relpath(figure_dir, os.path.dirname(os.path.abspath(out_md)))
        bar_figure(main, os.path.join(figure_dir, "leaderboard.png"), primary)
        parts += ["## Figures", "", f"![test {metric_label(primary)}]({rel}/leaderboard.png)", ""]
        metric_name = protocol_facts(grid).get("valid_metric", "NDCG@20")
        for dataset, (table, _) in main.items():
            name = f"curves-{dataset}.png"
            curve_figure(table, dataset, os.path.join(figure_dir, name), metric_name)
            parts += [f"![validation curves on {dataset}]({rel}/{name})", ""]
        with open(os.path.join(figure_dir, "leaderboard.tex"), "w", encoding="utf-8") as handle:
            handle.write(latex_table(main, metrics))
        parts += [f"LaTeX: [`leaderboard.tex`]({rel}/leaderboard.tex).", ""]
    text = "\n".join(parts).rstrip() + "\n"
    with open(out_md, "w", encoding="utf-8") as handle:
        handle.write(text)
    return text


def takeaways_section(main, store, primary, cold_metric="ndcg@10", alpha=0.05, grid=None):
    """What a user choosing a model reads first, per dataset, computed from the same tables: the
    leader, whether it beats the best baseline, which rows cannot be told apart from it, the
    cheapest of those, and the leader on cold targets. A dataset with a fixed epoch budget is
    reported but left out of the every-dataset line: its runs are not converged."""
    label = metric_label(primary)
    parts = ["## Which model to use (computed from the tables below)", "",
             f"Tests as in the tables: paired t-test over seeds and Wilcoxon test over the first seed's test users, "
             f"at p <= {alpha}; *tied* = neither test separates the row from the leader.", ""]
    contenders = {}  # {dataset: the leader and the rows tied with it}
    for dataset, (table, best_baseline) in main.items():
        ranked = sorted(table, key=lambda n: -np.mean(table[n]["values"][primary]))
        leader = ranked[0]
        mean, sd = mean_sd(table[leader]["values"][primary])
        lines = [f"- **{dataset}**: highest test {label}: **{leader}** ({fmt(mean, sd)})."]
        most = max(stats["n"] for stats in table.values())
        if table[leader]["n"] < most:  # a mean over fewer seeds than the other rows is less settled
            lines[0] += f" Only {table[leader]['n']} seed(s) so far, against {most} for other rows."
        budget = grid.fixed_budget(dataset) if grid else None
        if budget:
            lines[0] += (f" Fixed budget of {budget} epochs and {most} seed(s): not converged runs, so a ranking "
                         "at this budget, not of the models.")
        if best_baseline and leader != best_baseline:
            p_seeds, p_users = table[leader]["p_seeds"], table[leader]["p_users"]
            ahead = (p_seeds <= alpha) or (p_users <= alpha)
            lines.append(f"  Against the best baseline, {best_baseline}: p seeds {fmt_p(p_seeds)}, p users "
                         f"{fmt_p(p_users)}, so {'ahead' if ahead else 'not distinguishable from it'}.")
        elif best_baseline:
            lines.append("  The leader is a baseline: no other row is ahead of it.")
        tied = []
        for name in ranked[1:]:
            p_seeds, p_users = _compare(table, name, leader, store, primary)
            if not (p_seeds <= alpha or p_users <= alpha):
                tied.append(name)
        contenders[dataset] = [leader] + tied
        if tied:
            group = [leader] + tied
            cheapest = min(group, key=lambda n: np.mean(table[n]["cpu_s"]))
            lines.append(f"  Tied with it: {', '.join(tied)}; the cheapest of these per run is {cheapest} "
                         f"({np.mean(table[cheapest]['cpu_s']) / 60:.1f} CPU min).")
        else:
            lines.append("  Every other row is separated from it by at least one test.")
        cold = {n: mean_sd(target_subset(table[n]["runs"], store, cold_metric)[0])[0] for n in table}
        cold = {n: v for n, v in cold.items() if not math.isnan(v)}
        n_cold = target_subset(table[leader]["runs"][:1], store, cold_metric)[1]
        if cold and n_cold >= 100:  # too few cold targets say nothing
            best_cold = max(cold, key=cold.get)
            lines.append(f"  On cold targets ({n_cold} test users, {metric_label(cold_metric)}) the best is "
                         f"{best_cold} ({fmt(cold[best_cold])}).")
        parts += lines
    converged = {d: v for d, v in main.items() if not (grid and grid.fixed_budget(d))}
    if len(converged) >= 2:
        parts += _everywhere_line(converged, contenders)
        if len(converged) < len(main):
            parts[-1] += (f" ({', '.join(d for d in main if d not in converged)}: fixed budget, not converged, "
                          "left out of this line.)")
    return parts + [""]


def _everywhere_line(main, contenders):
    """The rows that lead or are tied with the leader on every dataset of the leaderboard, and
    the rows that cannot be judged so because some dataset has no results for them."""
    names = list(dict.fromkeys(n for table, _ in main.values() for n in table))
    everywhere = [n for n in names if all(n in contenders[d] for d in main)]
    partial = [n for n in names if any(n not in table for table, _ in main.values())]
    text = (f"leading or tied with the leader on every one: {', '.join(everywhere)}." if everywhere
            else "no row leads or ties with the leader on every one.")
    line = f"- **All datasets** ({', '.join(main)}): {text}"
    if partial:
        line += f" Not run on every dataset yet, so not judged: {', '.join(partial)}."
    return [line]


def cold_section(main, store, metric="ndcg@10"):
    parts = [f"## Cold and warm targets (test users whose target occurs fewer than {COLD_THRESHOLD} times in training)", ""]
    for dataset, (table, _) in main.items():
        rows, n_cold, n_warm = [], 0, 0
        for name, stats in table.items():
            cold, n_cold = target_subset(stats["runs"], store, metric)
            warm, n_warm = target_subset(stats["runs"], store, metric, cold=False)
            single = len(stats["runs"]) == 1
            rows.append([name, fmt(mean_sd(cold)[0], None if single else mean_sd(cold)[1]),
                         fmt(mean_sd(warm)[0], None if single else mean_sd(warm)[1])])
        parts += [f"### {dataset} ({n_cold} cold, {n_warm} warm test users)", "",
                  markdown_table(["model", f"cold {metric_label(metric)}", f"warm {metric_label(metric)}"], rows), ""]
    return parts


def chosen_section(grid, selected):
    rows = []
    for (entry, dataset), chosen in sorted(selected.items(), key=lambda kv: (kv[0][1], list(grid.entries).index(kv[0][0]))):
        spec = grid.entries[entry]
        fixed = ", ".join(f"{k}={v}" for k, v in spec.config.items()) or "—"
        tuned = ", ".join(f"{k}={v}" for k, v in chosen["params"].items()) or "—"
        if dataset in grid.tuned_on:
            source = f"chosen on {grid.tuned_on[dataset]}"
        elif spec.search:
            source = f"{chosen['trials']} trials"
        else:
            source = f"from {spec.tune_from}" if spec.tune_from else "no search"
        rows.append([entry, dataset, spec.model, fixed, f"{tuned} ({source})"])
    return ["## Configurations (fixed keys and the values chosen on validation)", "",
            markdown_table(["entry", "dataset", "model", "fixed keys", "chosen values"], rows), ""]


def claims_section(claims, selected, store, grid):
    """Each paper claim beside our measurement: entry A vs B on a metric, mean ± sd over seeds,
    relative difference, paired p over seeds and a verdict; then each claim's paper setting and
    explanation as numbered notes."""
    rows, notes = [], []
    for number, claim in enumerate(claims, start=1):
        compare = claim.get("compare") or {}
        measured, verdict = "not run yet", "—"
        a = selected.get((compare.get("a"), compare.get("dataset")))
        b = selected.get((compare.get("b"), compare.get("dataset")))
        metric = compare.get("metric", "ndcg@20")
        cold = compare.get("subset") == "cold"
        if a and b:
            def values(chosen):
                if cold:
                    return target_subset(chosen["runs"], store, metric)[0]
                return [r["test"][metric] for r in chosen["runs"]]

            values_a, values_b = values(a), values(b)
            by_seed_b = {r["seed"]: v for r, v in zip(b["runs"], values_b)}
            paired = [(v, by_seed_b[r["seed"]]) for r, v in zip(a["runs"], values_a) if r["seed"] in by_seed_b]
            p, test = paired_t_p([x for x, _ in paired], [y for _, y in paired]), "p"
            if len(paired) < 2 and not cold:  # one shared seed: test over its test users instead
                users = paired_user_values(a["runs"][0], b["runs"][0], store, metric)
                if users is not None:
                    p, test = wilcoxon_p(*users), "p users"
            mean_a, mean_b = float(np.mean(values_a)), float(np.mean(values_b))
            relative = (mean_a - mean_b) / mean_b * 100 if mean_b else math.nan
            def stat(vals):
                return fmt(*mean_sd(vals)) if len(vals) > 1 else f"{fmt(vals[0])} (1 seed)"

            measured = (f"{compare['a']} {stat(values_a)} vs {compare['b']} {stat(values_b)} "
                        f"({relative:+.1f} %, {test} {fmt_p(p)})")
            holds = mean_a > mean_b if compare.get("expect", "a>b") == "a>b" else mean_a < mean_b
            significant = not math.isnan(p) and p <= 0.05
            if math.isnan(p):
                verdict = f"{'same direction' if holds else 'reversed'}, too few seeds for a test"
            else:
                verdict = ("**holds**" if holds and significant else "same direction, not significant" if holds
                           else "**reversed**" if significant else "reversed, not significant")
        where = f"{compare.get('dataset', '')}, {metric_label(metric)}{', cold targets' if cold else ''}"
        rows.append([number, claim.get("paper", "").split(" (")[0], claim.get("claim", ""), where, measured, verdict])
        note = " ".join(part for part in (claim.get("paper_setting"), claim.get("explanation")) if part)
        if note:
            notes.append(f"{number}. {note}")
    return (["## Paper claims", "",
             "Each claim in our words with the paper's own numbers; our measurement is the same comparison under "
             "the protocol above (mean ± sd over seeds, paired t-test over seeds; with one seed, *p users* = "
             "Wilcoxon test over its test users; *holds* = same direction at p <= .05). The papers' settings differ from ours; the notes below say how, and what explains a "
             "difference.", "",
             markdown_table(["#", "paper", "claim", "measured on", "our measurement", "verdict"], rows), "",
             "### Notes: the papers' settings and explanations", ""] + notes + [""])


def cost_report(grid, store, out_md, title="Benchmark grid cost"):
    """Where a grid's CPU time went: per dataset and entry, runs (trials included), epochs, wall and
    CPU minutes per run, total CPU hours and the largest peak memory; written to ``out_md``."""
    rows = [r for r in store.rows() if r.get("status") == "ok" and r["entry"] in grid.entries
            and r["dataset"] in grid.datasets]
    failed = sum(1 for r in store.rows() if r.get("status") != "ok")
    lines = [f"# {title}", "", f"*Generated by `python run_benchmark.py report --cost` from "
             f"`{os.path.basename(store.path)}`; do not edit by hand.*", ""]
    hosts = sorted({f"{r['host']['cpu']}, {r['host']['cores']} cores, {r['host']['threads']} thread(s) per cell"
                    for r in rows})
    loads = [r["host"].get("load_before") for r in rows if r["host"].get("load_before") is not None]
    if rows:
        first, last = min(r["finished_at"] for r in rows), max(r["finished_at"] for r in rows)
        lines += [f"Machine: {'; '.join(hosts)}. Cells finished between {first} and {last}; load average "
                  f"when a cell started: median {np.median(loads):.1f}, max {max(loads):.1f} (the grid ran "
                  "several cells at once, so wall times include waiting for a core; CPU time does not).", ""]
    table, total_cpu = [], 0.0
    for dataset in grid.datasets:
        for name in grid.entries:
            group = [r for r in rows if r["entry"] == name and r["dataset"] == dataset]
            if not group:
                continue
            cpu = sum(r["cpu_s"] for r in group)
            total_cpu += cpu
            table.append([dataset, name, len(group), f"{np.mean([r['epochs_run'] for r in group]):.0f}",
                          f"{np.mean([r['wall_s'] for r in group]) / 60:.1f}",
                          f"{np.mean([r['cpu_s'] for r in group]) / 60:.1f}", f"{cpu / 3600:.2f}",
                          f"{max(r['peak_rss_mb'] for r in group) / 1024:.2f}"])
    lines += [markdown_table(["dataset", "entry", "runs", "epochs/run", "wall min/run", "CPU min/run",
                              "CPU hours", "peak GiB"], table), "",
              f"Total: {len(rows)} finished runs, **{total_cpu / 3600:.1f} CPU hours**; {failed} failed attempt(s) "
              "(retried).", ""]
    text = "\n".join(lines)
    with open(out_md, "w", encoding="utf-8") as handle:
        handle.write(text)
    return text
