"""Finding the neurons that carry knowledge to forget (paths, statistics)."""
