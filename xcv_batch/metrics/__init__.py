"""Quality metrics of attribution maps: one registration per metric (registry, settings), one file per metric, and the runner that evaluates the enabled ones on each batch of maps."""
