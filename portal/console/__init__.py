"""The web console: server-rendered pages (Jinja2) for operators and data users."""
