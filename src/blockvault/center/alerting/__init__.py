"""Alerts of the Backup Center: conditions that are wrong, told to people once.

Glossary:

condition
    Something wrong the center can see in its own tables, named by a key such as
    ``host-overdue:host7:nightly``: a failed run, a host overdue or offline, a
    failed repository check, a repository nearly full, a revoked agent.
alert
    A row of ``alerts``: one condition from the round that first found it until the
    round that finds it gone (then ``closed``). At most one open alert per key (a
    unique index says so), so a condition that lasts a week is one alert, not 20,000.
target
    Where messages go: an email address (through the center's SMTP settings) or a
    webhook URL (a JSON POST, signed with HMAC-SHA256 when the target has a secret).
rule
    Routes alerts of one event kind, optionally only of one host group, to a target.
delivery
    One message (alert opened, or recovered) to one target: tried by the delivery
    worker until sent, with growing waits after failures and a bounded number of
    tries; never inside the round that evaluates conditions.

``conditions.evaluate`` and ``delivery.deliver`` are the two workers' rounds (tests
call them with a stepped ``Center.clock``); ``config`` reads and changes targets,
rules and the alert settings for the API, the pages and the CLI alike.
"""
