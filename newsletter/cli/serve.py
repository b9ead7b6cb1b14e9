"""`newsletter serve`: the web app (readers' pages) under uvicorn."""

from __future__ import annotations

import click

from newsletter.cli.common import App, pass_app


@click.command("serve")
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: web.port, 8000).")
@pass_app
def serve(app: App, host: str | None, port: int | None) -> None:
    """Serve the readers' pages: sign up, confirm, unsubscribe, preferences, archive."""
    import uvicorn

    from newsletter import db
    from newsletter.web.app import create_app
    from newsletter.web.security import RedactTokens

    settings = app.settings
    db.check_schema(app.engine)
    web = create_app(settings)
    log_config = dict(uvicorn.config.LOGGING_CONFIG)
    log_config["filters"] = {"redact": {"()": RedactTokens}}
    handlers = {name: dict(h) for name, h in log_config["handlers"].items()}
    for handler in handlers.values():
        handler["filters"] = ["redact"]
    log_config["handlers"] = handlers
    host = host or settings.web.host
    port = port or settings.web.port
    click.echo(
        f"serving {settings.site.base_url} on http://{host}:{port}/ (Ctrl-C to stop)", err=True
    )
    uvicorn.run(web, host=host, port=port, log_config=log_config, proxy_headers=False)
