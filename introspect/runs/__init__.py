"""Run directories, loggers, trainers and the end-to-end pipeline."""

from introspect.runs.rundir import build_loggers, prepare_run_dir, write_json_atomic

__all__ = ["build_loggers", "prepare_run_dir", "write_json_atomic"]
