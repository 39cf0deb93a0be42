"""Static bearer tokens: `DATASTORAGE_API_TOKENS` (comma-separated, every right) and
`DATASTORAGE_API_TOKENS_FILE`, one token a line:

    # TOKEN  [SCOPES]                  [NAME]
    s3cret   audit:write               gateway
    r3ader   audit:read,playbooks:read analysis
    0ps      admin                     on-call
    legacy

Whitespace separates the fields, commas the scopes; `#` starts a comment. A line without scopes
keeps every right (as every token had before scopes). NAME is the identity recorded as the actor
of what the token does (self-audit events, legal holds) and keys its rate limit; without one it is
a short hash of the token, never the token.
"""

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from app.api.access import Identity, Scope, parse_scopes


class TokenFileError(ValueError):
    """The token file cannot be read as `TOKEN [SCOPES] [NAME]` lines."""


@dataclass(frozen=True)
class TokenGrant:
    token: str
    # None: every right.
    scopes: frozenset[str] | None
    name: str

    def identity(self) -> Identity:
        return Identity(name=self.name, scopes=self.scopes)


def default_name(token: str) -> str:
    """A stable name that says which token without saying the token."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def parse_token_line(line: str) -> TokenGrant | None:
    fields = line.split("#", 1)[0].split()
    if not fields:
        return None
    if len(fields) > 3:
        raise ValueError("expected TOKEN [SCOPES] [NAME]")
    token = fields[0]
    scopes = parse_scopes(fields[1]) if len(fields) > 1 else None
    return TokenGrant(token, scopes, fields[2] if len(fields) > 2 else default_name(token))


def load_grants(tokens: str | None, tokens_file: Path | None) -> list[TokenGrant]:
    """Every configured token; the same token twice with different rights is refused."""
    grants = [TokenGrant(t.strip(), None, default_name(t.strip())) for t in (tokens or "").split(",") if t.strip()]
    if tokens_file is not None:
        for number, line in enumerate(tokens_file.read_text().splitlines(), 1):
            try:
                grant = parse_token_line(line)
            except ValueError as error:
                # The line holds a secret: name its number, never its text.
                raise TokenFileError(f"{tokens_file}, line {number}: {error}") from None
            if grant is not None:
                grants.append(grant)
    by_token: dict[str, TokenGrant] = {}
    for grant in grants:
        if by_token.setdefault(grant.token, grant) != grant:
            raise TokenFileError(f"{tokens_file}: token {grant.name!r} is configured twice with different rights")
    return list(by_token.values())


class StaticTokens:
    """Authenticates a bearer token against the configured ones; the token's scopes authorise."""

    def __init__(self, grants: list[TokenGrant]):
        # Compare digests of equal length, with every token every time: the time taken says
        # nothing about which token, or how much of one, matched.
        self.grants = [(hashlib.sha256(g.token.encode()).digest(), g) for g in grants]

    async def authenticate(self, token: str) -> Identity | None:
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, grant in self.grants:
            if hmac.compare_digest(presented, digest):
                found = grant
        return found.identity() if found else None

    async def authorize(self, identity: Identity, scope: Scope) -> dict[str, str] | None:
        """None when allowed; otherwise what the 403 problem names."""
        return None if identity.allows(scope) else {"scope": scope}

    async def aclose(self) -> None:
        pass
