"""The bus-I/O area's fixtures: a secured server with the log provisioned (`secured.py`)."""

from secured import bus  # noqa: F401  (a fixture: pytest finds it here)
