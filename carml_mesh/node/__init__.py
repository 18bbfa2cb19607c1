"""The Node: lifecycle, wiring and the CLI."""
