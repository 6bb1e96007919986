"""The ``qkt`` command: a thin layer over :mod:`qkt.experiment` and :mod:`qkt.data`.

The command line is the only part of qkt that prints: :mod:`.console` holds what the
commands print and their argument types, :mod:`.flower` the ``qkt flower`` commands.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ..config import DEMO, RunConfig, commented_yaml, load_config, parse_config
from ..errors import QKTError
from .console import add_verbosity, configure_logging, positive_int, print_run


def _run(config: RunConfig, output: Path | None, quiet: bool, resume: bool = True, device: str | None = None) -> int:
    from ..experiment import run
    from ..training import set_threads

    if device is not None:
        config = config.model_copy(update={"training": config.training.model_copy(update={"device": device})})
    set_threads()
    started = time.perf_counter()
    # Bars redraw in place on a terminal; in a log file they would only add noise.
    summary = run(config, output, progress=not quiet and sys.stderr.isatty(), resume=resume)
    print_run(summary, output, started)
    failed = {k: v["details"]["failed"] for k, v in summary["methods"].items() if "failed" in v.get("details", {})}
    for method, reason in failed.items():
        print(f"error: {method} failed (the querier keeps its own model): {reason}", file=sys.stderr)
    return 2 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    print("qkt demo: 10 parties hold label-skewed shares of scikit-learn's handwritten digits;\n"
          "one of them asks the others for a digit it has never seen.")
    return _run(parse_config(DEMO, "demo"), args.output, args.quiet, device=args.device)


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume and args.output is None:
        raise QKTError("--resume reuses the models under OUTPUT/checkpoints: give the --output folder of the run to resume")
    config = load_config(args.config)
    updates = {k: v for k, v in {"root": args.data_root, "path": args.data_path}.items() if v is not None}
    if updates:
        config = parse_config({**config.model_dump(), "data": {**config.data.model_dump(), **updates}}, str(args.config))
    return _run(config, args.output, args.quiet, args.resume, args.device)


def cmd_config(args: argparse.Namespace) -> int:
    config = parse_config(DEMO, "demo") if args.demo else RunConfig()
    print(commented_yaml(config))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from ..data import dataset_names, download, load_dataset

    if args.data_path and args.action != "info":
        raise QKTError(f"--data-path names a file for 'qkt data info' to read; 'qkt data {args.action}' does not read one")
    if args.action == "list":
        print("\n".join(dataset_names()))
        return 0
    if not args.name:
        raise QKTError(f"'qkt data {args.action}' needs a data set name: {', '.join(dataset_names())}")
    if args.action == "download":
        print(f"saved {download(args.name, args.data_root, args.size)}")
        return 0
    d = load_dataset(args.name, args.data_root, args.data_path, args.size)
    print(f"{d.name}: {len(d.y_train)} train / {len(d.y_test)} test, input {d.input_shape}, {d.num_classes} classes: {', '.join(d.classes)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench
    from ..files import check_output
    from ..training import set_threads

    check_output(args.output)
    set_threads(args.threads)
    state = run_bench(args.profile, args.dataset, args.output, args.data_root, args.scenario, args.resume,
                      progress=not args.quiet and sys.stderr.isatty(), methods=args.methods, whole_dataset=args.whole_dataset,
                      device=args.device, seeds=args.seed)
    if not state["records"]:
        raise QKTError(f"no query of {', '.join(args.scenario or ['the profile'])} is eligible on {', '.join(state['datasets'])} "
                       f"(no party lacks such a query while others hold it): nothing written to {args.output}")
    print((args.output / "bench.md").read_text())
    print(f"wrote {args.output}/bench.json, bench.md, bench.csv, headline.md and bench.png "
          f"(wall {state['wall_seconds']:.0f} s, CPU {state['cpu_seconds']:.0f} s)")
    return 0


def _device_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None,
                         help="where every step computes (overrides training.device; auto: CUDA, else MPS, else the CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkt", description="Query-based Knowledge Transfer: learn the classes you lack from your peers' models, in one exchange, with no data leaving anyone.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run one query on the bundled handwritten digits (under a minute)",
                          description="Train 10 parties on label-skewed digits, let one ask for a digit it lacks, and compare QKT with Local, Ensemble and KD.")
    demo.add_argument("--output", type=Path, default=Path("qkt-output/demo"), help="folder for results.json, results.md and the chart (default: %(default)s)")
    add_verbosity(demo)
    _device_option(demo)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run one query described by a config file",
                         description="Run the experiment of a YAML or TOML config: data, partition, scenario, local training, query. "
                                     "`qkt config` prints every option with its default.")
    run.add_argument("--config", type=Path, required=True, help="YAML (.yaml/.yml) or TOML (.toml) file")
    run.add_argument("--output", type=Path, default=None, help="folder for results.json, results.md, the chart and checkpoints (default: print only)")
    run.add_argument("--data-root", default=None, help="folder with the data files (overrides data.root; default $QKT_DATA_ROOT or ./data)")
    run.add_argument("--data-path", default=None, help="an explicit data file (overrides data.path)")
    run.add_argument("--resume", action="store_true", help="reuse the parties' models already trained in OUTPUT/checkpoints (default: retrain)")
    add_verbosity(run)
    _device_option(run)
    run.set_defaults(func=cmd_run, interrupted="finished checkpoints are kept (qkt run --resume reuses them); results were not written")

    config = sub.add_parser("config", help="print every config option with its default, as YAML",
                            description="Print every option of a `qkt run` config with its default and what it means, as YAML that loads back to the same config: a starting point for your own.")
    config.add_argument("--demo", action="store_true", help="print the demo's config instead of the defaults")
    config.set_defaults(func=cmd_config)

    bench = sub.add_parser("bench", help="compare QKT with federated, distillation and ensemble methods (SPEC §4, §5)",
                           description="Run every method on every eligible querier of each scenario and seed; write tables "
                                       "(markdown, CSV), bench.json and a chart. 'quick' takes minutes, 'full' hours and adds the baselines at "
                                       "their strength (fedavg_converged, fedprox_converged, fedavg_finetune: federated.converged_rounds "
                                       "rounds, 40, against the parties' 5 epochs; name them in --methods to run them in 'quick'), "
                                       "'ablations' runs every ablation on every single-class querier of the first seed.")
    bench.add_argument("--profile", choices=["quick", "full", "ablations"], default="quick", help="how much of the protocol to run (default: %(default)s)")
    bench.add_argument("--dataset", action="append", default=None, help="data set to run (repeatable; default: digits and every data set found under --data-root)")
    bench.add_argument("--scenario", action="append", default=None, help="run only this scenario (repeatable; 'liars': every planted liar, alone and beside the honest teachers; default: the profile's)")
    bench.add_argument("--output", type=Path, default=Path("qkt-output/bench"), help="folder for the results and checkpoints (default: %(default)s)")
    bench.add_argument("--data-root", default=None, help="folder with the data files (default $QKT_DATA_ROOT or ./data)")
    bench.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                       help="run only these methods (default: the profile's; names as in the config's methods, e.g. qkt "
                            "qkt_whole_first_epoch); without qkt the tables have no Δ (for benchmarks/merge_runs.py)")
    bench.add_argument("--whole-dataset", action="store_true",
                       help="every training and test image of each data set, not the 6,000 / 2,000-image subsets (SPEC §5's scale)")
    bench.add_argument("--seed", action="append", type=int, default=None,
                       help="run only this seed of the profile (repeatable; default: every seed); a later --resume with the same --output adds the others")
    bench.add_argument("--resume", action="store_true", help="keep the queries already in OUTPUT/bench.json and run the rest (same settings and methods)")
    bench.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: $OMP_NUM_THREADS, else every core; 1 is much faster on a busy machine)")
    add_verbosity(bench)
    _device_option(bench)
    bench.set_defaults(func=cmd_bench, interrupted="every finished query is in bench.json; qkt bench --resume with the same --output runs the rest")

    data = sub.add_parser("data", help="list, inspect or download data sets")
    data.add_argument("action", choices=["list", "info", "download"], help="list the registry; show a data set; download its official file")
    data.add_argument("name", nargs="?", help="data set name (see 'qkt data list')")
    data.add_argument("--data-root", default=None, help="folder with the data files (default $QKT_DATA_ROOT or ./data)")
    data.add_argument("--data-path", default=None, help="an explicit data file for 'info'")
    data.add_argument("--size", type=positive_int, default=None, help="image side: a MedMNIST file's size (28, 64, 128, 224), or an imagefolder's resize")
    data.set_defaults(func=cmd_data)

    from .flower import add_parser as add_flower_parser  # imports no Flower until a flower command runs

    add_flower_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    warnings.formatwarning = lambda message, *_a, **_k: f"warning: {message}\n"
    try:
        return args.func(args)
    except QKTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted", None)  # what survives depends on the command
        print(f"interrupted: {hint}" if hint else "interrupted", file=sys.stderr)
        return 130

