#!/usr/bin/env python3
"""Tiny LAN-side tools of the anchord demo and of e2e/test_stack.py (python3 only, no deps).

  serve --tcp 8080 --udp 8080 [--name web]
      Answer every TCP connection and every UDP datagram with one JSON line saying which
      address the peer came from: {"service", "host", "proto", "port", "peer"}. Listens on
      IPv6 and IPv4 (one dual-stack socket when the container has IPv6).
  query tcp|udp HOST PORT [--timeout S] [--send TEXT]
      Connect (or send one datagram), print one JSON line: {"reply": <the server's JSON or
      text>, "local": <our source address>}. Exit 1 on no answer.
  resolve NAME --server IP [--type A|AAAA]
      Ask that DNS server (dnsmasq on the LAN) directly; print the addresses, one a line.
  client --name HOST --server IP --port 8080 [--listen 9000] [--deadline S]
      The demo's LAN client: find the project address by DNS (dnsmasq knows the names its DHCP
      clients sent), connect, print what the app saw, then keep serving --listen (for egress).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import struct
import sys
import threading
import time


def plain(addr: str) -> str:
    """An IPv4-mapped IPv6 address (dual-stack socket) as plain IPv4; scope id dropped."""
    addr = addr.split("%", 1)[0]
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _bound(kind: int, port: int) -> socket.socket:
    if has_ipv6():
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::"
    else:
        s = socket.socket(socket.AF_INET, kind)
        host = "0.0.0.0"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    return s


def answer(name: str, proto: str, port: int, peer: str) -> bytes:
    return (json.dumps({"service": name, "host": socket.gethostname(), "proto": proto,
                        "port": port, "peer": plain(peer)}) + "\n").encode()


def serve_tcp(name: str, port: int) -> None:
    s = _bound(socket.SOCK_STREAM, port)
    s.listen(64)
    while True:
        conn, peer = s.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(answer(name, "tcp", port, peer[0]))


def serve_udp(name: str, port: int) -> None:
    s = _bound(socket.SOCK_DGRAM, port)
    while True:
        _, peer = s.recvfrom(2048)
        with contextlib.suppress(OSError):
            s.sendto(answer(name, "udp", port, peer[0]), peer)


def start_servers(name: str, tcp: list[int], udp: list[int]) -> None:
    for port in tcp:
        threading.Thread(target=serve_tcp, args=(name, port), daemon=True).start()
    for port in udp:
        threading.Thread(target=serve_udp, args=(name, port), daemon=True).start()
    print(f"{name}: answering tcp {tcp} udp {udp} with the peer address", flush=True)


def query(proto: str, host: str, port: int, timeout: float, send: str) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        local = s.getsockname()[0]
        if proto == "udp":
            s.send(send.encode())
            data = s.recv(4096)
        else:
            chunks = []
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
    text = data.decode(errors="replace").strip()
    try:
        reply: object = json.loads(text)
    except ValueError:
        reply = text
    return {"reply": reply, "local": plain(local)}


# --- DNS, just enough for A/AAAA ---------------------------------------------------------------
def _skip_name(data: bytes, i: int) -> int:
    while True:
        length = data[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            return i + 2
        i += length + 1


def resolve(name: str, server: str, qtype: str = "A", timeout: float = 1.0) -> list[str]:
    code = {"A": 1, "AAAA": 28}[qtype]
    tid = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split("."))
    packet = struct.pack("!HHHHHH", tid, 0x0100, 1, 0, 0, 0) + question + b"\0"
    packet += struct.pack("!HH", code, 1)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server, 53))
        while True:
            data = s.recv(4096)
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == tid:
                break
    _, _, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    i = 12
    for _ in range(qd):
        i = _skip_name(data, i) + 4
    found = []
    for _ in range(an):
        i = _skip_name(data, i)
        rtype, _, _, rdlen = struct.unpack("!HHIH", data[i:i + 10])
        i += 10
        rdata = data[i:i + rdlen]
        i += rdlen
        if rtype == 1 and rdlen == 4:
            found.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28 and rdlen == 16:
            found.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return found


def demo_client(args: argparse.Namespace) -> int:
    if args.listen:
        start_servers("client", [args.listen], [args.listen])
    deadline = time.monotonic() + args.deadline
    last = "nothing tried yet"
    said = False
    while True:
        try:
            addresses = resolve(args.name, args.server)
            if not addresses:
                raise LookupError(f"{args.name}: no address from DNS {args.server} yet")
            project = addresses[0]
            result = query("tcp", project, args.port, 2.0, "")
            reply = result["reply"]
            if not isinstance(reply, dict):
                raise ValueError(f"unexpected answer {reply!r}")
            if not said:
                print(f"the app saw you as {reply['peer']}; your address is {result['local']}; "
                      f"the project got {project} from DHCP", flush=True)
                said = True
            if args.once:
                return 0
            time.sleep(args.every)
            continue
        except Exception as exc:  # noqa: BLE001 - keep trying until the deadline
            last = f"{type(exc).__name__}: {exc}"
        if not said and time.monotonic() > deadline:
            print(f"client: no answer from {args.name}:{args.port} after {args.deadline:g}s "
                  f"(last: {last})", flush=True)
            if args.once:
                return 1
            deadline = float("inf")  # said once; keep serving --listen
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--udp", type=int, action="append", default=[])
    p.add_argument("--name", default="app")
    p = sub.add_parser("query")
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--send", default="hello")
    p = sub.add_parser("resolve")
    p.add_argument("name")
    p.add_argument("--server", required=True)
    p.add_argument("--type", default="A", choices=("A", "AAAA"))
    p = sub.add_parser("client")
    p.add_argument("--name", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--listen", type=int, default=0)
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--every", type=float, default=30.0)
    p.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        start_servers(args.name, args.tcp, args.udp)
        while True:
            time.sleep(3600)
    if args.cmd == "query":
        try:
            print(json.dumps(query(args.proto, args.host, args.port, args.timeout, args.send)))
        except OSError as exc:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            return 1
        return 0
    if args.cmd == "resolve":
        try:
            for addr in resolve(args.name, args.server, args.type):
                print(addr)
        except OSError as exc:
            print(f"resolve: {exc}", file=sys.stderr)
            return 1
        return 0
    return demo_client(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
