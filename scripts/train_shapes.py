"""Train diffquant's built-in ``zoo:shapes`` model and its adherence scorer on CPU.

    python scripts/train_shapes.py --out DIR  # the shipped weights (~52 min on a 2-vCPU machine, bit-identical)
    python scripts/train_shapes.py --smoke --out /tmp/shapes-smoke   # seconds

See ``diffquant.zoo.shapes.train`` for the stages and their settings.
"""

from __future__ import annotations

import sys

from diffquant.zoo.shapes.train import main

if __name__ == "__main__":
    sys.exit(main())
