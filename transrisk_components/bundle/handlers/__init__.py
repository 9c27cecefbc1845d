"""Ignite handlers: resumable checkpoints, learning curves, region metrics and their files."""
