"""``transferdet import-spec SPEC [--name NAME] [--output-dir DIR] [--force]``."""

from __future__ import annotations

import argparse
import os
import sys

from transferdet.config.tlt_spec import default_output_root, import_spec
from transferdet.errors import TransferdetError

EXIT_USER_ERROR = 2


def main(argv: list[str]) -> int:
    """``transferdet import-spec``: returns the exit status (2 for a user's mistake)."""
    parser = argparse.ArgumentParser(
        prog="transferdet import-spec",
        description="Convert a TLT/TAO DetectNet_v2 experiment spec (protobuf text format) into a transferdet "
        "experiment config, listing every key that has no counterpart.",
    )
    parser.add_argument("spec", help="the TLT spec file, e.g. detectnet_v2_train_resnet18_kitti.txt")
    parser.add_argument("--name", help="experiment name (default: the spec's file name)")
    parser.add_argument(
        "--output-dir",
        help=f"config root to write experiment/<name>.yaml under (default: transferdet's own, {default_output_root()})",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing experiment of that name")
    args = parser.parse_args(argv)
    try:
        target, imported = import_spec(args.spec, args.name, args.output_dir, args.force)
    except TransferdetError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"transferdet import-spec: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    name = target.stem
    print(f"wrote {target}: {', '.join(imported.groups)}")
    for note in imported.notes:
        print(f"note: {note}")
    if imported.unmapped:
        print(f"{len(imported.unmapped)} spec keys have no transferdet counterpart and were left out:")
        for key in imported.unmapped:
            print(f"  {key}")
    search = "" if args.output_dir is None else f" 'hydra.searchpath=[file://{os.path.abspath(args.output_dir)}]'"
    print(f"train with: transferdet train experiment={name}{search}")
    return 0
