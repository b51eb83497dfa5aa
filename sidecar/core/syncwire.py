"""The replication watch channel's lines, pure (docs/architecture.md, "Replication").

The files themselves move by rsync; this channel only says *when* to pull and lets the
master learn what its backups hold. A backup connects to the master's sync port and speaks
first (so the listener can tell it from an rsync client, whose greeting starts ``@RSYNCD:``)::

    C: CARPSYNC 1 <vhid> <client nonce>        hello
    S: CHALLENGE <server nonce>                or DENIED <why> / NOTMASTER, then close
    C: AUTH <epoch> <client proof>             the backup's epoch, proven with the secret
    S: OK <epoch> <server proof>               the master's epoch, proven too
    S: GEN <path name> <generation>            once per path at once, then on every change
    S: PING                                    every second with no GEN (liveness)
    C: SYNCED <path name> <generation>         a pull started at that generation succeeded

Both proofs are HMAC-SHA256 over both nonces, the vhid and the sender's epoch, keyed with the
sync secret, so neither side can be replayed or forged and the secret never crosses the wire.
Nonces are 16 random bytes in hex. Lines are ASCII, at most :data:`MAX_LINE` bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

MAGIC = "CARPSYNC"
VERSION = 1
MAX_LINE = 256
NONCE_HEX = 32
PING_INTERVAL = 1.0  # s: the master says something at least this often
RSYNC_GREETING = b"@RSYNCD:"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_HEX = re.compile(r"[0-9a-f]+")


class WireError(ValueError):
    """A line that is not what the channel says may come next."""


@dataclass(frozen=True, slots=True)
class Hello:
    vhid: int
    nonce: str


@dataclass(frozen=True, slots=True)
class Gen:
    name: str
    gen: int


@dataclass(frozen=True, slots=True)
class Synced:
    name: str
    gen: int


def _words(line: bytes, first: str, count: int) -> list[str]:
    if len(line) > MAX_LINE:
        raise WireError("line too long")
    try:
        words = line.decode("ascii").rstrip("\n").split(" ")
    except UnicodeDecodeError as e:
        raise WireError("not ASCII") from e
    if len(words) != count or words[0] != first:
        raise WireError(f"expected {first} with {count - 1} fields")
    return words


def _nonce(word: str) -> str:
    if len(word) != NONCE_HEX or not _HEX.fullmatch(word):
        raise WireError("bad nonce")
    return word


def _int(word: str, low: int, high: int) -> int:
    if not word.isdigit() or not low <= int(word) <= high:
        raise WireError(f"bad number {word[:20]!r}")
    return int(word)


def _name(word: str) -> str:
    if not NAME.fullmatch(word):
        raise WireError("bad path name")
    return word


def _proof_word(word: str) -> str:
    if len(word) != 64 or not _HEX.fullmatch(word):
        raise WireError("bad proof")
    return word


# ---- lines ----
def hello(vhid: int, nonce: str) -> bytes:
    return f"{MAGIC} {VERSION} {vhid} {nonce}\n".encode()


def parse_hello(line: bytes) -> Hello:
    w = _words(line, MAGIC, 4)
    if w[1] != str(VERSION):
        raise WireError(f"version {w[1][:8]!r} (this agent speaks {VERSION})")
    return Hello(_int(w[2], 1, 255), _nonce(w[3]))


def challenge(nonce: str) -> bytes:
    return f"CHALLENGE {nonce}\n".encode()


def parse_challenge(line: bytes) -> str:
    return _nonce(_words(line, "CHALLENGE", 2)[1])


def auth(epoch: int, proof: str) -> bytes:
    return f"AUTH {epoch} {proof}\n".encode()


def parse_auth(line: bytes) -> tuple[int, str]:
    w = _words(line, "AUTH", 3)
    return _int(w[1], 0, 2**63), _proof_word(w[2])


def ok(epoch: int, proof: str) -> bytes:
    return f"OK {epoch} {proof}\n".encode()


def parse_ok(line: bytes) -> tuple[int, str]:
    w = _words(line, "OK", 3)
    return _int(w[1], 0, 2**63), _proof_word(w[2])


def gen(name: str, generation: int) -> bytes:
    return f"GEN {name} {generation}\n".encode()


def synced(name: str, generation: int) -> bytes:
    return f"SYNCED {name} {generation}\n".encode()


PING = b"PING\n"
NOTMASTER = b"NOTMASTER\n"


def denied(why: str) -> bytes:
    return f"DENIED {why}\n".encode()


def parse_server(line: bytes) -> Gen | None:
    """A line from a master after OK: ``Gen``, or ``None`` for a PING."""
    if line.rstrip(b"\n") == PING.rstrip(b"\n"):
        return None
    w = _words(line, "GEN", 3)
    return Gen(_name(w[1]), _int(w[2], 0, 2**63))


def parse_synced(line: bytes) -> Synced:
    w = _words(line, "SYNCED", 3)
    return Synced(_name(w[1]), _int(w[2], 0, 2**63))


# ---- proofs ----
def _mac(secret: bytes, *fields: object) -> str:
    return hmac.new(secret, "|".join(map(str, fields)).encode(), hashlib.sha256).hexdigest()


def client_proof(secret: bytes, vhid: int, server_nonce: str, client_nonce: str,
                 epoch: int) -> str:
    return _mac(secret, "carp-sync-client", vhid, server_nonce, client_nonce, epoch)


def server_proof(secret: bytes, vhid: int, client_nonce: str, server_nonce: str,
                 epoch: int) -> str:
    return _mac(secret, "carp-sync-server", vhid, client_nonce, server_nonce, epoch)


def proven(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected, given)
