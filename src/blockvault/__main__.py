"""``python -m blockvault`` runs the command line."""

from blockvault.cli.main import main

main()
