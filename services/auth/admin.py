"""`python -m services.auth admin grant|revoke|list`: who is an administrator, set by the operator.

The admin role is a flag on the account that only this command (run with the service's database
settings, by whoever runs the service) or EASEL_AUTH_ADMIN_IDS can set; signing up never does, so no
one can race the operator to a name. A grant or revoke counts from the account's next request: auth
reads the flag on every call.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import asyncpg

from services.common.config import load_settings
from services.common.db import database

from .settings import AuthSettings

MIGRATIONS = Path(__file__).parent / "migrations"

_BY_NAME = "lower(username) = lower($1)"
_BY_ID = "id = $1::uuid"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.auth admin",
        description="Grant, revoke or list the admin role of accounts (uses EASEL_DATABASE_URL).",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="{grant,revoke,list}")
    for action, what in (("grant", "make an account an administrator"), ("revoke", "take the role away")):
        cmd = sub.add_parser(action, help=what)
        cmd.add_argument("account", help="the account's username (any case) or id")
    sub.add_parser("list", help="list the administrators (id and username)")
    return p


async def _set(pool: asyncpg.Pool, account: str, admin: bool) -> int:
    try:
        uuid.UUID(account)
        where = _BY_ID
    except ValueError:
        where = _BY_NAME
    row = await pool.fetchrow(
        # `where` is one of two constants above; the account is a $1 parameter.
        f"UPDATE users SET is_admin = $2 WHERE {where} RETURNING id, username",  # nosec B608
        account,
        admin,
    )
    if row is None:
        print(f"easel: no account named {account}; check the username, or sign up first.", file=sys.stderr)
        return 1
    verb = "granted the admin role to" if admin else "revoked the admin role of"
    print(f"{verb} {row['username']} ({row['id']})")
    return 0


async def run_admin(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = load_settings(AuthSettings)
    async with database(settings.database_url, "auth", MIGRATIONS, 1, 1) as pool:
        if args.action == "list":
            for row in await pool.fetch(
                "SELECT id, username FROM users WHERE is_admin ORDER BY lower(username)"
            ):
                print(f"{row['id']}  {row['username']}")
            for extra in sorted(settings.admin_ids, key=str):
                print(f"{extra}  (EASEL_AUTH_ADMIN_IDS)")
            return 0
        return await _set(pool, args.account.strip(), args.action == "grant")
