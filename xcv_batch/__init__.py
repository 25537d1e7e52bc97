"""xcv_batch: attribution maps and their Max-Sensitivity for image classifiers, at dataset scale."""

__version__ = "0.1.0"
