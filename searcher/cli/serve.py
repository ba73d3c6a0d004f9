"""`searcher serve`: keep the model warm and answer queries over HTTP (JSON)."""

from __future__ import annotations

from typing import Annotated

import typer

from searcher.cli.app import DebugOption, LibraryOption, RuntimeOption, app, console, err_console, handle_errors


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback only by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 8765,
    backbone: Annotated[
        str | None, typer.Option("--backbone", "-b", help="Answer with this backbone's vectors.", show_default=False)
    ] = None,
    pooling: Annotated[str | None, typer.Option(help="Use the vectors made with this pooling.")] = None,
    runtime: RuntimeOption = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest accepted upload.")] = 64,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every request on stderr.")] = False,
    token: Annotated[
        str | None,
        typer.Option(envvar="SEARCHER_TOKEN", help="Token every request must carry (needed off loopback).",
                     show_default=False),
    ] = None,
    generate_token: Annotated[
        bool, typer.Option("--generate-token", help="Make a random token and print it (for a non-loopback host).")
    ] = False,
    library: LibraryOption = None,
    debug: DebugOption = False,
) -> None:
    """Serve the web app (search, browse, duplicates, status) and the JSON API, model kept loaded.

    Open http://127.0.0.1:8765/ in a browser. JSON: GET /health, GET /info,
    GET /query?path=<indexed image>&k=10&threshold=0.8, POST /query with an image (raw body or
    multipart field 'image'). Loopback only unless a token is given (--token, SEARCHER_TOKEN or
    --generate-token); state changes need the page's CSRF token. Ctrl-C stops it.
    """
    from rich.markup import escape

    from searcher.serve import is_loopback, make_server
    from searcher.web import generate_token as new_token

    if generate_token and not token:
        token = new_token()
        err_console.print(f"token: {token}  (open the server once with ?token=<token>)")
    if not is_loopback(host) and not token:
        err_console.print(
            f"[red]error:[/] refusing to listen on {escape(host)} without a token: anyone who can reach it "
            "could read and move your files. Pass --token, set SEARCHER_TOKEN, or use --generate-token"
        )
        raise typer.Exit(2)
    err_console.print("loading the library and the model ...")
    server = make_server(
        library, host, port, backbone=backbone, pooling=pooling,
        max_upload=int(max_upload_mb * 1024 * 1024), verbose=verbose, token=token,
    )  # fmt: skip
    health = server.service.health()
    console.print(
        f"serving {escape(health['library'])} ({health['vectors']} vectors, {health['backbone']}, "
        f"{health['index']} index) on {server.url}  (Ctrl-C stops)"
    )
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        err_console.print("stopped")
    finally:
        server.server_close()
