"""On-policy preference optimization: rollouts of the current policy, labellers that rank them, online DPO."""
