"""Judging attribution quality: counterfactual retraining, LDS, baselines, benchmarks."""
