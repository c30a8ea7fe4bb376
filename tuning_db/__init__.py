"""The tuning database and the Optuna tuner: per-GPU best configs for each kernel problem."""
