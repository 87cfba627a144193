"""`python -m devtools.simulator`: what the local launcher starts for each step."""
import sys

from devtools.simulator.worker import main

sys.exit(main())
