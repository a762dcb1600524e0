"""`python -m server` runs the `modeldock` command."""

from .cli import main

main()
