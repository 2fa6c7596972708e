"""Federated CtP pretraining of a video backbone (FedVSSL) on Ray.

    python experiments/pretrain.py                       # built-in synthetic data, local Ray
    python experiments/pretrain.py --config ucf101 data.root=/data/ucf101 strategy.alpha=1
"""

from __future__ import annotations

import sys

from common import config_parser, resolve_config

from fedvssl_ray.config import format_config


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__)
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    if args.print_config:
        print(format_config(cfg), end="")
        return 0
    print(format_config(cfg), end="")
    print("the federated engine is not available yet; nothing was run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
