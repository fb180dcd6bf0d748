"""On-policy preference optimization: rollouts of the current policy (labelled by `eval.labellers`), online DPO."""
