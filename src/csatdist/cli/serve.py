"""`csatdist serve`: the HTTP service, in one process or in worker processes, with --demo's live
answers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from csatdist.cli.common import opened_store, read_settings
from csatdist.cli.options import DatabaseOpt, JsonOpt
from csatdist.cli.output import console, fail, print_json
from csatdist.clock import system_clock_ms
from csatdist.demo import DAY_MS, AnswerSimulator, backfill, prepare_demo_keys, seed_history
from csatdist.settings import Settings, worker_count
from csatdist.store import Store

app = typer.Typer()


@app.command()
def serve(
    database: DatabaseOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address. Env CSATDIST_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port. Env CSATDIST_PORT.")] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Create a demo account and keys; feed live answers.")
    ] = False,
    max_concurrent_requests: Annotated[
        int | None, typer.Option(help="Queries in flight per account before 429.")
    ] = None,
    max_concurrent_requests_global: Annotated[
        int | None, typer.Option(help="Queries in flight on this server before 429.")
    ] = None,
    retention_minutes: Annotated[
        int | None, typer.Option(help="Retention in minutes (>= 1445).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or text.")] = None,
    tls_cert: Annotated[
        str | None, typer.Option("--tls-cert", help="PEM certificate: serve HTTPS.")
    ] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    external_url: Annotated[
        str | None, typer.Option(help="The URL clients use to reach this server.")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis for limits shared by all replicas.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes; 0 = one per CPU core. Env CSATDIST_WORKERS."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Run the HTTP service (one worker process per CPU core by default)."""
    import uvicorn

    from csatdist.allocator import fix_mmap_threshold
    from csatdist.http import create_app
    from csatdist.http.protocol import protocol_for
    from csatdist.observability import configure_logging

    settings = read_settings(
        database_url=database,
        host=host,
        port=port,
        demo=demo or None,
        max_concurrent_requests=max_concurrent_requests,
        max_concurrent_requests_global=max_concurrent_requests_global,
        retention_minutes=retention_minutes,
        log_level=log_level,
        log_format=log_format,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        external_url=external_url,
        redis_url=redis_url,
        workers=workers,
    )
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise fail("--tls-cert and --tls-key go together", 2)
    for path in (settings.tls_cert_file, settings.tls_key_file):
        if path and not Path(path).is_file():
            raise fail(f"{path} is not a readable file", 2)
    configure_logging(settings.log_level, settings.log_format)
    fix_mmap_threshold()
    count = worker_count(settings)
    if count > 1:
        _serve_workers(settings, count, json_output)
        return
    with opened_store(settings) as store:
        if settings.demo:
            _start_demo(store, settings, json_output)
        app_ = create_app(settings, store=store)
        uvicorn.run(app_, http=protocol_for(settings), **_uvicorn_options(settings))


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``uvicorn.run`` is given the same in one process and with workers."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 10,
        "ssl_certfile": settings.tls_cert_file,
        "ssl_keyfile": settings.tls_key_file,
    }


def _serve_workers(settings: Settings, count: int, json_output: bool) -> None:
    """``count`` worker processes on one port, each new connection handed to the one holding
    the fewest (``csatdist.http.workers``), sharing the limits and nonces through shared memory
    this process creates and removes."""
    import shutil
    import tempfile

    import uvicorn

    from csatdist.http.workers import Supervisor
    from csatdist.observability import MULTIPROCESS_DIRECTORY
    from csatdist.shared import STATE_VARIABLE, SharedState

    with opened_store(settings) as store:  # migrations once, and the demo's keys and answers
        if settings.demo:
            _start_demo(store, settings, json_output)
    directory = Path(tempfile.mkdtemp(prefix="csatdist-workers-"))
    shared = SharedState.create(settings, directory)
    for name, value in settings.model_dump().items():  # the workers read their settings here
        if value is not None:
            os.environ[f"CSATDIST_{name.upper()}"] = str(value)
    os.environ[STATE_VARIABLE] = shared.variable()
    metrics = directory / "metrics"  # each worker's series, summed by /metrics
    metrics.mkdir()
    os.environ[MULTIPROCESS_DIRECTORY] = str(metrics)
    config = uvicorn.Config(
        "csatdist.http.app:worker_app",
        factory=True,
        workers=count,
        http="csatdist.http.protocol:FromSettings",
        **_uvicorn_options(settings),
    )
    try:
        status = Supervisor(config, count).run()
    finally:
        shared.unlink()
        shutil.rmtree(directory, ignore_errors=True)
    if status:
        raise typer.Exit(status)


def _start_demo(store: Store, settings: Settings, json_output: bool) -> None:
    now = system_clock_ms()
    keys = prepare_demo_keys(store, settings.demo_account, now)
    history_days = seed_history(
        store, settings.demo_account, AnswerSimulator(), now, settings.retention_minutes
    )
    seeded = backfill(
        store, settings.demo_account, AnswerSimulator(), now, settings.retention_minutes
    )
    scheme = "https" if settings.tls_cert_file else "http"
    base = f"{scheme}://{settings.host}:{settings.port}"
    account = settings.demo_account
    query_url = f"{base}/operations/api/account/{account}/msgcsatdistribution?v=1&timeframe=60"
    info = {
        "account": account,
        "read_token": keys.read_token,
        "write_token": keys.write_token,
        "query_url": query_url,
        "ingest_url": f"{base}/api/account/{account}/csat/answers",
        "dashboard_url": f"{base}/dashboard",
        "seeded_answers": seeded.accepted,
        "seeded_history_days": history_days,
        "seeded_from_ms": seeded.start_ms,
        "resumed": seeded.resumed,
        "revoked_demo_keys": keys.revoked,
    }
    if json_output:
        print_json(info)
        return
    console.print(f"[bold green]csatdist demo[/] on {base} — account [bold]{account}[/]")
    if seeded.resumed:
        console.print(
            f"  seeded {seeded.accepted} answers for the {_duration(now - seeded.start_ms)} since "
            "the latest answer stored (earlier runs' answers are kept); more arrive live"
        )
    else:
        console.print(f"  seeded {seeded.accepted} answers over the last 24 h; more arrive live")
    if history_days:
        console.print(f"  seeded {history_days} days of history before them, for reports")
    if keys.revoked:
        console.print(
            f"  revoked the {keys.revoked} demo keys of the previous run: use the new ones "
            "below (sign in to the dashboard again)"
        )
    console.print(f"  dashboard: [cyan]{base}/dashboard[/] (account {account}, the read key)")
    console.print(f"  read key : [cyan]{keys.read_token}[/]")
    console.print(f"  write key: [cyan]{keys.write_token}[/]")
    console.print("  try:")
    console.print(
        f"    curl -H 'Authorization: Bearer {keys.read_token}' '{query_url}&skillIds=all'"
    )


def _duration(ms: int) -> str:
    """A gap, roughly, for people: 40 s, 12 min, 3 h 5 min, 24 h."""
    if ms >= DAY_MS:
        return "24 h"
    seconds = ms // 1000
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
