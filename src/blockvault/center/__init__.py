"""The Backup Center: one server that manages the agents of many machines.

Glossary:

center
    The server process (``blockvault center serve``): a web API under ``/api/v1``, a
    dashboard, and background workers (job dispatch, maintenance, alerts), over one
    database (SQLite by default, PostgreSQL for larger sites).
host
    A machine whose agent enrolled. The agent dials out to the center and holds
    one long-poll connection; the center never connects in.
central plan
    A backup plan defined on the center for a host or a group, pushed to agents that
    cache it and run it on schedule, also while the center is unreachable.
job
    A remote operation (run a plan now, restore, browse, verify, deploy, prune): a row
    the center queues and an agent (or the center's maintenance worker) runs in the
    background, reporting progress; never work done inside an HTTP request.
principal
    Who makes a request: a user (session cookie or API token, with a role and host
    groups) or an agent (its own key, only the agent API).

Server modules need the ``center`` extra (FastAPI, SQLAlchemy, ...); the agent side
(:mod:`blockvault.center.link`) needs only httpx.
"""
