"""Write tiny random diffusers pipelines for all three generators: `python scripts/make_tiny_models.py OUT`.

For the tests and for smoke-testing a cluster without weights; configs/generators/*.tiny.yaml point at
<repo>/models/tiny/ (the default OUT), relative to themselves, so they run from any working directory.
"""

import argparse
import os

from instsynth.generators.tiny import make_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "models", "tiny"))
    ap.add_argument("--resolution", type=int, default=64)
    a = ap.parse_args()
    for name, path in make_all(a.out, a.resolution).items():
        print(f"{name:<14} {path}")
