"""The supervisor's decisions: which version of each model to serve (one decision point per model)."""
