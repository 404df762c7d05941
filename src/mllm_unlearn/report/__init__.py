"""Reports built from results.json alone."""
from .markdown import render_markdown

__all__ = ["render_markdown"]
