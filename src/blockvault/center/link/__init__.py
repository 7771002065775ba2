"""The agent's side of the center: enrolment, the long-poll link, cached central
plans, and the jobs the center hands out. Needs httpx only, never the server's
libraries."""
