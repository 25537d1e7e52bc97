"""Quality metrics of attribution maps: Max-Sensitivity and the rest, their registry and the runner that evaluates them per batch."""
