"""The commands: one module per job, each built on the stages and the run lifecycle."""
