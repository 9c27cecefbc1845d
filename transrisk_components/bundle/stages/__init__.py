"""One-off stages that run before fine-tuning: :mod:`.source` trains the source model, :mod:`.risk` computes the
risk map of every target training case once (its options in :mod:`.risk_options`, its passes over the cases in
:mod:`.risk_passes`, its cache folder and manifest in :mod:`.risk_cache`); :mod:`.safe` races the fine-tuning
candidates."""
