"""`python -m rlcli ...`: the `rlcli` command, for an interpreter whose scripts are not on PATH."""

import sys

from rlcli.cli import main

sys.exit(main())
