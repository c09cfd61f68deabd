"""Entry point for `ray job submit -- python jobs/review.py [--config FILE]... [key=value]...`."""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package is the uploaded folder, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecmf_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["review", *sys.argv[1:]]))
