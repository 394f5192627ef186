"""`python -m gateway` runs the `sse-gateway` command."""

import sys

from .cli import main

sys.exit(main())
