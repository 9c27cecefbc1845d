"""Engine adapters: the task-label transform, the risk map's way from the batch into the loss, source weights."""
