"""NATS JetStream: `csatdist consume`, `csatdist publish` and `csatdist streams`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from csatdist.cli.answer_files import FILE_HELP, Unreadable, load_answers
from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, DatabaseOpt, JsonOpt
from csatdist.cli.output import console, errors, fail, print_json
from csatdist.store import Store

#: consume and publish, commands of csatdist itself (streams_app is `csatdist streams`).
app = typer.Typer()

streams_app = typer.Typer(
    help="Manage the NATS JetStream streams and the durable consumer.", no_args_is_help=True
)

NatsOpt = Annotated[
    str | None, typer.Option("--nats-url", help="NATS server(s). Env CSATDIST_NATS_URL.")
]


@app.command()
def consume(
    database: DatabaseOpt = None,
    nats_url: NatsOpt = None,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Create the streams and the durable consumer if missing, then consume. To "
            "create them and exit: csatdist streams create.",
        ),
    ] = False,
    stream: Annotated[str | None, typer.Option(help="Stream name.")] = None,
    subject_prefix: Annotated[
        str | None, typer.Option(help="Answers for account A arrive on <prefix>.A.")
    ] = None,
    durable: Annotated[str | None, typer.Option(help="Durable consumer name.")] = None,
    batch: Annotated[int | None, typer.Option(help="Messages fetched per commit.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics on this port; 0 = off.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or text.")] = None,
    pause_before_ack: Annotated[
        float, typer.Option(hidden=True, help="Fault injection: wait after commit, before ack.")
    ] = 0.0,
    json_output: JsonOpt = False,
) -> None:
    """Count answers from a NATS JetStream stream; acknowledge each batch after its commit.

    Runs until stopped: SIGTERM finishes the batch in hand and exits. Run several to share the
    work. The streams and the durable consumer must exist (csatdist streams create), or pass
    --create to create what is missing before consuming.
    """
    import asyncio
    import signal

    from prometheus_client import start_http_server

    from csatdist.observability import configure_logging
    from csatdist.stream import Consumer, TopologyMissing

    settings = read_settings(
        database_url=database,
        nats_url=nats_url,
        stream_name=stream,
        stream_subject_prefix=subject_prefix,
        consumer_name=durable,
        consume_batch=batch,
        consume_metrics_port=metrics_port,
        log_level=log_level,
        log_format=log_format,
    )
    configure_logging(settings.log_level, settings.log_format)
    if settings.consume_metrics_port:
        start_http_server(settings.consume_metrics_port, addr=settings.host)

    async def main_loop(store: Store) -> dict[str, int]:
        consumer = Consumer(store, settings, pause_before_ack=pause_before_ack)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, consumer.stop)
        return (await consumer.run(create=create)).as_json()

    with opened_store(settings) as store:
        try:
            stats = asyncio.run(main_loop(store))
        except TopologyMissing as exc:
            raise fail(str(exc), 2) from None
    if json_output:
        print_json(stats)
    else:
        errors.print(
            f"stopped: {stats['messages']} messages, accepted {stats['accepted']}, "
            f"updated {stats['updated']}, duplicates {stats['duplicates']}, "
            f"dead letters {stats['dead_letters']}"
        )


@streams_app.command("create")
def streams_create(
    nats_url: NatsOpt = None,
    stream: Annotated[str | None, typer.Option(help="Stream name.")] = None,
    subject_prefix: Annotated[
        str | None, typer.Option(help="Answers for account A arrive on <prefix>.A.")
    ] = None,
    durable: Annotated[str | None, typer.Option(help="Durable consumer name.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Create the answers stream, the dead-letter stream and the durable consumer where missing,
    say which were created and which existed, and exit (consume --create does the same, then
    consumes). Running it again changes nothing."""
    import asyncio

    from csatdist.stream import StreamUnavailable, Topology, create_topology

    settings = read_settings(
        nats_url=nats_url,
        stream_name=stream,
        stream_subject_prefix=subject_prefix,
        consumer_name=durable,
    )
    try:
        created, existing = asyncio.run(create_topology(Topology.from_settings(settings)))
    except StreamUnavailable as exc:
        raise fail(str(exc), 2) from None
    if json_output:
        print_json({"created": created, "existing": existing})
        return
    for what in created:
        console.print(f"created  {escape(what)}")
    for what in existing:
        console.print(f"existed  {escape(what)}")


@app.command(
    help="Publish a file's answers to the stream, with publish-side de-duplication.\n\n"
    + FILE_HELP
    + "\n\nExits 1 when a line could not be read (the rest is published), 2 when the file "
    "or options are unusable or the stream is missing."
)
def publish(
    file: Annotated[Path, typer.Argument(help="The answers file (see above); - for stdin.")],
    account: AccountOpt,
    nats_url: NatsOpt = None,
    subject_prefix: Annotated[
        str | None, typer.Option(help="Publish on <prefix>.<account>.")
    ] = None,
    per_message: Annotated[
        int, typer.Option(min=1, max=10_000, help="Answers per message (NDJSON).")
    ] = 100,
    json_output: JsonOpt = False,
) -> None:
    import asyncio

    from csatdist.stream import (
        StreamUnavailable,
        TopologyMissing,
        chunk_payloads,
        publish_answers,
    )

    check_account(account)
    settings = read_settings(nats_url=nats_url, stream_subject_prefix=subject_prefix)
    items = load_answers(file)
    readable = [answer for _, answer in items if not isinstance(answer, Unreadable)]
    unreadable = [
        {"index": index, "reason": answer.reason}
        for index, answer in items
        if isinstance(answer, Unreadable)
    ]
    with Progress(
        TextColumn("publishing"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=errors,
        disable=json_output or not errors.is_terminal,
    ) as progress:
        task = progress.add_task("publish", total=len(readable))
        try:
            report = asyncio.run(
                publish_answers(
                    settings,
                    account,
                    chunk_payloads(readable, per_message),
                    lambda n: progress.advance(task, n),
                )
            )
        except (TopologyMissing, StreamUnavailable) as exc:
            raise fail(str(exc), 2) from None
    report.unreadable = unreadable
    if json_output:
        print_json(report.as_json())
    else:
        console.print(
            f"published [green]{report.answers}[/] answers in {report.messages} messages "
            f"({report.duplicates} already in the stream); "
            f"unreadable lines [red]{len(unreadable)}[/]"
        )
        for entry in unreadable[:10]:
            console.print(f"  line {entry['index']}: {entry['reason']}")
    if unreadable:
        raise typer.Exit(1)
