"""The classifier a job names: its architecture, weights, preprocessing and class names."""
