"""Same as `metarl evaluate ...` (see `metarl evaluate --help`)."""

import sys

from metarl.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
