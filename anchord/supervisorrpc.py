"""One XML-RPC call to supervisord over its unix socket: ``supervisor.getState``.

Owns the one question the entry process asks supervisord (``anchord.supervise``): what state
it is in (RUNNING, or SHUTDOWN while it stops: then it answers every call with the fault
SHUTDOWN_STATE). The entry process lives as long as the container and asks this at its start
and at its stop only; ``xmlrpc.client`` (with the http.client, email and expat modules it
brings) and supervisor's transport cost it 8-10 MB of RSS for that, so the request and the
two possible answers are written and read here: an HTTP/1.0 POST on the socket, the answer
read to its end, its ``statename`` member or its ``faultCode``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

REQUEST_BODY = (b"<?xml version='1.0'?>\n<methodCall>\n<methodName>supervisor.getState"
                b"</methodName>\n<params>\n</params>\n</methodCall>\n")
MAX_ANSWER = 64 * 1024  # getState's answer is ~300 octets
_STATENAME = re.compile(rb"<name>statename</name>\s*<value>\s*(?:<string>)?\s*([A-Z_]+)")
_FAULT_CODE = re.compile(rb"<name>faultCode</name>\s*<value>\s*<(?:int|i4)>\s*(-?\d+)")


class Fault(Exception):
    """supervisord answered with an XML-RPC fault (``code``: supervisor.xmlrpc.Faults)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"supervisord fault {code}")
        self.code = code


class BadAnswer(OSError):
    """supervisord's answer is not an XML-RPC answer to getState."""


def get_state(sock: Path, timeout: float = 2.0) -> str:
    """supervisord's state name. Raises Fault when it answers with a fault, OSError when it
    does not answer (BadAnswer when it answers something else)."""
    request = (b"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
               b"Content-Length: %d\r\n\r\n" % len(REQUEST_BODY)) + REQUEST_BODY
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(request)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
            if len(answer) > MAX_ANSWER:
                raise BadAnswer(f"supervisord's answer is over {MAX_ANSWER} octets")
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise BadAnswer(f"supervisord answered {head[:80]!r}")
    if b"<fault>" in body:
        code = _FAULT_CODE.search(body)
        if code is None:
            raise BadAnswer(f"a fault without a code: {body[:200]!r}")
        raise Fault(int(code[1]))
    name = _STATENAME.search(body)
    if name is None:
        raise BadAnswer(f"no statename in supervisord's answer: {body[:200]!r}")
    return name[1].decode()
