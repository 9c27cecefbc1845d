"""Where a bundle run reads and writes: paths, fingerprint records, the risk maps' manifest, inference I/O."""
