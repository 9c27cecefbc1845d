"""One-off stages that run before fine-tuning: :mod:`.source` trains the source model, :mod:`.risk` computes the
risk map of every target training case once."""
