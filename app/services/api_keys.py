"""API keys: who may call the service, and with which role.

A key is ``nom_<lookup>_<secret>``: ``lookup`` (12 hex chars) finds the row with one indexed
query; the secret (256 random bits) makes the key unguessable. Only the sha256 of the whole
key is stored. A fast hash is enough here (unlike passwords, keys are random, so there is
nothing to brute-force), and it keeps authentication at one cheap query per request, which
also means a revocation on any replica takes effect on every replica at the next request.

``NOMINAL_ADMIN_KEY`` is an admin key that lives only in the environment: it bootstraps an
empty database (create the first stored keys with it) and cannot be revoked through the API.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, ApiKeyRole
from app.errors import AuthenticationError, ConflictError, InvalidInputError, NotFoundError

PREFIX = "nom"
MISSING = "missing API key: send it in the X-API-Key header"
_KEY_RE = re.compile(r"^nom_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# Compared against when no row matches, so an unknown lookup costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()

# What each role may do, as the set of roles whose routes it may call.
GRANTS: dict[ApiKeyRole, frozenset[ApiKeyRole]] = {
    ApiKeyRole.admin: frozenset({ApiKeyRole.admin, ApiKeyRole.inspector}),
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
