"""``python -m streams`` runs the command line."""

from streams._cli import main

main()
