"""Unlearning methods, one file each, registered by name."""
from .base import METHODS, GradientMethod, Method, MethodConfig, available_methods, get_method, register_method

__all__ = ["METHODS", "GradientMethod", "Method", "MethodConfig", "available_methods", "get_method", "register_method"]
