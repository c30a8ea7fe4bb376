"""The runtime: executes a compiled plan (kernel launches and ATen calls over planned buffers).

It imports nothing from the passes or the tuning database: a plan is data, and nothing is compiled or
tuned at run time.
"""
