"""Real-run benchmark client: replays a workload against an OpenAI-compatible server."""
