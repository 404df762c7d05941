"""Reports built from results.json alone (shared building blocks: common.py)."""
from .common import load_results
from .html import compare_markdown, render_html
from .markdown import render_markdown

__all__ = ["render_markdown", "render_html", "compare_markdown", "load_results"]
