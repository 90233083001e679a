"""Hyper-parameter search over a RecBole ``.hyper`` space, for recbole_mm's models and RecBole's.

    python run_hyper.py --model=SASRec --dataset=ml-100k --params_file=properties/hyper/sasrec.hyper \\
        --tool=hyperopt --algo=tpe --max_evals=20
    python run_hyper.py --model=MuSTRec --params_file=properties/hyper/mustrec.hyper \\
        --tool=ray --algo=random --max_evals=16 --cpus_per_trial=2 --gpus_per_trial=0.5 [--ray_address=auto]

Trials are ranked on the validation metric (``valid_metric``); test metrics are only reported.
Every other ``--key=value`` is a fixed config value for all trials (as in run_recbole_mm.py),
``--config_files="a.yaml b.yaml"`` adds yaml files (or repeat the flag). Every key, fixed or
searched, must be a known config key: a misspelt one stops the search before the first trial.
Results go to ``--output_file`` (JSON, default ``hyper_results/<model>-<dataset>-<tool>-<time>.json``)
and a Markdown table next to it (``.md``), which is also printed. Exit code 2 on a bad search
space or config, 1 when every trial failed.
"""
import argparse
import sys

import yaml


def parse_fixed(extra):
    """``--key=value`` pairs (values read as yaml: numbers, lists, booleans) → dict."""
    fixed, unknown = {}, []
    for arg in extra:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            try:
                fixed[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                fixed[key] = value
        else:
            unknown.append(arg)
    return fixed, unknown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="SASRec", help="model name (ours or RecBole's; default SASRec)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", action="append", default=None,
                        help="yaml files fixed for every trial: space-separated, a yaml list, or the flag repeated")
    parser.add_argument("--params_file", required=True, help="search space in RecBole's .hyper format")
    parser.add_argument("--tool", default="hyperopt", type=str.lower, choices=["hyperopt", "ray"])
    parser.add_argument("--algo", default="tpe", type=str.lower,
                        choices=["exhaustive", "grid", "random", "tpe", "bayes"],
                        help="exhaustive (= grid, choice parameters only), random, tpe (= bayes)")
    parser.add_argument("--max_evals", type=int, default=None,
                        help="number of trials (default 10; exhaustive: the whole grid)")
    parser.add_argument("--output_file", "--output", default=None, help="results JSON (table: same name, .md)")
    parser.add_argument("--ray_address", default=None,
                        help="attach to a running Ray cluster ('auto' or HOST:PORT); default: start a local one")
    parser.add_argument("--max_concurrent", type=int, default=None, help="Ray: most trials running at once")
    parser.add_argument("--early_stop", type=int, default=None,
                        help="hyperopt: stop after this many trials without a better valid score")
    parser.add_argument("--verbose", type=int, default=0, help="Ray Tune verbosity 0-3 (default 0)")
    args, extra = parser.parse_known_args(argv)
    fixed, unknown = parse_fixed(extra)
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; config values are passed as --key=value")

    from recbole_mm.cli import config_file_list, fail, silence_known_warnings
    from recbole_mm.errors import RecBoleMMError
    from recbole_mm.tuning import AllTrialsFailed, format_table, run_search

    silence_known_warnings()
    try:
        summary = run_search(args.model, args.dataset, args.params_file,
                             config_file_list=config_file_list(args.config_files),
                             config_dict=fixed, tool=args.tool, algo=args.algo, max_evals=args.max_evals,
                             output_file=args.output_file, ray_address=args.ray_address,
                             max_concurrent=args.max_concurrent, early_stop=args.early_stop, verbose=args.verbose)
    except RecBoleMMError as err:
        return fail(err)
    except AllTrialsFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\n{summary['model']} on {summary['dataset']}, {summary['tool']} / {summary['algo']}, "
          f"{summary['n_trials']} trials ({summary['n_failed']} failed)\n")
    print(format_table(summary))
    print(f"\nresults: {summary['output_file']}\ntable:   {summary['table_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
