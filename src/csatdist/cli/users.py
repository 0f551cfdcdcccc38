"""`csatdist users`: the users of the login endpoint."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, DatabaseOpt, JsonOpt
from csatdist.cli.output import console, fail, print_json, print_rows, when
from csatdist.clock import system_clock_ms
from csatdist.store import User
from csatdist.users import make_user

app = typer.Typer(help="Manage users of the login endpoint.", no_args_is_help=True)


def _read_password(confirm: bool) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return password


UsernameOpt = Annotated[str, typer.Option("--username", help="The login name.")]


@app.command("create")
def users_create(
    account: AccountOpt,
    username: UsernameOpt,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create a user, or set a new password (which signs out every session of that user).

    The password is prompted for, or read from stdin."""
    check_account(account)
    password = _read_password(confirm=True)
    try:
        user = make_user(account, username, password, system_clock_ms())
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    with opened_store(read_settings(database_url=database)) as store:
        created = store.add_user(user)
    if json_output:
        print_json(
            {
                "account": account,
                "username": username,
                "created": created,
                "sessions_revoked": not created,
            }
        )
    elif created:
        console.print(f"user {escape(username)} created for account {account}")
    else:
        console.print(
            f"user {escape(username)} of account {account}: password changed; its login "
            "sessions are revoked"
        )


def _user_json(user: User) -> dict[str, Any]:
    return {"account": user.account_id, "username": user.username, "created_ms": user.created_ms}


@app.command("list")
def users_list(
    account: AccountOpt, database: DatabaseOpt = None, json_output: JsonOpt = False
) -> None:
    """List the account's login users (never their passwords)."""
    check_account(account)
    with opened_store(read_settings(database_url=database)) as store:
        found = store.list_users(account)
    if json_output:
        print_json([_user_json(user) for user in found])
        return
    print_rows(
        ("username", "account", "created"),
        [(user.username, user.account_id, when(user.created_ms)) for user in found],
        whole=("username",),
    )


@app.command("delete")
def users_delete(
    account: AccountOpt,
    username: UsernameOpt,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Delete a user and its login sessions; its bearer tokens get 401 from then on."""
    check_account(account)
    with opened_store(read_settings(database_url=database)) as store:
        deleted = store.delete_user(account, username)
    if not deleted:
        raise fail(f"no user {username!r} in account {account!r}")
    if json_output:
        print_json({"account": account, "username": username, "deleted": True})
    else:
        console.print(
            f"user {escape(username)} deleted from account {account}, with its login sessions"
        )


@app.command("revoke-sessions")
def users_revoke_sessions(
    account: AccountOpt,
    username: UsernameOpt,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Sign a user out everywhere: its login sessions get 401 from then on; the user stays."""
    check_account(account)
    with opened_store(read_settings(database_url=database)) as store:
        if store.find_user(account, username) is None:
            raise fail(f"no user {username!r} in account {account!r}")
        revoked = store.revoke_sessions(account, username, system_clock_ms())
    if json_output:
        print_json({"account": account, "username": username, "revoked": revoked})
    else:
        console.print(
            f"revoked {revoked} login session{'' if revoked == 1 else 's'} of user "
            f"{escape(username)} in account {account}"
        )
