"""`python -m retrain.cli`: the same command line as `retrain`."""

import sys

from retrain.cli.main import main

sys.exit(main())
