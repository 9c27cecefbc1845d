"""Helpers with no knowledge of the method or the data: atomic file writes, distributed rank queries."""
