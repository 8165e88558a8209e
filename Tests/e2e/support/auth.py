"""Credentials for the authentication tests (SPEC §12): hashed tokens files, HS256 / RS256 /
ES256 JWTs made here (hmac/hashlib and `cryptography`, never the broker's own code), and HTTP /
WebSocket clients that present a credential.

`Credentials(mode, dir)` hands out a token per principal for one broker: in token mode a random
secret whose SHA-256 goes into the tokens file, in the JWT modes a signed JWT whose `bus` claim
carries the same permissions. `env()` is what the broker needs to check them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from websockets.exceptions import InvalidStatus

from support.broker import Broker, q
from support.ws import WS, WSClosed

MODES = ("token", "hs256", "rs256", "es256")
PERMISSIONS = ("publish", "subscribe", "groups", "admin", "rate")


# --------------------------------------------------------------------------------------------
# tokens and the tokens file


def sha256_hex(token: str) -> str:
    """The tokens file's `sha256`: hex of the SHA-256 of the token's UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "tok_" + secrets.token_urlsafe(24)


def write_file_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so that a broker re-reading it never sees half a file."""
    tmp = path.with_name(path.name + f".tmp-{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tokens_file(path: Path, entries: list[dict]) -> None:
    write_file_atomically(path, json.dumps({"tokens": entries}, indent=1))


# --------------------------------------------------------------------------------------------
# JWTs


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class Signer:
    """Signs JWTs with one algorithm and one key (a fresh key pair for RS256 / ES256)."""

    def __init__(self, alg: str, secret: str | None = None):
        self.alg = alg
        if alg == "HS256":
            self.secret = secret or secrets.token_urlsafe(32)
        elif alg == "RS256":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def signature(self, signing_input: bytes) -> bytes:
        if self.alg == "HS256":
            return hmac.new(self.secret.encode(), signing_input, hashlib.sha256).digest()
        if self.alg == "RS256":
            return self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        der = self.key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r||s, not DER

    def sign(self, claims: dict, header: dict | None = None) -> str:
        head = {"alg": self.alg, "typ": "JWT", **(header or {})}
        signing_input = f"{b64url_json(head)}.{b64url_json(claims)}"
        return f"{signing_input}.{b64url(self.signature(signing_input.encode()))}"


def hs256_with_key(key: bytes, claims: dict) -> str:
    """An HS256 JWT whose HMAC key is `key` (the algorithm-confusion attack: a verifier holding
    an RSA/EC public key must not accept an HMAC made with that key's PEM text)."""
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT'})}.{b64url_json(claims)}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def unsigned_jwt(claims: dict) -> str:
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(claims)}."


def tamper_claims(jwt: str, **changes) -> str:
    """The same JWT (same signature) with its claims changed."""
    head, body, sig = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{head}.{b64url_json(claims)}.{sig}"


# --------------------------------------------------------------------------------------------
# one broker's credentials


class Credentials:
    """Principals and their tokens for one broker in `mode` (token | hs256 | rs256 | es256)."""

    def __init__(self, mode: str, directory: Path):
        assert mode in MODES, mode
        self.mode = mode
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tokens_file = self.dir / "tokens.json"
        self.key_file = self.dir / "jwt-public.pem"
        self.entries: dict[str, dict] = {}  # token mode: name -> tokens file entry
        self.tokens: dict[str, str] = {}  # name -> the token a client presents
        self.perms: dict[str, dict] = {}
        if mode != "token":
            self.signer = Signer(mode.upper())

    @property
    def is_jwt(self) -> bool:
        return self.mode != "token"

    def add(self, name: str, exp: int | None = None, **perms) -> str:
        """A principal with permissions (publish, subscribe, groups, admin, rate; absent keys
        are left out of the entry / `bus` claim); returns its token. In token mode, call
        before `env()` or `write()` the file again."""
        for k in perms:
            assert k in PERMISSIONS, k
        self.perms[name] = perms
        if self.is_jwt:
            token = self.jwt(name, exp=exp, **perms)
        else:
            token = new_token()
            self.entries[name] = {"name": name, "sha256": sha256_hex(token), **perms}
        self.tokens[name] = token
        return token

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        self.tokens.pop(name, None)

    def jwt(self, sub: str | None, exp: int | None = None, bus: bool = True, **perms) -> str:
        """A JWT signed with this broker's key; `exp` in epoch seconds (default an hour ahead);
        `sub=None` leaves out the subject; `bus=False` leaves out the `bus` claim."""
        claims: dict = {"exp": int(time.time()) + 3600 if exp is None else exp}
        if sub is not None:
            claims["sub"] = sub
        if bus:
            claims["bus"] = perms
        return self.signer.sign(claims)

    def write(self) -> None:
        if not self.is_jwt:
            write_tokens_file(self.tokens_file, list(self.entries.values()))

    def env(self, **extra) -> dict:
        """Broker environment for this mode (writes the tokens file / public key)."""
        env = {"BUS_AUTH_TIMEOUT_MS": "800", "BUS_MAX_BAD_FRAMES": "1000"}
        if self.mode == "token":
            self.write()
            env.update(BUS_AUTH="token", BUS_TOKENS_FILE=str(self.tokens_file))
        elif self.mode == "hs256":
            env.update(BUS_AUTH="jwt", BUS_JWT_SECRET=self.signer.secret)
        else:
            self.key_file.write_bytes(self.signer.public_pem())
            env.update(BUS_AUTH="jwt", BUS_JWT_PUBLIC_KEY_FILE=str(self.key_file))
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def bad_tokens(self, name: str) -> list[tuple[str, str]]:
        """(label, token) pairs the broker must refuse; `name` is a known principal whose
        permissions the forged ones copy."""
        perms = self.perms[name]
        out = [("garbage", "not-a-token"), ("empty", "")]
        if not self.is_jwt:
            out.append(("unknown token", new_token()))
            out.append(("hash instead of token", self.entries[name]["sha256"]))
            out.append(("token with a changed character", _flip_last(self.tokens[name])))
            return out
        other = Signer(self.signer.alg)  # same algorithm, another key: a bad signature
        good = self.tokens[name]
        now = int(time.time())
        out += [
            ("bad signature", other.sign({"sub": name, "exp": now + 3600, "bus": perms})),
            ("tampered claims", tamper_claims(good, sub="root", bus={"publish": [">"], "admin": True})),
            ("truncated signature", good.rsplit(".", 1)[0] + "." + good.rsplit(".", 1)[1][:-8]),
            ("expired", self.jwt(name, exp=now - 3600, **perms)),
            ("no exp", self.signer.sign({"sub": name, "bus": perms})),
            ("no sub", self.jwt(None, **perms)),
            ("alg none", unsigned_jwt({"sub": name, "exp": now + 3600, "bus": perms})),
        ]
        if self.mode in ("rs256", "es256"):
            out.append(("HS256 made with the public key",
                        hs256_with_key(self.signer.public_pem(), {"sub": name, "exp": now + 3600, "bus": perms})))
        return out


def _flip_last(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


# --------------------------------------------------------------------------------------------
# clients presenting a credential


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def ws_with_header(broker: Broker, token: str) -> WS:
    """A WebSocket whose upgrade request carries `Authorization: Bearer <token>`."""
    client = WS(broker.ws_url, additional_headers=bearer(token))
    broker._clients.append(client)
    return client


def upgrade_status(broker: Broker, token: str) -> int:
    """The HTTP status of a refused upgrade (fails if the upgrade succeeds)."""
    try:
        client = WS(broker.ws_url, additional_headers=bearer(token))
    except InvalidStatus as exc:
        return exc.response.status_code
    client.close()
    raise AssertionError("the WebSocket upgrade was accepted")


def request(ws: WS, frame: dict, timeout: float = 5.0) -> dict:
    """Send a frame carrying a fresh rid and return the reply with that rid (PUBLISHED,
    SUBSCRIBED, AUTHED or ERROR); MESSAGE frames meanwhile are kept for recv()."""
    rid = frame.get("rid") or f"rq-{secrets.token_hex(4)}"
    ws.send({**frame, "rid": rid})
    return ws._await_reply(("PUBLISHED", "SUBSCRIBED", "AUTHED", "ERROR"), timeout, rid)


def auth_frame(ws: WS, token: str, timeout: float = 5.0) -> dict:
    return request(ws, {"type": "AUTH", "token": token}, timeout)


def ws_authed(broker: Broker, token: str) -> WS:
    """A WebSocket authenticated by an AUTH frame (asserted AUTHED)."""
    client = broker.ws()
    reply = auth_frame(client, token)
    assert reply["type"] == "AUTHED", reply
    return client


def assert_error(reply: dict, code: str, rid: str | None = None) -> dict:
    assert reply.get("type") == "ERROR" and reply.get("code") == code, f"expected ERROR {code}, got {reply}"
    if rid is not None:
        assert reply.get("rid") == rid, reply
    return reply


class HTTPAs:
    """HTTP requests to a broker with `Authorization: Bearer <token>` (or none)."""

    def __init__(self, broker: Broker, token: str | None):
        self.broker = broker
        self.token = token

    def raw(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 5.0):
        """(status, response headers, parsed JSON body or None)."""
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if self.token is not None:
            hdrs.update(bearer(self.token))
        status, resp_headers, raw = self.broker.http_raw(method, path, data, hdrs, timeout)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, resp_headers, parsed

    def http(self, method: str, path: str, body=None):
        status, _, parsed = self.raw(method, path, body)
        return status, parsed

    def publish(self, topic: str, payload, headers: dict | None = None):
        body = {"payload": payload}
        if headers is not None:
            body["headers"] = headers
        return self.raw("POST", f"/topics/{q(topic)}/events", body)

    def create_topic(self, topic: str, **config) -> dict:
        status, body = self.http("POST", "/topics", {"topic": topic, **config})
        assert status == 200, f"POST /topics {topic} {config} -> {status} {body}"
        return body

    def stored(self, topic: str) -> int:
        """How many offsets the topic holds over all partitions (0 if it does not exist)."""
        status, body = self.http("GET", f"/topics/{q(topic)}")
        if status == 404:
            return 0
        assert status == 200, f"GET /topics/{topic} -> {status} {body}"
        return sum(p["highWatermark"] for p in body["partitions"])

    def events(self, topic: str) -> list[dict]:
        """Every event of every partition of `topic` ([] if it does not exist)."""
        status, body = self.http("GET", f"/topics/{q(topic)}")
        if status == 404:
            return []
        assert status == 200, f"GET /topics/{topic} -> {status} {body}"
        out = []
        for p in body["partitions"]:
            nxt = 1
            while True:
                status, page = self.http(
                    "GET", f"/topics/{q(topic)}/events?partition={p['partition']}&from={nxt}&limit=500")
                assert status == 200, f"GET events of {topic} -> {status} {page}"
                if not page["events"]:
                    break
                out.extend(page["events"])
                nxt = page["events"][-1]["offset"] + 1
        return out


# --------------------------------------------------------------------------------------------
# metrics and logs

_METRIC = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def refusals(broker: Broker) -> dict[str, float]:
    """bus_auth_refusals_total by reason, from the open /metrics."""
    status, _, raw = broker.http_raw("GET", "/metrics")
    assert status == 200, status
    out: dict[str, float] = {}
    for line in raw.decode().splitlines():
        m = _METRIC.match(line)
        if not m or m["name"] != "bus_auth_refusals_total":
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        reason = labels.get("reason", "")
        out[reason] = out.get(reason, 0.0) + float(m["value"])
    return out


def error_log_lines(broker: Broker) -> list[str]:
    """Lines the broker logged at level error or above."""
    try:
        text = broker.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if re.match(r"^\S+ (error|critical) ", line)]


def wait_close(ws: WS, timeout: float = 5.0) -> tuple[int | None, str | None, list[dict]]:
    """Read until the server closes the connection; (close code, close reason, frames read)."""
    deadline = time.monotonic() + timeout
    frames = list(ws.pending)
    ws.pending.clear()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"server did not close the connection within {timeout}s; frames: {frames[-3:]}")
        try:
            frames.append(ws._read(left))
        except TimeoutError:
            continue
        except WSClosed as closed:
            return closed.code, closed.reason, frames
