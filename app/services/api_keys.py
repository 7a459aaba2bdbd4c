"""API keys: who may call the service, and with which role.

A key is ``nom_<lookup>_<secret>``: ``lookup`` (12 hex chars) finds the row with one indexed
query; the secret (256 random bits) makes the key unguessable. Only the sha256 of the whole
key is stored. A fast hash is enough here (unlike passwords, keys are random, so there is
nothing to brute-force), and it keeps authentication at one cheap query per request, which
also means a revocation on any replica takes effect on every replica at the next request.

``NOMINAL_ADMIN_KEY`` is an admin key that lives only in the environment: it bootstraps an
empty database (create the first stored keys with it) and cannot be revoked through the API.
Without it, the first start on a database with no admin key stores one admin key called
``initial-admin`` and hands it over in a 0600 file (``create_initial_admin_key``), so a plain
``make run`` is usable at once.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.db.models import ApiKey, ApiKeyRole
from app.db.session import Database
from app.errors import AuthenticationError, ConflictError, InvalidInputError, NotFoundError
from app.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "nom"
INITIAL_ADMIN_NAME = "initial-admin"
MISSING = "missing API key: send it in the X-API-Key header"
_KEY_RE = re.compile(r"^nom_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# Compared against when no row matches, so an unknown lookup costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()

# What each role may do, as the set of roles whose routes it may call.
GRANTS: dict[ApiKeyRole, frozenset[ApiKeyRole]] = {
    ApiKeyRole.admin: frozenset({ApiKeyRole.admin, ApiKeyRole.operator, ApiKeyRole.inspector}),
    ApiKeyRole.operator: frozenset({ApiKeyRole.operator, ApiKeyRole.inspector}),
    ApiKeyRole.inspector: frozenset({ApiKeyRole.inspector}),
}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. ``key_id`` is None for the bootstrap key and when
    authentication is off (local development)."""

    role: ApiKeyRole
    name: str
    key_id: int | None = None

    def may(self, required: ApiKeyRole) -> bool:
        return required in GRANTS[self.role]


BOOTSTRAP = Principal(role=ApiKeyRole.admin, name="NOMINAL_ADMIN_KEY")
AUTH_DISABLED = Principal(role=ApiKeyRole.admin, name="auth disabled")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new random key and its lookup part: ``(key, lookup)``."""
    lookup = secrets.token_hex(6)
    return f"{PREFIX}_{lookup}_{secrets.token_urlsafe(32)}", lookup


def create_key(session: Session, *, name: str, role: ApiKeyRole) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key itself, which exists nowhere else."""
    name = name.strip()
    if not name:
        raise InvalidInputError("an API key needs a non-empty name")
    key, lookup = generate_key()
    row = ApiKey(name=name, role=role.value, lookup=lookup, key_hash=hash_key(key))
    session.add(row)
    session.commit()
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, *, key_id: int, bootstrap_configured: bool) -> None:
    """Delete a key: the next request carrying it is a 401, on every replica.

    The last stored admin key cannot be revoked while no ``NOMINAL_ADMIN_KEY`` is configured:
    nobody could manage keys afterwards.
    """
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"API key {key_id} not found")
    if row.role == ApiKeyRole.admin.value and not bootstrap_configured:
        # Lock every admin row (PostgreSQL; SQLite holds its write lock already), so two
        # concurrent revocations cannot both see "one other admin left".
        admins = session.scalars(select(ApiKey.id).where(ApiKey.role == ApiKeyRole.admin.value)
                                 .with_for_update()).all()
        if len(admins) <= 1:
            raise ConflictError(f"API key {key_id} is the last admin key and NOMINAL_ADMIN_KEY "
                                "is not set; create another admin key first")
    session.execute(delete(ApiKey).where(ApiKey.id == key_id))
    session.commit()


def count_admin_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey)
                          .where(ApiKey.role == ApiKeyRole.admin.value)) or 0


def matches_bootstrap(key: str, bootstrap_key: str | None) -> bool:
    """Constant-time comparison with ``NOMINAL_ADMIN_KEY`` (False when none is set)."""
    if not bootstrap_key:
        return False
    return hmac.compare_digest(key.encode(), bootstrap_key.encode())


def authenticate(session: Session, *, key: str | None, bootstrap_key: str | None) -> Principal:
    """The principal ``key`` stands for, or ``AuthenticationError`` (missing, malformed, unknown
    or revoked: one message, so the answer tells nothing about which)."""
    if not key:
        raise AuthenticationError(MISSING)
    if matches_bootstrap(key, bootstrap_key):
        return BOOTSTRAP
    match = _KEY_RE.match(key)
    row = None
    if match is not None:
        row = session.scalar(select(ApiKey).where(ApiKey.lookup == match.group(1)))
    stored = row.key_hash if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(hash_key(key), stored) or row is None:
        raise AuthenticationError("invalid API key")
    return Principal(role=ApiKeyRole(row.role), name=row.name, key_id=row.id)


def write_key_file(path: Path, key: str) -> None:
    """Write ``key`` to a new file readable by its owner only (0600), creating the folders.

    Never replaces a file: an existing one (an earlier database's key, or another replica's on a
    shared volume) is ``FileExistsError``, so a key once handed out is never silently swapped.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where a folder should be: not "the key file exists"
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path.parent)) from exc
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, f"{key}\n".encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def create_initial_admin_key(session: Session, *, key_file: Path) -> ApiKey | None:
    """On a database without any admin key, store the ``initial-admin`` key and write it to
    ``key_file``; None (and nothing changed) when an admin key exists or the file cannot be
    written (logged as an error: the service still starts, without a way in).

    Race-safe across replicas starting together: the check and the insert happen under an
    exclusive lock of the table (PostgreSQL; ``session`` must be a write session, which holds
    SQLite's write lock already), so exactly one replica creates the key and the others then
    see it. The key is committed only once the file is written, so no key exists that nobody
    can read; the file is removed again if the commit fails.
    """
    if session.get_bind().dialect.name == "postgresql":
        # Conflicts with itself and with every insert/delete, not with plain reads (auth).
        session.execute(text("LOCK TABLE api_key IN SHARE ROW EXCLUSIVE MODE"))
    if count_admin_keys(session) > 0:
        session.rollback()
        return None
    key, lookup = generate_key()
    row = ApiKey(name=INITIAL_ADMIN_NAME, role=ApiKeyRole.admin.value, lookup=lookup,
                 key_hash=hash_key(key))
    session.add(row)
    session.flush()
    try:
        write_key_file(key_file, key)
    except FileExistsError:
        session.rollback()
        log.error("no admin key in the database and %s already exists (from an earlier "
                  "database?); it is not overwritten and no initial admin key was created. "
                  "Remove the file and restart, or set NOMINAL_ADMIN_KEY", key_file)
        return None
    except OSError as exc:
        session.rollback()
        log.error("could not write the initial admin key to %s (%s); no key was created. "
                  "Set NOMINAL_INITIAL_KEY_FILE to a writable path or set NOMINAL_ADMIN_KEY",
                  key_file, exc.strerror or type(exc).__name__)
        return None
    try:
        session.commit()
    except BaseException:
        key_file.unlink(missing_ok=True)
        raise
    return row


def prepare_access(settings: Settings, database: Database) -> None:
    """Start-up: make sure someone can get in, and say so loudly when nobody is checked.

    First run without ``NOMINAL_ADMIN_KEY``: store an admin key and write it to
    ``NOMINAL_INITIAL_KEY_FILE``, so the service is usable without reading the docs first
    (nothing happens once any admin key exists: restarts, other replicas). Then warn when
    authentication is off, or when nobody could manage keys. Database errors are logged, not
    raised: readiness reports the database.
    """
    if not settings.auth_enabled:
        log.warning("authentication is OFF (NOMINAL_AUTH_ENABLED=false): every caller acts as "
                    "admin. For local development only; never expose this instance.")
        return
    if settings.admin_key is not None:
        return
    try:
        with database.session(write=True) as session:
            row = create_initial_admin_key(session, key_file=settings.initial_key_file)
        if row is not None:
            log.warning("created the admin API key %r and wrote it to %s (readable by this "
                        "user only); send it in X-API-Key, create your own keys with POST "
                        "/v1/api-keys, then revoke it. Deployments set NOMINAL_ADMIN_KEY "
                        "instead.", row.name, settings.initial_key_file.resolve())
            return
        with database.reading() as session:
            admins = count_admin_keys(session)
    except SQLAlchemyError:
        log.exception("could not check or create the initial admin key")
        return
    if admins == 0:
        log.warning("no admin key: NOMINAL_ADMIN_KEY is not set and the database holds no admin "
                    "API key, so nobody can create keys; set NOMINAL_ADMIN_KEY")
