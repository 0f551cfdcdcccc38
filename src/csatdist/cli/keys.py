"""`csatdist keys`: create, list and revoke API keys and OAuth 1.0a app keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, DatabaseOpt, JsonOpt
from csatdist.cli.output import console, fail, print_json, print_rows, when
from csatdist.clock import system_clock_ms
from csatdist.keys import SCOPES, issue_key, issue_oauth_key
from csatdist.sealing import SealingError, load_secret_box
from csatdist.settings import Settings
from csatdist.store import ApiKey

app = typer.Typer(help="Manage API keys and OAuth 1.0a app keys.", no_args_is_help=True)


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "kind": key.kind,
        "account": key.account_id,
        "scopes": sorted(key.scopes),
        "label": key.label,
        "created_ms": key.created_ms,
        "revoked_ms": key.revoked_ms,
    }


@app.command("create")
def keys_create(
    account: AccountOpt,
    scopes: Annotated[str, typer.Option(help="Comma-separated: read, write.")] = "read",
    label: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
    oauth1: Annotated[
        bool, typer.Option("--oauth1", help="An OAuth 1.0a app key (consumer key/secret, token).")
    ] = False,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create an API key; its secrets are printed once."""
    check_account(account)
    wanted = frozenset(s.strip() for s in scopes.split(",") if s.strip())
    if not wanted or wanted - SCOPES:
        raise fail(f"--scopes must be a comma-separated subset of {', '.join(sorted(SCOPES))}", 2)
    settings = read_settings(database_url=database)
    if oauth1:
        _create_oauth_key(settings, account, wanted, label, json_output)
        return
    issued = issue_key(account, wanted, label, system_clock_ms())
    with opened_store(settings) as store:
        store.add_key(issued.key)
    if json_output:
        print_json({"token": issued.token, **_key_json(issued.key)})
        return
    console.print(f"key [bold]{issued.key.key_id}[/] for account {account}, scopes {scopes}")
    console.print(f"token (shown once): [cyan]{issued.token}[/]")


def _create_oauth_key(
    settings: Settings, account: str, scopes: frozenset[str], label: str, json_output: bool
) -> None:
    try:
        box = load_secret_box(settings.secret_key, Path(settings.secret_key_file))
    except (SealingError, OSError) as exc:
        raise fail(str(exc), 2) from None
    issued = issue_oauth_key(account, scopes, label, system_clock_ms(), box)
    with opened_store(settings) as store:
        store.add_key(issued.key)
    secrets_ = {
        "consumer_key": issued.consumer_key,
        "consumer_secret": issued.consumer_secret,
        "token": issued.token,
        "token_secret": issued.token_secret,
    }
    if json_output:
        print_json({**secrets_, **_key_json(issued.key)})
        return
    console.print(f"OAuth 1.0a app key for account {account}, scopes {','.join(sorted(scopes))}")
    console.print("secrets (shown once; sealed with the server key at rest):")
    for name, value in secrets_.items():
        console.print(f"  {name:16} [cyan]{value}[/]")


@app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List keys (never their secrets)."""
    with opened_store(read_settings(database_url=database)) as store:
        found = store.list_keys(account)
    if json_output:
        print_json([_key_json(k) for k in found])
        return
    print_rows(
        ("key id", "kind", "account", "scopes", "label", "created", "revoked"),
        [
            (
                key.key_id,
                key.kind,
                key.account_id,
                ",".join(sorted(key.scopes)),
                key.label,
                when(key.created_ms),
                when(key.revoked_ms),
            )
            for key in found
        ],
        whole=("key id",),
    )


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (from keys list).")],
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    with opened_store(read_settings(database_url=database)) as store:
        key = store.revoke_key(key_id, system_clock_ms())
    if key is None:
        raise fail(f"no key with id {key_id!r}")
    if json_output:
        print_json(_key_json(key))
    else:
        console.print(f"key {key_id} revoked at {when(key.revoked_ms)}")
