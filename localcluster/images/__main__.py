"""``python -m localcluster.images build | list``."""

from __future__ import annotations

import argparse
import sys

from localcluster.images import images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.images", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the images whose inputs changed (cached outside the repo)")
    commands.add_parser("list", help="show each image's ref and archive, and whether it is built; builds nothing")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            for image in images.ensure_built().values():
                took = "already built" if image.build_seconds is None else f"built in {image.build_seconds:.1f} s"
                print(f"{image.ref}\t{image.archive}\t{took}")
        elif args.command == "list":
            for image in images.plan().values():
                state = f"{image.archive.stat().st_size / 2**20:.1f} MiB" if image.archive.is_file() else "not built"
                print(f"{image.ref}\t{image.archive}\t{state}")
    except images.ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
