"""The tuning database and the Optuna tuner: per-GPU best configs for each kernel problem.

Sits between kernel_templates (search spaces, validity, references) and the compiler, which asks
`TuningDB().lookup(template, problem, gpu)` for a config (None: use template.default). Modules:
key (stable tuning keys), measure (check then time one config), tuner (Optuna ask/tell over the valid
space), workers (many processes, one storage), db (the storage contract), portable (export/import/merge),
cli (`tune` factory and the `db` group).
"""
