"""The components the stages run: :mod:`.source` trains the source model, :mod:`.risk` computes the risk map of every
target training case once (its options in :mod:`.risk_options`, its passes over the cases in :mod:`.risk_passes`,
its cache folder in :mod:`.risk_cache`), :mod:`.risk_export` writes them out for people, :mod:`.ranking` ranks
candidate source models."""
