"""The stage graph of a bundle run: :mod:`.request` (what the run was asked), :mod:`.settings` (every setting
checked), :mod:`.stage` (a stage as a child workflow), :mod:`.fingerprint` (from the resolved config), :mod:`.plan`
(reuse, resume, run or redo), :mod:`.candidates`, :mod:`.selection` (the rule), :mod:`.report`, :mod:`.pipeline`
(the order of the stages), :mod:`.errors` and :mod:`.entry` (what the run ids call)."""
