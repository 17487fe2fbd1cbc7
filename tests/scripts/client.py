#!/usr/bin/env python3
"""Test client for the interceptor e2e tests. Prints one JSON object on stdout:
  {"pid", "exe", "comm", "uid", "results": [per connection]}
and exits 0 whatever the network did (errors are reported per connection); the test decides.

usage:
  client.py hash --connect HOST:PORT [--connect ...] --send-bytes N [--seed S]
      per target, in order: connect, send N payload bytes, shut down writing, read to EOF.
  client.py echo-many --connect HOST:PORT --conns N --bytes N [--seed S]
      N threads each open a connection; once all are open (barrier), each sends its own
      N-byte payload (seed S-i) while reading the echo back, and compares.
  client.py connect --connect HOST:PORT [...]
      connect, send b"ping\\n", shut down writing, read to EOF: reports the first error.
  client.py hold --connect HOST:PORT --conns N [--wait S]
      N connections one after another, each: connect, send b"ping\\n", read the 5-byte echo
      (at most S seconds, default 10); prints the report, then keeps every connection open
      until stdin closes.

HOST is an IPv4 address or a bracketed IPv6 one ([fd00::2]:80, [::ffff:127.0.0.2]:80).
Per-connection result: {"target", "local", "peer", "sent", "sent_sha256", "received",
  "received_sha256", "eof", "match", "error": null | {"stage", "errno", "name", "msg"}}
"""
import argparse
import errno as errno_mod
import hashlib
import json
import os
import socket
import sys
import threading

TIMEOUT = 60


def payload(seed, n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def parse_target(t):
    if t.startswith("["):
        host, _, port = t[1:].partition("]:")
        return socket.AF_INET6, host, int(port)
    host, _, port = t.rpartition(":")
    return socket.AF_INET, host, int(port)


def fmt_addr(a):
    host, port = a[0], a[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def new_result(target):
    return {
        "target": target,
        "local": None,
        "peer": None,
        "sent": 0,
        "sent_sha256": None,
        "received": 0,
        "received_sha256": None,
        "eof": False,
        "match": None,
        "error": None,
    }


def set_error(res, stage, e):
    if res["error"] is None:
        en = getattr(e, "errno", None)
        res["error"] = {
            "stage": stage,
            "errno": en,
            "name": errno_mod.errorcode.get(en) if en is not None else None,
            "msg": f"{type(e).__name__}: {e}",
        }


def connect(target, res):
    fam, host, port = parse_target(target)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((host, port))
    except OSError as e:
        set_error(res, "connect", e)
        s.close()
        return None
    res["local"] = fmt_addr(s.getsockname())
    try:
        res["peer"] = fmt_addr(s.getpeername())
    except OSError:
        pass
    return s


def read_to_eof(s, res):
    h = hashlib.sha256()
    data = bytearray()
    try:
        while True:
            b = s.recv(1 << 16)
            if not b:
                res["eof"] = True
                break
            h.update(b)
            data += b
    except OSError as e:
        set_error(res, "recv", e)
    res["received"] = len(data)
    res["received_sha256"] = h.hexdigest()
    return bytes(data)


def send_all(s, data, res):
    try:
        s.sendall(data)
        res["sent"] = len(data)
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        set_error(res, "send", e)
    res["sent_sha256"] = hashlib.sha256(data).hexdigest()


def cmd_hash(args):
    data = payload(args.seed, args.send_bytes)
    results = []
    for t in args.connect:
        res = new_result(t)
        s = connect(t, res)
        if s is not None:
            send_all(s, data, res)
            read_to_eof(s, res)
            s.close()
        results.append(res)
    return results


def cmd_connect(args):
    results = []
    for t in args.connect:
        res = new_result(t)
        s = connect(t, res)
        if s is not None:
            send_all(s, b"ping\n", res)
            read_to_eof(s, res)
            s.close()
        results.append(res)
    return results


def cmd_echo_many(args):
    target = args.connect[0]
    n = args.conns
    results = [new_result(target) for _ in range(n)]
    barrier = threading.Barrier(n, timeout=TIMEOUT)

    def worker(i):
        res = results[i]
        res["index"] = i
        s = connect(target, res)
        try:
            barrier.wait()
        except threading.BrokenBarrierError as e:
            set_error(res, "barrier", e)
        if s is None:
            return
        data = payload(f"{args.seed}-{i}", args.bytes)
        sender = threading.Thread(target=send_all, args=(s, data, res))
        sender.start()
        got = read_to_eof(s, res)
        sender.join(TIMEOUT)
        s.close()
        res["match"] = got == data

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    return results


def cmd_hold(args):
    target = args.connect[0]
    results, held = [], []
    for i in range(args.conns):
        res = new_result(target)
        res["index"] = i
        s = connect(target, res)
        if s is not None:
            s.settimeout(args.wait)
            held.append(s)
            try:
                s.sendall(b"ping\n")
                res["sent"] = 5
                got = b""
                while len(got) < 5:
                    b = s.recv(5 - len(got))
                    if not b:
                        res["eof"] = True
                        break
                    got += b
                res["received"] = len(got)
            except OSError as e:
                set_error(res, "echo", e)
        results.append(res)
    return results, held


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["hash", "echo-many", "connect", "hold"])
    p.add_argument("--connect", action="append", required=True)
    p.add_argument("--send-bytes", type=int, default=0)
    p.add_argument("--seed", default="client")
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--wait", type=float, default=10.0)
    args = p.parse_args()
    held = []
    if args.mode == "hold":
        results, held = cmd_hold(args)
    else:
        cmd = {"hash": cmd_hash, "echo-many": cmd_echo_many, "connect": cmd_connect}[args.mode]
        results = cmd(args)
    with open("/proc/self/comm") as f:
        comm = f.read().strip()
    out = {
        "pid": os.getpid(),
        "exe": os.readlink("/proc/self/exe"),
        "comm": comm,
        "uid": os.getuid(),
        "results": results,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    if held:
        sys.stdin.read()


if __name__ == "__main__":
    main()
