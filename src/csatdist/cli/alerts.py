"""`csatdist alerts`: alert rules, a test delivery and the deliveries log (EXTENSIONS.md
section 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, DatabaseOpt, JsonOpt
from csatdist.cli.output import (
    console,
    count_of,
    errors,
    fail,
    notice,
    print_json,
    print_rows,
    when,
)
from csatdist.clock import system_clock_ms
from csatdist.errors import CsatError
from csatdist.sealing import SealingError, load_secret_box
from csatdist.settings import Settings
from csatdist.store import Store

app = typer.Typer(
    help="Manage alert rules: webhooks called when an account's CSAT score drops below a "
    "threshold. The same rules as PUT/GET/DELETE /api/account/{id}/csat/alerts/{name}; "
    "see docs/alerts.md.",
    no_args_is_help=True,
)

RuleNameOpt = Annotated[
    str, typer.Option("--name", help="The rule's name: 1-64 of A-Z a-z 0-9 _ -.")
]

#: The PUT body's fields as this command's options, to name them in error messages.
_RULE_OPTIONS = {
    "name": "--name",
    "timeframe": "--timeframe",
    "skillIds": "--skills",
    "agentIds": "--agents",
    "below": "--below",
    "minAnswers": "--min-answers",
    "bound": "--bound",
    "webhook": "--webhook",
    "format": "--format",
}


def _alert_policy(settings: Settings) -> Any:
    from csatdist.http.runtime import alert_policy  # the server's own reading of the settings

    return alert_policy(settings)


class _ServerKey:
    """The server key's box, loaded when a secret is first sealed or opened, so a command
    refused before that makes no key file. Making one is announced: a server that reads another
    key could not sign this rule's deliveries."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._box: Any = None  # a csatdist.sealing.SecretBox once loaded

    def _load(self) -> Any:
        if self._box is None:
            key_file = Path(self._settings.secret_key_file)
            existed = bool(self._settings.secret_key) or key_file.exists()
            try:
                self._box = load_secret_box(self._settings.secret_key, key_file)
            except (SealingError, OSError) as exc:
                raise fail(str(exc), 2) from None
            if not existed:
                notice(
                    f"created the server key {key_file}: servers must read this key "
                    "(CSATDIST_SECRET_KEY_FILE or CSATDIST_SECRET_KEY) to sign this rule's "
                    "deliveries"
                )
        return self._box

    def seal(self, secret: str) -> bytes:
        sealed: bytes = self._load().seal(secret)
        return sealed

    def open(self, sealed: bytes) -> str:
        secret: str = self._load().open(sealed)
        return secret


def _rule_problem(exc: CsatError) -> typer.Exit:
    from csatdist.errors import InvalidRequest

    if isinstance(exc, InvalidRequest) and exc.invalid_params:
        return fail(
            "; ".join(
                f"{_RULE_OPTIONS.get(p.name, p.name)}: {p.reason}" for p in exc.invalid_params
            ),
            2,
        )
    return fail(exc.detail, 2)


def _percent_text(ratio: float) -> str:
    return f"{ratio * 100:g} %"


def _rule_sentence(reply: dict[str, Any]) -> str:
    """What a rule watches, in words: when it fires and when it resolves."""
    from csatdist.alerts import parse_rule, resolve_at

    rule = parse_rule(reply["name"], reply)
    measured = "the CSAT score" if rule.bound == "score" else "the upper end of its 95 % interval"
    scope = [
        f"{kind} {reply[field]}"
        for kind, field in (("skills", "skillIds"), ("agents", "agentIds"))
        if reply[field] is not None
    ]
    return (
        f"fires when {measured} over the last {rule.timeframe} min"
        f"{' (' + ', '.join(scope) + ')' if scope else ''} is below {_percent_text(rule.below)} "
        f"with at least {rule.min_answers} answer{'s' if rule.min_answers != 1 else ''}; "
        f"resolves at {_percent_text(resolve_at(rule))}; {rule.format} to {rule.webhook}"
    )


@app.command("create")
def alerts_create(
    account: AccountOpt,
    name: RuleNameOpt,
    timeframe: Annotated[str, typer.Option(help="Minutes, 1..1440: the window watched.")],
    below: Annotated[str, typer.Option(help="Fire when the score is below this ratio, e.g. 0.7.")],
    webhook: Annotated[str, typer.Option(help="The https URL deliveries are POSTed to.")],
    min_answers: Annotated[
        str | None, typer.Option(help="Answers the window needs before it can fire. [default: 1]")
    ] = None,
    bound: Annotated[
        str | None,
        typer.Option(help="score, or wilson_high: the 95 % interval's upper end. [default: score]"),
    ] = None,
    skills: Annotated[str | None, typer.Option(help="'all' or comma-separated skill ids.")] = None,
    agents: Annotated[str | None, typer.Option(help="'all' or comma-separated agent ids.")] = None,
    format_: Annotated[
        str | None, typer.Option("--format", help='json, or slack: {"text": …}. [default: json]')
    ] = None,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create an alert rule, or replace the one of that name (like PUT: a replaced rule keeps
    its secret and state). A new rule's secret is printed once."""
    from csatdist.alerting import save_rule

    check_account(account)
    settings = read_settings(database_url=database)
    document = {
        "timeframe": timeframe,
        "skillIds": skills,
        "agentIds": agents,
        "below": below,
        "minAnswers": min_answers,
        "bound": bound,
        "webhook": webhook,
        "format": format_,
    }
    policy = _alert_policy(settings)
    box: Any = _ServerKey(settings)  # a SecretBox, loaded only when a secret is sealed
    with opened_store(settings) as store:
        try:
            created, reply = save_rule(
                store, box, account, name, document, policy, system_clock_ms()
            )
        except CsatError as exc:
            raise _rule_problem(exc) from None
    if json_output:
        print_json(reply)
        return
    verb = "created" if created else "replaced"
    console.print(f"{verb} alert rule {escape(name)} for account {account}", highlight=False)
    console.print(escape(_rule_sentence(reply)), highlight=False)
    if created:
        console.print(
            f"secret (shown once; deliveries carry X-CSAT-Signature: sha256=HMAC-SHA256 of the "
            f"body with it): [bold cyan]{reply['secret']}[/]",
            highlight=False,
        )
    else:
        console.print("its secret is unchanged (shown only when the rule was created)")


RULE_HEADERS = ("name", "state", "since", "fires when", "last value", "webhook")


def _rule_row(rule: dict[str, Any]) -> tuple[str, ...]:
    """A rule on one line: what it watches in short (``score < 70 % over 60 min, ≥ 20 answers,
    skills 12``), its state and its last evaluation (``64.0 % of 50``)."""
    measure = "score" if rule["bound"] == "score" else "CI high"
    watches = [
        f"{measure} < {_percent_text(rule['below'])} over {rule['timeframe']} min",
        f"\u2265 {count_of(rule['minAnswers'], 'answer')}",
    ]
    watches += [
        f"{kind} {rule[field]}"
        for kind, field in (("skills", "skillIds"), ("agents", "agentIds"))
        if rule[field] is not None
    ]
    last = "-"
    if rule["value"] is not None:
        last = f"{rule['value'] * 100:.1f} % of {rule['totalAnswers']}"
    return (
        rule["name"],
        rule["state"],
        "-" if rule["stateSince"] is None else when(rule["stateSince"]),
        ", ".join(watches),
        last,
        f"{rule['webhook']} ({rule['format']})",
    )


@app.command("list")
def alerts_list(
    account: AccountOpt, database: DatabaseOpt = None, json_output: JsonOpt = False
) -> None:
    """List an account's alert rules with their state (--json: the GET …/alerts body)."""
    from csatdist.alerting import rule_json

    check_account(account)
    with opened_store(read_settings(database_url=database)) as store:
        rules = [rule_json(rule) for rule in store.alert_rules(account)]
    if json_output:
        print_json({"alerts": rules})
        return
    print_rows(RULE_HEADERS, [_rule_row(rule) for rule in rules], whole=("name",))


@app.command("delete")
def alerts_delete(
    account: AccountOpt,
    name: RuleNameOpt,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Delete an alert rule with its deliveries (pending ones are never sent)."""
    check_account(account)
    with opened_store(read_settings(database_url=database)) as store:
        deleted = store.delete_alert_rule(account, name)
    if not deleted:
        raise fail(f"no alert rule named {name[:64]!r} in account {account!r}")
    if json_output:
        print_json({"account": account, "name": name, "deleted": True})
    else:
        console.print(f"alert rule {escape(name)} deleted from account {account}", highlight=False)


@app.command("test")
def alerts_test(
    account: AccountOpt,
    name: RuleNameOpt,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Send a signed test notification ({"state": "test"}) to the rule's webhook now, once, and
    print the receiver's answer (--json: the POST …/test body). Exits 1 when it failed."""
    import asyncio

    from csatdist.alerting import send_test
    from csatdist.webhooks import webhook_client

    check_account(account)
    settings = read_settings(database_url=database)
    policy = _alert_policy(settings)
    box: Any = _ServerKey(settings)

    async def send(store: Store) -> dict[str, Any] | None:
        async with webhook_client() as client:
            return await send_test(
                store, client, box, policy, account, name, now_ms=system_clock_ms()
            )

    with opened_store(settings) as store:
        try:
            result = asyncio.run(send(store))
        except SealingError as exc:
            raise fail(str(exc), 2) from None
    if result is None:
        raise fail(f"no alert rule named {name[:64]!r} in account {account!r}")
    if json_output:
        print_json(result)
    elif result["ok"]:
        console.print(
            f"test delivery {result['delivery']}: the receiver answered {result['status']} "
            f"in {result['durationMs']} ms",
            highlight=False,
        )
    else:
        errors.print(
            f"[bold red]test delivery failed:[/] {escape(result['error'])} "
            f"(delivery {result['delivery']}, {result['durationMs']} ms)",
            highlight=False,
        )
    if not result["ok"]:
        raise typer.Exit(1)


def _delivery_rows(delivery: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per attempt (one row for a delivery not tried yet)."""
    outcome = delivery["outcome"]
    if outcome == "pending" and delivery["nextAttemptAt"] is not None:
        outcome = f"pending, next {when(delivery['nextAttemptAt'])}"
    head = (delivery["id"], delivery["state"], when(delivery["createdAt"]), outcome)
    if not delivery["attempts"]:
        return [(*head, "-", "-", "-", "-", "")]
    return [
        (
            *head,
            str(number),
            when(attempt["at"]),
            "-" if attempt["status"] is None else str(attempt["status"]),
            str(attempt["durationMs"]),
            attempt["error"] or "",
        )
        for number, attempt in enumerate(delivery["attempts"], start=1)
    ]


@app.command("deliveries")
def alerts_deliveries(
    account: AccountOpt,
    name: RuleNameOpt,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="The latest deliveries shown.")] = 50,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """The rule's deliveries, newest first, with every attempt (--json: the GET
    …/alerts/{name}/deliveries body)."""
    from csatdist.http.routes.alerts import delivery_json

    check_account(account)
    with opened_store(read_settings(database_url=database)) as store:
        if store.alert_rule(account, name) is None:
            raise fail(f"no alert rule named {name[:64]!r} in account {account!r}")
        found = [delivery_json(d) for d in store.deliveries(account, name, limit)]
    if json_output:
        print_json({"deliveries": found})
        return
    print_rows(
        ("delivery", "state", "created", "outcome", "attempt", "at", "status", "ms", "error"),
        [row for delivery in found for row in _delivery_rows(delivery)],
        whole=("delivery",),
        numeric=("attempt", "status", "ms"),
    )
