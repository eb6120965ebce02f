"""CLI command modules: thin wrappers over library functions.

Each command imports the library it drives inside its function, so that ``fedprostate --help``
and argument errors answer without importing torch, timm or Flower (the only function-local
project imports allowed by tests/test_layers.py).
"""
