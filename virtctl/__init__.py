"""The `virtbus` client verbs (virtctl's role): they talk to the bus only."""
