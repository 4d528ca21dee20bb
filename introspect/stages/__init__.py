"""The stages of a run: stage 1, introspective features, stage-2 heads, baselines, evaluation."""
