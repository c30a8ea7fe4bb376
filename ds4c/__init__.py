"""ds4c: a kernel auto-tuning compiler for PyTorch models.

Data flows one way: capture (FX graph at ATen level) -> IR (networkx) -> passes -> kernel templates
(Triton source with named holes) -> tuning database (Optuna) -> plan -> runtime.
"""

__version__ = "0.1.0"
