"""Same as `metarl demo`: train on Navigation2D, evaluate adaptation on held-out goals, plot."""

import sys

from metarl.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
