"""Evaluation: answer a question set with each model, grade the answers, report means with confidence
intervals, pairwise win rates, and reward accuracy on held-out preference pairs."""
