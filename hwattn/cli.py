"""`hwattn` command line: each subcommand lives beside the code it drives and is imported lazily."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments(parser) and main(args), one-line help)
_COMMANDS = {
    "demo": ("hwattn.demo", "the main job: kernel vs reference, and memory of naive vs tiled attention"),
    "bench": ("hwattn.bench.cli", "time hwattn against SDPA backends, FlexAttention and the naive reference"),
    "diagnose": ("hwattn.diagnose.cli", "is an op bound by memory, compute or overhead?"),
    "train": ("hwattn.train.cli_train", "train a small model on a synthetic long-range task"),
    "compare": ("hwattn.train.cli_compare", "quality against speed for several attention methods"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hwattn", description="hardware-aware attention for long sequences")
    sub = parser.add_subparsers(dest="command", required=True)
    available = {}
    for name, (module, help_text) in _COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):
                continue  # this subcommand's package is not part of this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        available[name] = mod
    args = parser.parse_args(argv)
    return int(available[args.command].main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
