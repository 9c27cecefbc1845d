"""Figures and result tables: the only home of matplotlib. Reads files and tensors, never runs a model."""
