"""``qkt flower``: run a query in Flower's simulation runtime, or prepare one for a real federation.

Importing this module does not import Flower, so ``qkt`` works without the
``flower`` extra; the commands say how to install it when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from ..config import DEMO, load_config, parse_config
from ..errors import QKTError
from ..files import atomic_write
from .console import add_verbosity, non_negative_int, positive_float, print_run


def _require_flower() -> None:
    if importlib.util.find_spec("flwr") is None:
        raise QKTError('Flower is not installed: pip install "qkt[flower]"')


def _config(args: argparse.Namespace):
    config = load_config(args.config) if args.config else parse_config(DEMO, "demo")
    raw, flags = config.model_dump(), []
    if args.parties is not None:
        raw["partition"]["num_parties"] = args.parties
        flags.append(f"--parties {args.parties}")
    if args.data_root is not None:  # absolute: the parties' processes do not start in this folder
        raw["data"]["root"] = str(args.data_root.expanduser().resolve())
        flags.append(f"--data-root {args.data_root}")
    return parse_config(raw, " with ".join([str(args.config or "demo"), *flags])) if flags else config


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..flower.federation import simulate

    _require_flower()
    config = _config(args)
    started = time.perf_counter()
    print(f"qkt flower simulate: {config.partition.num_parties} parties on Flower's simulation runtime (Ray); "
          f"logs in {args.output / 'flower-logs'}", flush=True)
    summary = simulate(config, args.output, args.timeout, reply_timeout=args.reply_timeout)
    print_run(summary, args.output, started)
    if summary["flower"]["skipped_methods"]:
        print(f"not run on Flower (they need every teacher's model in one place): {', '.join(summary['flower']['skipped_methods'])}")
    return 0


def cmd_app_dir(args: argparse.Namespace) -> int:
    from ..flower.federation import APP_DIR

    print(APP_DIR)
    return 0


def cmd_run_config(args: argparse.Namespace) -> int:
    _require_flower()
    import tomli_w
    import yaml

    from ..flower.federation import querier_settings, run_config
    from ..flower.party import QUERIER_ENV, read_settings

    config = _config(args)
    flower_config = run_config(config, reply_timeout=args.reply_timeout, min_supernodes=args.min_supernodes)
    querier = querier_settings(config, args.output)
    read_settings(flower_config, querier)  # what the app would refuse at start is refused here
    atomic_write(args.querier_file, yaml.safe_dump(querier, sort_keys=False).encode())
    sys.stdout.write(tomli_w.dumps(flower_config, multiline_strings=True))
    print(f"wrote {args.querier_file}: the query, methods and output folder, which no party receives; "
          f"the querier's SuperLink reads it from ${QUERIER_ENV}={args.querier_file.resolve()}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qkt flower`` and its commands on the main parser's subcommands."""
    flower = sub.add_parser("flower", help="run queries on Flower: simulation, or SuperLink/SuperNodes across machines",
                            description="qkt as a Flower app. See docs/flower.md for running across machines.")
    commands = flower.add_subparsers(dest="flower_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=None, help="a `qkt run` config (YAML/TOML; default: the demo's)")
        p.add_argument("--output", type=Path, default=Path("qkt-output/flower"), help="folder for the querier's results (default: %(default)s)")
        p.add_argument("--parties", type=int, default=None, help="number of parties (overrides partition.num_parties)")
        p.add_argument("--data-root", type=Path, default=None,
                       help="folder of the data files, for every party (default: data.root, else $QKT_DATA_ROOT on each machine)")
        p.add_argument("--reply-timeout", type=positive_float, default=600.0, help="seconds to wait for each exchange; later parties are reported lost (default: %(default)s)")

    simulate = commands.add_parser("simulate", help="run one query with one simulated SuperNode per party (Flower's simulation runtime)",
                                   description="Start a SuperLink with Flower's simulation runtime (Ray), one virtual SuperNode per party, run the config's Flower methods (local, qkt, qkt_light, fedavg, fedprox), print the table and stop every process it started.")
    common(simulate)
    simulate.add_argument("--timeout", type=positive_float, default=3600.0, help="give up on the whole run after this many seconds (default: %(default)s)")
    add_verbosity(simulate)
    simulate.set_defaults(func=cmd_simulate)

    app_dir = commands.add_parser("app-dir", help="print the folder of the Flower app, for `flwr run <folder> <superlink>`",
                                  description="Print the folder of qkt's Flower app (its pyproject.toml names the ServerApp and ClientApp), for `flwr run \"$(qkt flower app-dir)\" <superlink> --run-config run.toml`.")
    app_dir.set_defaults(func=cmd_app_dir)

    run_config = commands.add_parser("run-config", help="print a run config (TOML) for `flwr run ... --run-config run.toml` and write the querier's own file",
                                     description="Print the Flower run config of a `qkt run` config (TOML): the world every party receives when `flwr run` "
                                                 "starts the app (data, partition, scenario, training, federated). The querier's own settings (query, methods, "
                                                 "output folder) go to --querier-file, which the ServerApp reads from $QKT_QUERIER_CONFIG on the querier's "
                                                 "machine and no party receives. See docs/flower.md.")
    common(run_config)
    run_config.add_argument("--querier-file", type=Path, default=Path("querier.yaml"),
                            help="where to write the querier's own settings (default: %(default)s)")
    run_config.add_argument("--min-supernodes", type=non_negative_int, default=0, help="SuperNodes to wait for before the query starts (default: %(default)s)")
    run_config.set_defaults(func=cmd_run_config)
