"""The run lifecycle: run directories, locks, status, provenance, integrity seals, faults,
trainers and processes."""
