"""Reports built from results.json alone."""
from .html import compare_markdown, load_results, render_html
from .markdown import render_markdown

__all__ = ["render_markdown", "render_html", "compare_markdown", "load_results"]
