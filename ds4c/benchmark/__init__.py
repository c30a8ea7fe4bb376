"""ds4c bench: one Llama workload under several engines side by side, written as one JSON record.

Sits at the end of the pipeline, outside it: it runs the eager model, torch.compile (inductor) and the ds4c
engine on the same weights and measures time to first token, decode speed, energy, memory, kernel launches,
compile time and correctness, next to ceilings (copy bandwidth, matmul rate) measured in the same run.

Modules: roofline (ceilings and floors), measure (timing, energy, launches, memory), engines (adapters),
runner (the benchmark loop), record (the JSON record), cli (the `bench` click command), plot (--plot).
"""
