#!/usr/bin/env python3
"""A token server for the distribution registry's `auth: token` (the Docker
Hub / Harbor flow), for strata's registry tests. Standard library only: the
JWTs are signed RS256 by `openssl dgst -sha256 -sign KEY`.

    token_server.py KEY CERT ISSUER SERVICE USER PASSWORD LOG

Listens on 127.0.0.1 on a free port and prints that port on stdout (one
line) once it accepts connections. `GET /token?service=S&scope=S...`:

- with HTTP basic auth of USER:PASSWORD: a token granting each requested
  `repository:NAME:ACTIONS` scope the actions among `pull` and `push`;
- without credentials (anonymous): a token granting `pull` only, so anyone
  may pull (like a public repository on Docker Hub) but pushing is refused
  by the registry;
- with other credentials: 401 `{"details": "incorrect username or password"}`,
  as Docker Hub's token server answers;
- for another service: 400.

The token (`token` and `access_token`) is a JWT whose header carries CERT
(DER, base64) in `x5c`, which the registry verifies against its
`rootcertbundle`; claims: `iss` = ISSUER, `sub`, `aud` = SERVICE, `exp`
(5 minutes), `nbf`, `iat`, `jti`, `access`. Each request is appended to LOG
as one line `USER|- SCOPE... -> GRANTED... | STATUS`.
"""

import base64
import binascii
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

KEY, CERT, ISSUER, SERVICE, USER, PASSWORD, LOG = sys.argv[1:8]
TTL = 300
ACTIONS = {"pull", "push"}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der():
    out = subprocess.run(
        ["openssl", "x509", "-in", CERT, "-outform", "DER"],
        check=True,
        capture_output=True,
    )
    return base64.b64encode(out.stdout).decode()


X5C = cert_der()
LOG_LOCK = threading.Lock()


def sign(claims):
    header = {"typ": "JWT", "alg": "RS256", "x5c": [X5C]}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", KEY],
        input=signing_input.encode(),
        check=True,
        capture_output=True,
    )
    return signing_input + "." + b64url(out.stdout)


def grant(scopes, allowed):
    """The `access` claim for `repository:NAME:ACTIONS` scopes."""
    access = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) < 3 or parts[0] != "repository":
            continue
        # A name may hold a port (`host:5000/name`): the actions are last.
        name, wanted = ":".join(parts[1:-1]), parts[-1].split(",")
        actions = sorted(a for a in set(wanted) if a in allowed)
        if actions:
            access.append({"type": "repository", "name": name, "actions": actions})
    return access


def user_of(header):
    """USER for good credentials, None for none, False for bad ones."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return user if (user, password) == (USER, PASSWORD) else False


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body, who, scopes, access):
        # Logged before answering: once a client has its answer, the test
        # finds the request in the log.
        granted = " ".join(
            "repository:%s:%s" % (a["name"], ",".join(a["actions"])) for a in access
        )
        with LOG_LOCK, open(LOG, "a") as log:
            log.write("%s|%s -> %s | %d\n" % (who, " ".join(scopes), granted, status))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
        if url.path != "/token":
            return self.answer(404, {"details": "not found"}, "-", scopes, [])
        if query.get("service", [SERVICE])[0] != SERVICE:
            return self.answer(400, {"details": "unknown service"}, "-", scopes, [])
        user = user_of(self.headers.get("Authorization"))
        if user is False:
            body = {"details": "incorrect username or password"}
            return self.answer(401, body, "?", scopes, [])
        access = grant(scopes, ACTIONS if user else {"pull"})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + TTL,
            "nbf": now - 1,
            "iat": now,
            "jti": b64url(os.urandom(12)),
            "access": access,
        }
        token = sign(claims)
        body = {
            "token": token,
            "access_token": token,
            "expires_in": TTL,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }
        self.answer(200, body, user or "-", scopes, access)

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
