"""ifval plugin that exposes pyDVL 0.10's influence solvers as ifval estimators."""
