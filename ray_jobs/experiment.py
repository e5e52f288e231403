"""`ray job submit ... -- python ray_jobs/experiment.py [...]`: same arguments as `instsynth experiment`."""

import sys

from instsynth.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
