"""Stage 6, eval: how good the reward model is, on RewardBench-style rows.

In: rows ``{"prompt", "chosen", "rejected", "subset"}`` (``score_rows``), registry versions
or a running reward service. Out: accuracy per subset, section and overall (``evaluate``).
"""
