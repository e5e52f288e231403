"""`ray job submit ... -- python ray_jobs/evaluate.py [...]`: same arguments as `instsynth evaluate`."""

import sys

from instsynth.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
