"""The package version (one place; ``fedprostate --version`` and the wheel read it)."""

__version__ = "0.1.0"
