"""Command-line pieces shared by the entry points: preset + ``key=value`` overrides -> Config."""

from __future__ import annotations

import argparse
import sys

from fedvssl_ray.config import (
    DEFAULT_PRESET,
    Config,
    ConfigError,
    describe_keys,
    load_config,
    preset_names,
)


def config_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config PRESET_OR_FILE`` and positional overrides."""
    epilog = (
        f"presets: {', '.join(preset_names())} (default {DEFAULT_PRESET}), or a .yaml/.json file\n"
        "override any key as key=value with dotted keys, e.g.\n"
        "  strategy.alpha=1 rounds=100 client.num_gpus=1\n\n"
        f"keys:\n{describe_keys()}"
    )
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=DEFAULT_PRESET, metavar="PRESET_OR_FILE",
        help="preset name or config file (default: %(default)s)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def resolve_config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """Load the config named by ``args``; a config mistake exits 2 with its message."""
    try:
        return load_config(args.config, [*args.overrides, *(extra or [])])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
