"""Lesson 10: what both secured servers share — API keys, a rate limit per key, a signed model, JSON logs.

app.py (REST) and grpc_server.py (gRPC) import it, as lesson 06's servers import monitoring.py.
Run it to make a signing key pair and sign a model's metadata (the training side's job, not the server's):

    python lessons/10-security/security.py keygen signing-key.pem   # writes signing-key.pem and signing-key.pub
    python lessons/10-security/security.py sign models/iris.json signing-key.pem   # writes models/iris.json.sig
"""

import hashlib
import hmac
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from course.model import ModelIntegrityError, load_model, metadata_path_for, model_path_from_env

MIN_KEY_LENGTH = 32  # secrets.token_urlsafe(32) makes 43 characters from 32 random bytes: no one guesses that
log = logging.getLogger("model_server")


def fingerprint(key: str) -> str:
    """What the logs may say about a key: a short one-way hash. With it you can tell which key a client used
    (say, one you are rotating out), and nobody can call the server with it."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:8]


class ApiKeys:
    """The valid keys, from API_KEYS_FILE (one key per line: a mounted Kubernetes Secret) or API_KEYS ("k1,k2").

    Several keys are valid at once, so one can be rotated without downtime: add the new key, move the clients
    over, remove the old key. Never from code or the image: whoever can read those would have every key.
    """

    def __init__(self, environ=os.environ):
        if environ.get("API_KEYS_FILE"):
            keys = Path(environ["API_KEYS_FILE"]).read_text().split()
        else:
            keys = [key.strip() for key in environ.get("API_KEYS", "").split(",") if key.strip()]
        if not keys:  # fail closed: a server without keys would otherwise answer anyone
            raise SystemExit("no API keys: set API_KEYS=key1,key2 or API_KEYS_FILE=<file with one key per line>")
        if short := [fingerprint(key) for key in keys if len(key) < MIN_KEY_LENGTH]:
            raise SystemExit(f"API keys {', '.join(short)} are shorter than {MIN_KEY_LENGTH} characters; make one "
                             "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        # Only digests are kept: equal length whatever the client sends, and bytes, so any text compares safely.
        self.digests = {hashlib.sha256(key.encode()).digest(): fingerprint(key) for key in keys}
        log.info("API keys loaded", extra={"fields": {"keys": sorted(self.digests.values())}})

    def identify(self, candidate: str) -> str | None:
        """The key's fingerprint if it is one of ours, else None, in the same time either way.

        `==` stops at the first byte that differs, so its timing tells an attacker how much of a guess is right.
        hmac.compare_digest always looks at every byte, and the loop always compares every key.
        """
        given, found = hashlib.sha256(candidate.encode("utf-8", "replace")).digest(), None
        for digest, name in self.digests.items():
            if hmac.compare_digest(given, digest):
                found = name
        return found


class RateLimit:
    """A token bucket per key: `rate` requests a second on average, bursts of up to `burst`.

    Each key's bucket holds up to `burst` tokens and refills at `rate` tokens a second; a request takes one.
    Called from the event loop only (FastAPI's async dependency, gRPC's aio interceptor), so no lock. Buckets
    exist for valid keys only (the limit applies after authentication), so their number is bounded.
    """

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key fingerprint -> (tokens, when counted)

    def wait(self, key: str) -> float:
        """0 if `key` may make a request now (and it is counted), else the seconds until it may."""
        now = self.clock()
        tokens, then = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self.buckets[key] = (tokens - allowed, now)
        return 0.0 if allowed else (1 - tokens) / self.rate


def rate_limit_from_env() -> RateLimit:
    return RateLimit(float(os.environ.get("RATE_PER_SECOND", "10")), int(os.environ.get("RATE_BURST", "20")))


def load_signed_model():
    """load_model() (sha256 of the artifact against its metadata), after checking the metadata's signature.

    The sha256 proves the artifact is the one the metadata describes; the Ed25519 signature over the metadata
    proves who wrote the metadata: only the holder of the private key (the training pipeline) can make one
    that MODEL_PUBLIC_KEY accepts. Whoever can replace both files on disk cannot forge a signature.
    """
    model_path = model_path_from_env()
    metadata = metadata_path_for(model_path)
    if not os.environ.get("MODEL_PUBLIC_KEY"):
        log.warning("model signature NOT checked: set MODEL_PUBLIC_KEY to the signer's public key (PEM)")
        return load_model(model_path)
    public_key = serialization.load_pem_public_key(Path(os.environ["MODEL_PUBLIC_KEY"]).read_bytes())
    signature = Path(f"{metadata}.sig")
    if not signature.exists():
        raise ModelIntegrityError(f"Refusing to load {model_path}: {signature.name} is missing")
    try:
        public_key.verify(signature.read_bytes(), metadata.read_bytes())
    except InvalidSignature:
        raise ModelIntegrityError(f"Refusing to load {model_path}: {metadata.name} is not signed by "
                                  "the key in MODEL_PUBLIC_KEY") from None
    log.info("model signature verified", extra={"fields": {"model": model_path.name}})
    return load_model(model_path)


def keygen(private_path: str) -> None:
    private_key = Ed25519PrivateKey.generate()
    Path(private_path).write_bytes(private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    Path(private_path).chmod(0o600)
    Path(private_path).with_suffix(".pub").write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def sign(metadata_path: str, private_path: str) -> None:
    private_key = serialization.load_pem_private_key(Path(private_path).read_bytes(), password=None)
    Path(f"{metadata_path}.sig").write_bytes(private_key.sign(Path(metadata_path).read_bytes()))


class JsonLines(logging.Formatter):
    """One JSON object per line, as in lesson 06. Never a key in it: only fingerprints."""

    def format(self, record):
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                **getattr(record, "fields", {})}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)  # in the log, never in a response
        return json.dumps(line, default=str)


def log_json(level=logging.INFO):
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)


if __name__ == "__main__":
    commands = {"keygen": keygen, "sign": sign}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
