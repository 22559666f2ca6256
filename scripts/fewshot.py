"""Same as `metarl fewshot ...` (see `metarl fewshot --help`)."""

import sys

from metarl.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["fewshot", *sys.argv[1:]]))
