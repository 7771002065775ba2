"""The center's HTTP API: ``/api/v1`` for people and scripts, ``/agent/v1`` for agents."""
