"""`python -m stepstream.cli`: the same CLI as the `stepstream` command."""

from stepstream.cli import main

main()
