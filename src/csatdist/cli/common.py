"""What most commands do first: read the settings, check the account id, open the store; each fails
as an exit 2 that says why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from csatdist.auth import valid_account_id
from csatdist.cli.output import fail, notice
from csatdist.errors import CsatError
from csatdist.settings import Settings, load_settings
from csatdist.store import DatabaseMisconfigured, Store, UnsupportedDatabase, open_configured_store


def read_settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValueError as exc:
        raise fail(f"invalid setting: {exc}", 2) from None


@contextmanager
def opened_store(settings: Settings) -> Iterator[Store]:
    try:
        store = open_configured_store(settings, notice)
    except (UnsupportedDatabase, DatabaseMisconfigured, CsatError, RuntimeError) as exc:
        raise fail(str(exc), 2) from None
    try:
        yield store
    finally:
        store.close()


def check_account(account_id: str) -> None:
    if not valid_account_id(account_id):
        raise fail(f"account id {account_id!r} must be 1-64 letters, digits, '-' or '_'", 2)
