"""The command-line entrances: ``python -m introspect {train,evaluate,compare,scores,explain}``,
the ``introspect-train`` / ``introspect-evaluate`` scripts and the top-level ``train.py`` /
``evaluate.py`` wrappers all land here."""
