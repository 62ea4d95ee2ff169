"""Who is calling: ingest tokens (an application sending telemetry) and query tokens (a role
and a scope of services), read from the access file (setting ``access_file``).

The file is YAML::

    query:
      - name: oncall                 # shown in the audit log, never the token
        token_sha256: 9f86d08…       # or `token: <the token>`; hashes keep the file harmless
        role: editor                 # viewer (read) | editor (+ alert rules, silences) | admin
        services: [checkout, payment]  # optional: sees only these services' data
    ingest:
      - name: shop-prod
        token_sha256: …
        application: shop

With no ``query`` entries the API is open; with no ``ingest`` entries ingest is open. Tokens
are compared by their SHA-256, so the plain tokens need not be kept anywhere but at the
callers.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Role(enum.IntEnum):
    """What a query token may do; each role may do everything of the ones before it."""

    VIEWER = 1  # read every endpoint (within its scope)
    EDITOR = 2  # also change alert rules and silences, replay deliveries
    ADMIN = 3  # also read the audit log


@dataclass(frozen=True)
class Principal:
    """A caller of the query API. ``services`` None: every service."""

    name: str
    role: Role
    services: frozenset[str] | None = None

    def may(self, needed: Role) -> bool:
        return self.role >= needed


@dataclass(frozen=True)
class Application:
    """A sender of telemetry, as its ingest token names it."""

    name: str
    application: str


class AccessFileError(ValueError):
    """The access file cannot be used; the message names the entry and the problem."""


class _Token(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    token: str | None = Field(default=None, min_length=16)
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="after")
    def _one_secret(self) -> _Token:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token (at least 16 characters) or token_sha256")
        return self

    def digest(self) -> str:
        if self.token_sha256 is not None:
            return self.token_sha256.lower()
        assert self.token is not None
        return token_digest(self.token)


class _QueryToken(_Token):
    role: str = Field(default="viewer", pattern="^(viewer|editor|admin)$")
    services: list[str] | None = None


class _IngestToken(_Token):
    application: str = Field(min_length=1)


class _AccessFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: list[_QueryToken] = Field(default_factory=list)
    ingest: list[_IngestToken] = Field(default_factory=list)


def token_digest(token: str) -> str:
    """The SHA-256 (hex) a token is known by (``token_sha256`` in the access file)."""
    return hashlib.sha256(token.encode()).hexdigest()


class AccessControl:
    """The configured tokens; ``open()`` has none (everything allowed, no scopes)."""

    def __init__(
        self,
        query: dict[str, Principal] | None = None,
        ingest: dict[str, Application] | None = None,
    ) -> None:
        self._query = query or {}
        self._ingest = ingest or {}

    @classmethod
    def open(cls) -> AccessControl:
        return cls()

    @classmethod
    def from_file(cls, path: Path) -> AccessControl:
        try:
            raw: Any = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AccessFileError(f"access file {path}: {exc}") from exc
        return cls.from_mapping(raw, source=str(path))

    @classmethod
    def from_mapping(cls, raw: Any, source: str = "access file") -> AccessControl:
        try:
            parsed = _AccessFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise AccessFileError(f"{source}: {problems}") from exc
        query: dict[str, Principal] = {}
        for entry in parsed.query:
            scope = frozenset(entry.services) if entry.services is not None else None
            principal = Principal(entry.name, Role[entry.role.upper()], scope)
            if query.setdefault(entry.digest(), principal) is not principal:
                raise AccessFileError(f"{source}: query token {entry.name!r} is listed twice")
        ingest: dict[str, Application] = {}
        for item in parsed.ingest:
            app = Application(item.name, item.application)
            if ingest.setdefault(item.digest(), app) is not app:
                raise AccessFileError(f"{source}: ingest token {item.name!r} is listed twice")
        return cls(query, ingest)

    @property
    def query_enabled(self) -> bool:
        return bool(self._query)

    @property
    def ingest_enabled(self) -> bool:
        return bool(self._ingest)

    def query_principal(self, token: str | None) -> Principal | None:
        """The principal of a presented query token; None for a missing or unknown one."""
        return self._query.get(token_digest(token)) if token else None

    def ingest_application(self, token: str | None) -> Application | None:
        return self._ingest.get(token_digest(token)) if token else None


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (or of a bare token, as
    exporters configured with a custom header send it)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip() or None
    return None if rest else value.strip()
