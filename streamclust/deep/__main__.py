"""``python -m streamclust.deep train|encode RUN_DIR ...``: the same as ``streamclust train|encode``."""

import sys

from ..cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
