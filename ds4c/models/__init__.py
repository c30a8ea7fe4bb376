"""Plain-PyTorch model definitions that ds4c captures (the Llama family)."""
