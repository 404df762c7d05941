"""Finding the neurons that carry knowledge to forget: streamed activation statistics (MANU), attribution paths (MIP-Editor)."""
