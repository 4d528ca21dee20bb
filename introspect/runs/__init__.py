"""The run lifecycle: run directories and status, trainers, the end-to-end pipeline,
reports and comparisons."""
