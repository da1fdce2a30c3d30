"""The longer CLI commands, one module each (train, search, export, evaluate), and
`options.py`, the option groups and `CliError` that they and `nas_engine/cli.py` share."""
