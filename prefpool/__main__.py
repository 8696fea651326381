"""``python -m prefpool``: the same as the ``prefpool`` command."""

from prefpool.cli import main

main()
