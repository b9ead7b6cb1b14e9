"""The web face: the readers' pages (FastAPI, Jinja2, no JavaScript needed)."""
