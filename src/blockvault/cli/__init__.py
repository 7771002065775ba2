"""The command line: a thin layer that turns arguments into library calls and
library results (and errors) into tables, JSON, progress bars and exit codes.

Each command is one module in ``commands/`` with ``register(group)``; it calls one
library function. Only this package prints or exits.
"""
