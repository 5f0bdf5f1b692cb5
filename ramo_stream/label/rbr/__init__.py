"""Rule-Based Rewards at the labeling stage: propositions graded by the grader, the gold
set's completions, and the fitted weights as a versioned artifact."""
