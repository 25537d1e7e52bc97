"""A synthetic dataset whose right answer is known, and a trainer for a classifier on it."""
