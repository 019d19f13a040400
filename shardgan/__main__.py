"""`python -m shardgan`: the same command line as `shardgan`."""

from .cli import main

main()
