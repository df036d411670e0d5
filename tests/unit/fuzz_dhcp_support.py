"""Seeds and mutations shared by the DHCP fuzz tests (tests/unit/test_fuzz_dhcp*.py).

Owns the reading of the captured frames in ``tests/fixtures/dhcp`` (real dnsmasq, Kea and radvd
replies, see its README), the hypothesis settings of those tests, and the mutation strategies:
byte-level (flip, overwrite, insert, delete, truncate, splice another seed's bytes) and
option-level (TLVs dropped, duplicated, split, resized, inserted), with the IP and UDP lengths
put right afterwards so a mutation reaches the option parsers and is not just a bad header.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dhcp"
MAC = "02:42:aa:bb:cc:01"  # the client MAC of the captures
IAID = 1

# Cases per test: small by default (CI: the whole file well under a minute), the documented
# long run sets ANCHORD_FUZZ_EXAMPLES=100000.
EXAMPLES = int(os.environ.get("ANCHORD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def seeds(pattern: str) -> list[bytes]:
    found = [p.read_bytes() for p in sorted(FIXTURES.glob(pattern))]
    assert found, f"no fixtures {pattern} in {FIXTURES}"
    return found


def reframe4(frame: bytes, payload: bytes) -> bytes:
    """``frame``'s Ethernet/IPv4/UDP headers around a new UDP ``payload``, lengths fixed."""
    ihl = (frame[14] & 0x0F) * 4
    head = bytearray(frame[:14 + ihl + 8])
    struct.pack_into("!H", head, 16, ihl + 8 + len(payload))
    struct.pack_into("!H", head, 14 + ihl + 4, 8 + len(payload))
    return bytes(head) + payload


def udp_payload4(frame: bytes) -> bytes:
    ihl = (frame[14] & 0x0F) * 4
    return frame[14 + ihl + 8:]


def reframe6(frame: bytes, body: bytes) -> bytes:
    """``frame``'s Ethernet/IPv6 header around a new L4 ``body`` (UDP length fixed too)."""
    head = bytearray(frame[:54])
    struct.pack_into("!H", head, 18, len(body))
    if head[20] == 17 and len(body) >= 8:
        body = body[:4] + struct.pack("!H", len(body)) + body[6:]
    return bytes(head) + body


def tlv4(data: bytes) -> list[tuple[int, bytes]]:
    """Lenient split of a DHCPv4 options area (for mutating, not for checking)."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, length = data[i], data[i + 1] if i + 1 < len(data) else 0
        out.append((code, data[i + 2:i + 2 + length]))
        i += 2 + length
    return out


def tlv6(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    i = 0
    while i + 4 <= len(data):
        code, length = struct.unpack("!HH", data[i:i + 4])
        out.append((code, data[i + 4:i + 4 + length]))
        i += 4 + length
    return out


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes, hot: int = 0) -> bytes:
    """1-8 byte-level edits of ``data``; positions favour ``data[hot:]`` (the options)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if not out:
            break
        low = hot if hot < len(out) and draw(st.booleans()) else 0
        pos = draw(st.integers(low, len(out) - 1))
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "copy")))
        if op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[pos] = draw(st.sampled_from((0, 1, 2, 3, 4, 0x7F, 0x80, 0xFE, 0xFF)))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[pos:pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[pos:]
        else:
            size = draw(st.integers(1, 16))
            src = draw(st.integers(0, len(out) - 1))
            out[pos:pos + size] = out[src:src + size]
    return bytes(out)


def option_values(code_range: tuple[int, int]) -> st.SearchStrategy[tuple[int, bytes]]:
    return st.tuples(st.integers(*code_range), st.binary(max_size=40))


@st.composite
def tlv_mutation(draw: st.DrawFn, options: list[tuple[int, bytes]],
                 code_range: tuple[int, int]) -> list[tuple[int, bytes]]:
    """Option-level edits: drop, duplicate, move, replace the value, insert a new option."""
    out = list(options)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("drop", "dup", "value", "insert", "swap")))
        if op == "insert" or not out:
            out.insert(draw(st.integers(0, len(out))), draw(option_values(code_range)))
            continue
        i = draw(st.integers(0, len(out) - 1))
        if op == "drop":
            del out[i]
        elif op == "dup":
            out.insert(draw(st.integers(0, len(out))), out[i])
        elif op == "value":
            code, value = out[i]
            out[i] = (code, draw(st.one_of(st.binary(max_size=40),
                                           st.builds(lambda n, v=value: v[:n],
                                                     st.integers(0, 40)))))
        else:
            j = draw(st.integers(0, len(out) - 1))
            out[i], out[j] = out[j], out[i]
    return out
