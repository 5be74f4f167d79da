"""Profiler: measures the live engine and fits the planner's cost model (``vllm-esp profile``).

``estimate`` derives labelled ESTIMATED profiles from FLOP/bandwidth arithmetic; ``measure``
times a real engine; ``cli`` is the subcommand. Importing this package does not import vllm.
"""
