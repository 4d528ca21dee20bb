"""Results as tables and records: paired differences, Table-1 layout, comparisons of runs."""
