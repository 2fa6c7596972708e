"""Dataset preparation and federated partitions.

examples:
  python experiments/prepare.py synthetic --out data/synthetic
  python experiments/prepare.py ucf101 --raw-dir /data/UCF-101 --splits-dir /data/ucfTrainTestlist --out data/ucf101
  python experiments/prepare.py hmdb51 --raw-dir /data/hmdb51_org --splits-dir /data/testTrainMulti_7030_splits --out data/hmdb51
  python experiments/prepare.py kinetics400 --raw-dir /data/k400 --csv train.csv validate.csv --out data/k400
  python experiments/prepare.py seed --root /data/ucf101_prepared --out data/ucf101_seed
  python experiments/prepare.py partition --manifest data/ucf101/manifests/train_split1.parquet --num-clients 5 --scheme iid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedvssl_ray.data.manifest import ManifestError, load_manifest
from fedvssl_ray.data.partition import (
    SCHEMES,
    PartitionError,
    count_empty,
    partition_summary,
    partition_videos,
    write_partitions,
)
from fedvssl_ray.data.prepare.common import MIN_FRAMES, PrepareError, PrepareReport
from fedvssl_ray.data.prepare.hmdb51 import prepare_hmdb51
from fedvssl_ray.data.prepare.kinetics400 import prepare_kinetics400
from fedvssl_ray.data.prepare.seed import prepare_seed
from fedvssl_ray.data.prepare.ucf101 import prepare_ucf101
from fedvssl_ray.data.synthetic import SyntheticSpec, ensure_synthetic_dataset


def run_ucf101(args: argparse.Namespace) -> list[PrepareReport]:
    return prepare_ucf101(
        args.raw_dir,
        args.splits_dir,
        args.out,
        split=args.split,
        min_frames=args.min_frames,
        workers=args.workers,
    )


def run_hmdb51(args: argparse.Namespace) -> list[PrepareReport]:
    return prepare_hmdb51(
        args.raw_dir,
        args.splits_dir,
        args.out,
        split=args.split,
        min_frames=args.min_frames,
        workers=args.workers,
    )


def run_kinetics400(args: argparse.Namespace) -> list[PrepareReport]:
    return prepare_kinetics400(
        args.raw_dir,
        args.out,
        csv_paths=args.csv,
        list_path=args.list,
        list_split=args.list_split,
        min_frames=args.min_frames,
        workers=args.workers,
    )


def run_seed(args: argparse.Namespace) -> list[PrepareReport]:
    return prepare_seed(
        args.root, args.out, split=args.split, min_frames=args.min_frames, workers=args.workers
    )


def run_synthetic(args: argparse.Namespace) -> None:
    out = ensure_synthetic_dataset(
        args.out,
        num_classes=args.num_classes,
        videos_per_class=args.videos_per_class,
        frames=args.frames,
        width=args.width,
        height=args.height,
        fps=args.fps,
        seed=args.seed,
        workers=args.workers,
    )
    print(f"synthetic dataset ready: {out}/manifests/{{train,test}}_split1.parquet")


def run_partition(args: argparse.Namespace) -> None:
    manifest = load_manifest(args.manifest)
    params = {"dirichlet_alpha": args.dirichlet_alpha, "min_per_client": args.min_per_client}
    if args.classes_per_client is not None:
        params["classes_per_client"] = args.classes_per_client
    if args.scheme == "k400-noniid":
        params = {"num_classes": manifest.num_classes}
    parts = partition_videos(
        manifest.records,
        args.num_clients,
        args.scheme,
        args.seed,
        allow_empty=args.allow_empty_clients,
        **params,
    )
    if empty := count_empty(parts):
        print(
            f"warning: {empty} of {len(parts)} clients get no video from {len(manifest.records)} "
            "videos (--allow-empty-clients)",
            file=sys.stderr,
        )
    out = args.out or manifest.path.resolve().parent.parent / "partitions" / (
        f"{args.scheme}-{args.num_clients}"
    )
    write_partitions(out, parts)
    print(partition_summary(parts, manifest.class_names))
    print(f"wrote {len(parts)} partition files to {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="\n".join(__doc__.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def dataset_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", type=Path, required=True, help="prepared dataset folder")
        p.add_argument(
            "--workers", type=int, default=None, help="probe processes (default: all cores)"
        )
        return p

    def min_frames_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--min-frames",
            type=int,
            default=MIN_FRAMES,
            help=f"skip videos with fewer decodable frames (default {MIN_FRAMES})",
        )

    p = dataset_command("ucf101", "UCF-101 release layout -> manifests")
    p.add_argument("--raw-dir", type=Path, required=True, help="folder of the .avi files")
    p.add_argument("--splits-dir", type=Path, required=True, help="ucfTrainTestlist/ folder")
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=1)
    min_frames_option(p)
    p.set_defaults(run=run_ucf101)

    p = dataset_command("hmdb51", "HMDB-51 release layout -> manifests")
    p.add_argument("--raw-dir", type=Path, required=True, help="folder of <class>/ folders")
    p.add_argument(
        "--splits-dir", type=Path, required=True, help="testTrainMulti_7030_splits/ folder"
    )
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=1)
    min_frames_option(p)
    p.set_defaults(run=run_hmdb51)

    p = dataset_command("kinetics400", "Kinetics-400 clips + annotation CSVs -> manifests")
    p.add_argument("--raw-dir", type=Path, required=True, help="folder of the downloaded clips")
    p.add_argument("--csv", type=Path, nargs="+", help="annotation CSVs (train.csv validate.csv)")
    p.add_argument("--list", type=Path, help="'path,label' or '<name> <class_id>' list instead")
    p.add_argument("--list-split", default="train", help="split name for --list (default train)")
    min_frames_option(p)
    p.set_defaults(run=run_kinetics400)

    p = dataset_command("seed", "import the original pipeline's prepared frame archives")
    p.add_argument("--root", type=Path, required=True, help="folder with annotations/ and zips/")
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=1)
    min_frames_option(p)
    p.set_defaults(run=run_seed)

    defaults = SyntheticSpec()
    p = dataset_command("synthetic", "generate and prepare the built-in motion dataset")
    p.add_argument("--num-classes", type=int, default=defaults.num_classes)
    p.add_argument("--videos-per-class", type=int, default=defaults.videos_per_class)
    p.add_argument("--frames", type=int, default=defaults.frames)
    p.add_argument("--width", type=int, default=defaults.width)
    p.add_argument("--height", type=int, default=defaults.height)
    p.add_argument("--fps", type=int, default=defaults.fps)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.set_defaults(run=run_synthetic)

    p = sub.add_parser("partition", help="write client_dist{k}.json partitions of a manifest")
    p.add_argument("--manifest", type=Path, required=True, help="a split's .parquet manifest")
    p.add_argument("--num-clients", type=int, required=True)
    p.add_argument("--scheme", choices=SCHEMES, default="iid")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--classes-per-client", type=int, default=None, help="classes scheme")
    p.add_argument("--dirichlet-alpha", type=float, default=0.1, help="dirichlet scheme")
    p.add_argument("--min-per-client", type=int, default=1, help="dirichlet scheme")
    p.add_argument(
        "--allow-empty-clients",
        action="store_true",
        help="write partitions that leave clients without videos (refused by default)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default <dataset>/partitions/<scheme>-<N>/)",
    )
    p.set_defaults(run=run_partition)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (PrepareError, ManifestError, PartitionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
