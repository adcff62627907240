"""Example ifval plugin package. Its scorer is in :mod:`ifval_example_scorer.scaled_r2`."""
