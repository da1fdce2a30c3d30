"""The longer CLI commands, one module each (train, search)."""
