"""Finding the neurons that carry a piece of knowledge: activation statistics, attribution paths."""
