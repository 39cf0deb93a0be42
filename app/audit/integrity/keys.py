"""Ed25519 signing keys in PEM files (`cryptography`): the private key signs seals and
checkpoints; the public key is all a verifier needs."""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.core import metrics

log = structlog.get_logger(__name__)

PRIVATE_KEY_FILE = "audit-signing.key"
PUBLIC_KEY_FILE = "audit-signing.pub"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Verifier:
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_pem(cls, pem: bytes) -> "Verifier":
        try:
            public_key = serialization.load_pem_public_key(pem)
        except ValueError as error:
            raise KeyFileError(f"not a PEM public key ({error})") from None
        if not isinstance(public_key, Ed25519PublicKey):
            raise KeyFileError("not an Ed25519 public key")
        return cls(public_key)

    @classmethod
    def from_file(cls, path: Path) -> "Verifier":
        try:
            return cls.from_pem(path.read_bytes())
        except OSError as error:
            raise KeyFileError(f"{path}: {error.strerror}") from None


@dataclass(frozen=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.private_key.public_key())

    @property
    def key_id(self) -> str:
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @classmethod
    def from_file(cls, path: Path) -> "Signer":
        try:
            private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as error:
            raise KeyFileError(f"{path}: {error.strerror}") from None
        except ValueError as error:
            raise KeyFileError(f"{path}: not a PEM private key ({error})") from None
        if not isinstance(private_key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 private key")
        return cls(private_key)


def public_key_path(private_key_path: Path) -> Path:
    """Where the public key of a key pair lives: beside the private key, named `.pub`."""
    return private_key_path.with_suffix(".pub")


def generate_key_pair(directory: Path) -> tuple[Path, Path]:
    """Writes DIR/audit-signing.key (mode 0600) and DIR/audit-signing.pub; refuses to overwrite."""
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; a signing key is never overwritten")
    directory.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL: a key written meanwhile by someone else is not overwritten either; 0600 from the start.
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_pem)
    descriptor = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(public_pem)
    return private_path, public_path


def load_signer(path: Path | None) -> Signer | None:
    """The signer of a process that writes audit rows; None (rows stored unsealed, said loudly
    and in a gauge) when no key file is configured."""
    if path is None:
        log.warning(
            "audit_sealing_disabled",
            hint="set DATASTORAGE_AUDIT_SIGNING_KEY_FILE (make one with `datastorage audit keygen DIR`); "
            "rows stored now are unsealed and fail verification",
        )
        metrics.AUDIT_SEALING_ENABLED.set(0)
        return None
    signer = Signer.from_file(path)
    metrics.AUDIT_SEALING_ENABLED.set(1)
    return signer
