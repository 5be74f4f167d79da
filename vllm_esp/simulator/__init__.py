"""Discrete-event simulator of ESP and baseline deployments, driving the production planner.

Kept import-light: ``vllm-esp --help`` imports ``vllm_esp.simulator.cli``, which imports the
rest only when a simulation actually runs. No torch, no vllm.
"""
