"""CLI command modules: thin wrappers over library functions."""
