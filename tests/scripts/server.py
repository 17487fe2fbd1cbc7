#!/usr/bin/env python3
"""Test servers for the interceptor e2e tests.

usage: server.py MODE --bind ADDR [--port P] [--reply-bytes N] [--seed S]
                 [--tls-cert PEM --tls-key PEM]

MODE
  echo  echoes everything back; after the client's EOF, shuts down its write side.
  hash  reads until EOF, then sends N bytes of the deterministic payload for SEED.
  http  one HTTP/1.1 request per connection; replies 200 with the request body (POST/PUT)
        or "ok\\n" (anything else). Honours "Expect: 100-continue".
  say   reads one line, answers SEED and a newline, waits for EOF.
  ws    a WebSocket server (HTTP/1.1 upgrade): answers every data frame with a text frame
        SEED and every ping with its pong, until the client's close frame.

With --tls-cert/--tls-key, each connection is TLS first (no ALPN).

Prints "LISTENING <port>" once bound, then one JSON line per finished connection:
  {"mode", "peer", "local", "received", "sha256", "sent", "error"}
where received/sha256 describe what the client sent (the HTTP body in http mode), and, in
say and ws modes, "messages": the line, or the last 200 bytes of each WebSocket payload
("ping:" and the payload for a ping).
The deterministic payload is sha256(f"{seed}:{i}") blocks, i = 0, 1, ..., cut to N bytes.
"""
import argparse
import base64
import hashlib
import json
import signal
import socket
import ssl
import sys
import threading

OUT_LOCK = threading.Lock()


def payload(seed, n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def fmt_addr(a):
    host, port = a[0], a[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def emit(rec):
    with OUT_LOCK:
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()


def recv_until_eof(conn, h):
    n = 0
    while True:
        b = conn.recv(1 << 16)
        if not b:
            return n
        h.update(b)
        n += len(b)


def serve_echo(conn, rec, args):
    h = hashlib.sha256()
    while True:
        b = conn.recv(1 << 16)
        if not b:
            break
        h.update(b)
        rec["received"] += len(b)
        conn.sendall(b)
        rec["sent"] += len(b)
    rec["sha256"] = h.hexdigest()
    conn.shutdown(socket.SHUT_WR)


def serve_hash(conn, rec, args):
    h = hashlib.sha256()
    rec["received"] = recv_until_eof(conn, h)
    rec["sha256"] = h.hexdigest()
    data = payload(args.seed, args.reply_bytes)
    conn.sendall(data)
    rec["sent"] = len(data)
    conn.shutdown(socket.SHUT_WR)


def serve_http(conn, rec, args):
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = conn.recv(1 << 16)
        if not b:
            raise EOFError("EOF before end of HTTP headers")
        buf += b
        if len(buf) > 1 << 20:
            raise ValueError("HTTP headers too long")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ")[0]
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    rec["request"] = lines[0]
    if headers.get("expect", "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        b = conn.recv(1 << 16)
        if not b:
            raise EOFError(f"EOF after {len(body)} of {length} body bytes")
        body += b
    rec["received"] = len(body)
    rec["sha256"] = hashlib.sha256(body).hexdigest()
    reply = body if method in ("POST", "PUT") else b"ok\n"
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Length: {len(reply)}\r\n"
        "Content-Type: application/octet-stream\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    conn.sendall(head + reply)
    rec["sent"] = len(head) + len(reply)
    conn.shutdown(socket.SHUT_WR)
    # Drain until the client closes so it never sees a reset.
    conn.settimeout(10)
    try:
        while conn.recv(1 << 16):
            pass
    except OSError:
        pass


def serve_say(conn, rec, args):
    f = conn.makefile("rb")
    line = f.readline()
    rec["received"] = len(line)
    rec["messages"] = [line.decode(errors="replace").rstrip("\n")]
    reply = args.seed.encode() + b"\n"
    conn.sendall(reply)
    rec["sent"] = len(reply)
    while f.read(1 << 16):
        pass


def ws_frame(opcode, payload):
    """A server frame (never masked), FIN set."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n <= 0xFFFF:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


def ws_read_frame(f):
    """(opcode, payload) of the next frame, unmasked; None at EOF."""
    head = f.read(2)
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    key = f.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = f.read(n)
    return head[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data))


def serve_ws(conn, rec, args):
    f = conn.makefile("rb")
    headers = {}
    rec["request"] = f.readline().decode().rstrip("\r\n")
    while (line := f.readline().decode().rstrip("\r\n")):
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    accept = base64.b64encode(hashlib.sha1(
        headers["sec-websocket-key"].encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    rec["messages"] = []
    while (frame := ws_read_frame(f)) is not None:
        opcode, payload = frame
        if opcode == 8:
            conn.sendall(ws_frame(8, payload))
            break
        if opcode == 9:
            rec["messages"].append("ping:" + payload.decode(errors="replace"))
            conn.sendall(ws_frame(10, payload))
        if opcode in (1, 2):
            rec["received"] += len(payload)
            rec["messages"].append(payload[-200:].decode(errors="replace"))
            reply = ws_frame(1, args.seed.encode())
            conn.sendall(reply)
            rec["sent"] += len(reply)


HANDLERS = {"echo": serve_echo, "hash": serve_hash, "http": serve_http, "say": serve_say,
            "ws": serve_ws}


def handle(conn, peer, args):
    rec = {
        "mode": args.mode,
        "peer": fmt_addr(peer),
        "local": fmt_addr(conn.getsockname()),
        "received": 0,
        "sha256": None,
        "sent": 0,
        "error": None,
    }
    try:
        conn.settimeout(120)
        if args.tls:
            conn = args.tls.wrap_socket(conn, server_side=True)
        HANDLERS[args.mode](conn, rec, args)
    except Exception as e:  # reported to the test, which decides
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
        emit(rec)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=sorted(HANDLERS))
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reply-bytes", type=int, default=0)
    p.add_argument("--seed", default="reply")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = p.parse_args()
    args.tls = None
    if args.tls_cert:
        args.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        args.tls.load_cert_chain(args.tls_cert, args.tls_key)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fam = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind, args.port))
    s.listen(1024)
    print(f"LISTENING {s.getsockname()[1]}", flush=True)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=handle, args=(conn, peer, args), daemon=True).start()


if __name__ == "__main__":
    main()
