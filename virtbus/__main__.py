"""`python -m virtbus`: the `virtbus` command, as the console script runs it."""

from virtbus.cli import main

main()
