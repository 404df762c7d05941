"""The package version, imported by the package and recorded in results.json (pyproject.toml states the same)."""
__version__ = "0.1.0"
