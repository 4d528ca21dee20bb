"""Names of the heads in records and tables (torch-free, shared by evaluation and compare)."""

from __future__ import annotations

# Every head a run can evaluate, in table order: "<head>_ts" is the tempered twin of <head>
# (logits / T, T fitted on the calibration split), "mc_dropout" the MC-dropout predictive mean of
# the feed-forward network, "ensemble" the mean softmax of the stage-1 ensemble. "control" is the
# head on the penultimate activations h, "control_hp" the head on [h, softmax output p].
HEADS = (
    "feedforward",
    "feedforward_ts",
    "introspective",
    "introspective_ts",
    "control",
    "control_ts",
    "control_hp",
    "control_hp_ts",
    "mc_dropout",
    "ensemble",
)
SHORT = {
    "feedforward": "FF",
    "feedforward_ts": "FF+TS",
    "introspective": "INT",
    "introspective_ts": "INT+TS",
    "control": "CTL",
    "control_ts": "CTL+TS",
    "control_hp": "CTL(h,p)",
    "control_hp_ts": "CTL(h,p)+TS",
    "mc_dropout": "MCD",
    "ensemble": "ENS",
}
# Each head in words, for figure titles and legends.
WORDS = {
    "feedforward": "feed-forward",
    "feedforward_ts": "feed-forward + TS",
    "introspective": "introspective",
    "introspective_ts": "introspective + TS",
    "control": "control",
    "control_ts": "control + TS",
    "control_hp": "control on h and p",
    "control_hp_ts": "control on h and p + TS",
    "mc_dropout": "MC dropout",
    "ensemble": "ensemble",
}
