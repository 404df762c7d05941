"""Benchmarks on disk -> plain ``Item`` records -> model batches."""
from .clear import load_clear
from .items import Benchmark, Item
from .mllmu import BenchmarkFormatError, load_mllmu
from .synthetic import WorldConfig, generate_world

__all__ = ["Benchmark", "Item", "BenchmarkFormatError", "load_mllmu", "load_clear", "WorldConfig", "generate_world"]
