"""The dashboard: server-rendered pages (Jinja2) made live with htmx and server-sent
events; its assets are served by the center itself (no CDN)."""
