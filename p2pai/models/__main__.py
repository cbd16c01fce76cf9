"""`python -m p2pai.models`: fetch the built-in models' files that no package installs (scripts/install.sh)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .builtin import SHARE_DIR, install_share_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2pai.models", description=install_share_files.__doc__)
    parser.add_argument("--share-dir", type=Path, default=SHARE_DIR)
    args = parser.parse_args(argv)
    print(f"built-in model file: {install_share_files(args.share_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
