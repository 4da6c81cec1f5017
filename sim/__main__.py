"""`python -m sim` runs the `splitsim` command line."""

from sim.cli import main

raise SystemExit(main())
