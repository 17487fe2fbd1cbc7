#!/usr/bin/env python3
"""A listener on someone else's port: what a hostile local user would run while the daemon is
down. Binds PORT on 127.0.0.1 and [::1] and listens, trying to put MARK on the sockets first.

usage: squatter.py PORT MARK
Prints {"uid", "mark": null | errno name} (null: the mark was set) once listening, then waits
for a line on stdin, takes what reached its accept queues without blocking, and prints
{"accepted": [peer, ...]} before exiting.
"""
import errno
import json
import os
import socket
import sys

port, mark = int(sys.argv[1]), int(sys.argv[2])
listeners = []
mark_error = None
for family, host in [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]:
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except OSError as e:
        mark_error = errno.errorcode.get(e.errno, str(e.errno))
    s.bind((host, port))
    s.listen(128)
    s.setblocking(False)
    listeners.append(s)
print(json.dumps({"uid": os.getuid(), "mark": mark_error}), flush=True)

sys.stdin.readline()
accepted = []
for s in listeners:
    while True:
        try:
            conn, peer = s.accept()
        except BlockingIOError:
            break
        accepted.append(f"{peer[0]}:{peer[1]}")
        conn.close()
print(json.dumps({"accepted": accepted}), flush=True)
