"""Models, data, training loop and configs that reproduce the paper's experiments with the public API."""
