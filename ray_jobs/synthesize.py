"""`ray job submit ... -- python ray_jobs/synthesize.py SOURCE --out OUT [...]`: same arguments as `instsynth synth`."""

import sys

from instsynth.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
