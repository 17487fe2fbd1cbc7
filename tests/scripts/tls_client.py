"""TLS test client for tests/tests/tls.rs; runs under `interceptor exec`, uses the system
trust store only. Prints one JSON report on stdout.

  tls_client.py urllib URL                 GET with urllib, report status and body
  tls_client.py malformed HOST PORT URL    a good connection and a garbage ClientHello at
                                           once; the good one must not notice
  tls_client.py stall HOST PORT SECONDS    half a ClientHello, then wait for the proxy to
                                           give up
  tls_client.py websocket HOST PORT        TLS, GET /ws with Upgrade, then bytes both ways
  tls_client.py badhttp HOST PORT          plain TCP, a request with a broken header line
  tls_client.py bighead HOST PORT          plain TCP, a request with a 1 MB header
  tls_client.py slowhead HOST PORT         plain TCP, half a request head, then silence
  tls_client.py h2error HOST PORT          plain TCP, the h2c preface, then a DATA frame on
                                           stream 0 (a connection error in HTTP/2)
  tls_client.py parallel URL N             N urllib GETs at once, each on its own connection
  tls_client.py pipeline HOST PORT         TLS, several requests written at once, then the
                                           responses read in order
  tls_client.py trailers HOST PORT [VALUE] TLS, a chunked POST /echo with a trailer
                                           x-checksum: VALUE (abc123); reads the chunked
                                           response and its trailers
  tls_client.py badchunk HOST PORT         TLS, a chunked POST /upload whose second chunk
                                           size is not hex; reads the response
  tls_client.py wssecret HOST PORT TEXT    plain TCP WebSocket: a masked text frame "token
                                           TEXT" and a 70000-byte masked binary frame ending
                                           in " TEXT"; reports the server's replies
  tls_client.py wsping HOST PORT TEXT      plain TCP WebSocket: a text message in two
                                           fragments with a ping "ping TEXT" between them;
                                           reports the frames the server answers with
  tls_client.py h2ws HOST PORT TEXT PAUSE  WebSocket over HTTP/2 (RFC 8441 extended CONNECT to
                                           /ws, python h2): after the 200 and PAUSE seconds
                                           of silence, a masked text frame "token TEXT";
                                           reports the frame echoed back, unmasked
  tls_client.py h2trailers HOST PORT VALUE TLS with ALPN h2, POST /echo with a trailing HEADERS
                                           x-checksum: VALUE; reports the response and its
                                           trailers
  tls_client.py tlssay HOST PORT TEXT      TLS without ALPN, a line TEXT (not HTTP); reports
                                           the line that comes back
  tls_client.py h2stall HOST PORT          TLS with ALPN h2, the preface and SETTINGS, then
                                           half a HEADERS frame and silence
"""
import json
import socket
import ssl
import sys
import time
import urllib.request


def urllib_get(url):
    with urllib.request.urlopen(url, timeout=20) as r:
        return {"status": r.status, "body": r.read().decode()}


def read_all(sock):
    """Reads until EOF or error; returns (bytes, error name or None)."""
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data, None
            data += chunk
    except OSError as e:
        return data, type(e).__name__


def malformed(host, port, url):
    ctx = ssl.create_default_context()
    good = ctx.wrap_socket(socket.create_connection((host, port), timeout=20),
                           server_hostname=host)
    bad = socket.create_connection((host, port), timeout=20)
    # A handshake record whose ClientHello body is nonsense.
    body = b"\x01\x00\x00\x20" + b"\xff" * 32
    bad.sendall(b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body)
    bad_reply, bad_error = read_all(bad)
    good.sendall(b"GET /hello HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host.encode())
    reply, error = read_all(good)
    return {
        "bad_reply_hex": bad_reply.hex(),
        "bad_error": bad_error,
        "good_reply": reply.decode(errors="replace"),
        "good_error": error,
    }


def stall(host, port, seconds):
    s = socket.create_connection((host, port), timeout=float(seconds) + 10)
    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    start = time.monotonic()
    data, error = read_all(s)
    return {"closed_after": time.monotonic() - start, "error": error, "data_hex": data.hex()}


def websocket(host, port):
    ctx = ssl.create_default_context()
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=20), server_hostname=host)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
              % host.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    # A masked text frame "hello" (RFC 6455 example), echoed back by the test server.
    frame = bytes.fromhex("818537fa213d7f9f4d5158")
    echoed = b""
    for i in range(1, 4):
        s.sendall(frame)
        while len(echoed) < i * len(frame):
            chunk = s.recv(4096)
            if not chunk:
                break
            echoed += chunk
    s.close()
    return {"status_line": head.split(b"\r\n")[0].decode(), "echoed_hex": echoed.hex()}


def badhttp(host, port):
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nthis is not a header\r\n\r\n")
    reply, error = read_all(s)
    return {"reply": reply.decode(errors="replace"), "error": error}


def bighead(host, port):
    s = socket.create_connection((host, port), timeout=20)
    try:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    except OSError as e:
        pass  # the proxy may stop reading and answer before the header is all sent
    reply, error = read_all(s)
    return {"reply": reply.decode(errors="replace"), "error": error}


def slowhead(host, port):
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n")
    start = time.monotonic()
    reply, error = read_all(s)
    return {"closed_after": time.monotonic() - start, "reply": reply.decode(errors="replace"),
            "error": error}


def frame_types(data):
    """Types of the HTTP/2 frames in `data`, in order (GOAWAY is 7)."""
    types, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        types.append(data[at + 3])
        at += 9 + length
    return types


def ws_masked_frame(opcode, payload, fin=True):
    """A client frame masked with a fixed key, FIN set unless `fin` is false."""
    key = bytes.fromhex("37fa213d")
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n <= 0xFFFF:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_upgraded(host, port):
    """A plain TCP connection upgraded to WebSocket at /ws: (socket, reader, status line)."""
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n" % host.encode())
    f = s.makefile("rb")
    status = f.readline().decode().rstrip("\r\n")
    while f.readline() not in (b"\r\n", b""):
        pass
    return s, f, status


def ws_read_server_frame(f):
    """(opcode, payload) of the next server frame (never masked, under 64 KiB)."""
    head = f.read(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    return head[0] & 0x0F, f.read(n).decode(errors="replace")


def wssecret(host, port, text):
    s, f, status = ws_upgraded(host, port)
    # Both frames in one write: the proxy must find the boundary inside its reads.
    s.sendall(ws_masked_frame(1, b"token " + text.encode())
              + ws_masked_frame(2, b"a" * (69999 - len(text)) + b" " + text.encode()))
    received = [ws_read_server_frame(f)[1] for _ in range(2)]
    s.sendall(ws_masked_frame(8, b"\x03\xe8"))
    closing = f.read(4)
    s.close()
    return {"status_line": status, "received": received, "close_hex": closing.hex()}


def wsping(host, port, text):
    """A text message in two fragments with a ping "ping TEXT" between them."""
    s, f, status = ws_upgraded(host, port)
    s.sendall(ws_masked_frame(1, b"first ", fin=False)
              + ws_masked_frame(9, b"ping " + text.encode())
              + ws_masked_frame(0, b"last"))
    # The server answers the message's first fragment and the ping.
    frames = [ws_read_server_frame(f) for _ in range(2)]
    s.sendall(ws_masked_frame(8, b"\x03\xe8"))
    closing = f.read(4)
    s.close()
    return {"status_line": status, "frames": frames, "close_hex": closing.hex()}


def h2_connect(host, port):
    """TLS with ALPN h2 and the client preface sent: (socket, h2 connection)."""
    import h2.config
    import h2.connection
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=20), server_hostname=host)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def h2ws(host, port, text, pause):
    import h2.events
    s, conn = h2_connect(host, port)
    # Extended CONNECT needs the server's SETTINGS_ENABLE_CONNECT_PROTOCOL first.
    enabled = None
    while enabled is None:
        data = s.recv(65536)
        if not data:
            raise SystemExit("connection closed before the server's SETTINGS")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                enabled = bool(conn.remote_settings.enable_connect_protocol)
        s.sendall(conn.data_to_send())
    frame = ws_masked_frame(1, b"token " + text.encode())
    conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"),
                          (":scheme", "https"), (":path", "/ws"),
                          (":authority", f"{host}:{port}"), ("sec-websocket-version", "13")])
    s.sendall(conn.data_to_send())
    status, echoed, ended, sent = None, b"", False, False
    while len(echoed) < len(frame) and not ended:
        if status is not None and not sent:
            # A quiet WebSocket outlives the connection's header timeout.
            time.sleep(pause)
            conn.send_data(1, frame)
            s.sendall(conn.data_to_send())
            sent = True
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(b":status", b"").decode()
            elif isinstance(ev, h2.events.DataReceived):
                echoed += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                ended = True
        s.sendall(conn.data_to_send())
    conn.end_stream(1)
    s.sendall(conn.data_to_send())
    s.close()
    # The echo is the client's own frame: 2 header bytes, the key, the masked payload.
    key, body = echoed[2:6], echoed[6:]
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(body)) if len(key) == 4 else b""
    return {"enable_connect_protocol": enabled, "status": status,
            "same_header": echoed[:6] == frame[:6], "payload": payload.decode(errors="replace")}


def h2trailers(host, port, value):
    import h2.events
    s, conn = h2_connect(host, port)
    conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":path", "/echo"),
                          (":authority", host), ("te", "trailers"), ("trailer", "x-checksum")])
    conn.send_data(1, b"hello world")
    conn.send_headers(1, [("x-checksum", value)], end_stream=True)
    s.sendall(conn.data_to_send())
    status, body, trailers, ended = None, b"", {}, False
    while not ended:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(b":status", b"").decode()
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset,
                                 h2.events.ConnectionTerminated)):
                ended = True
        s.sendall(conn.data_to_send())
    alpn = s.selected_alpn_protocol()
    s.close()
    return {"alpn": alpn, "status": status, "body": body.decode(errors="replace"),
            "trailers": trailers}


def tlssay(host, port, text):
    s = tls_connect(host, port)
    s.sendall(text.encode() + b"\n")
    reply = s.makefile("rb").readline().decode().rstrip("\n")
    s.close()
    return {"reply": reply}


def h2stall(host, port):
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=20), server_hostname=host)
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    # A HEADERS frame on stream 1 announcing 64 bytes of header block; 8 of them follow.
    headers = b"\x00\x00\x40\x01\x04\x00\x00\x00\x01" + b"\x82" * 8
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + headers)
    start = time.monotonic()
    reply, error = read_all(s)
    return {"alpn": s.selected_alpn_protocol(), "closed_after": time.monotonic() - start,
            "frame_types": frame_types(reply), "error": error}


def h2error(host, port):
    s = socket.create_connection((host, port), timeout=20)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    data_on_stream_0 = b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd"
    s.sendall(preface + settings + data_on_stream_0)
    reply, error = read_all(s)
    return {"frame_types": frame_types(reply), "error": error}


def parallel(url, n):
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda _: urllib_get(url), range(n)))
    return {"statuses": [r["status"] for r in results], "bodies": sorted({r["body"] for r in results})}


def tls_connect(host, port):
    ctx = ssl.create_default_context()
    return ctx.wrap_socket(socket.create_connection((host, port), timeout=20),
                           server_hostname=host)


def read_response(f):
    """One HTTP/1.1 response from a buffered reader: status, headers, body, trailers."""
    status = f.readline().decode().rstrip("\r\n")
    headers = {}
    while (line := f.readline().decode().rstrip("\r\n")):
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body, trailers = b"", {}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while (size := int(f.readline().split(b";")[0], 16)):
            body += f.read(size)
            f.readline()
        while (line := f.readline().decode().rstrip("\r\n")):
            k, _, v = line.partition(":")
            trailers[k.strip().lower()] = v.strip()
    else:
        body = f.read(int(headers.get("content-length", "0")))
    return {"status": status, "headers": headers, "body": body.decode(errors="replace"),
            "trailers": trailers}


def pipeline(host, port):
    s = tls_connect(host, port)
    host_line = b"Host: %s\r\n" % host.encode()
    requests = (b"GET /bytes/3 HTTP/1.1\r\n" + host_line + b"\r\n"
                + b"POST /echo HTTP/1.1\r\n" + host_line + b"Content-Length: 11\r\n\r\nsecond body"
                + b"GET /hello HTTP/1.1\r\n" + host_line + b"Connection: close\r\n\r\n")
    # One write: all three are in flight before the first response.
    s.sendall(requests)
    f = s.makefile("rb")
    responses = [read_response(f) for _ in range(3)]
    return {"responses": [{"status": r["status"], "body": r["body"]} for r in responses]}


def trailers(host, port, value):
    s = tls_connect(host, port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n"
              b"Trailer: x-checksum\r\nTE: trailers\r\nConnection: close\r\n\r\n"
              b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: %s\r\n\r\n"
              % (host.encode(), value.encode()))
    return read_response(s.makefile("rb"))


def badchunk(host, port):
    """A chunked upload whose second chunk size is not hex: the request is the workload's
    error, whatever the upstream would have said."""
    s = tls_connect(host, port)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n"
              b"Connection: close\r\n\r\n5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n"
              % host.encode())
    return read_response(s.makefile("rb"))


def main():
    mode = sys.argv[1]
    if mode == "urllib":
        out = urllib_get(sys.argv[2])
    elif mode == "malformed":
        out = malformed(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "stall":
        out = stall(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "websocket":
        out = websocket(sys.argv[2], int(sys.argv[3]))
    elif mode == "badhttp":
        out = badhttp(sys.argv[2], int(sys.argv[3]))
    elif mode == "bighead":
        out = bighead(sys.argv[2], int(sys.argv[3]))
    elif mode == "slowhead":
        out = slowhead(sys.argv[2], int(sys.argv[3]))
    elif mode == "h2error":
        out = h2error(sys.argv[2], int(sys.argv[3]))
    elif mode == "parallel":
        out = parallel(sys.argv[2], int(sys.argv[3]))
    elif mode == "pipeline":
        out = pipeline(sys.argv[2], int(sys.argv[3]))
    elif mode == "wssecret":
        out = wssecret(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "wsping":
        out = wsping(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "h2ws":
        out = h2ws(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    elif mode == "tlssay":
        out = tlssay(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "h2stall":
        out = h2stall(sys.argv[2], int(sys.argv[3]))
    elif mode == "h2trailers":
        out = h2trailers(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "badchunk":
        out = badchunk(sys.argv[2], int(sys.argv[3]))
    elif mode == "trailers":
        out = trailers(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "abc123")
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
