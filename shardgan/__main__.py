"""`python -m shardgan`: the same command line as `shardgan`."""

import sys

from .cli import main

sys.exit(main())
