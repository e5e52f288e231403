"""`ray job submit ... -- python ray_jobs/train.py [...]`: same arguments as `instsynth train`."""

import sys

from instsynth.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
