"""Evaluation: samples, ground-truth rewards, KL, preference-pair generation, the frontier, win rates."""
