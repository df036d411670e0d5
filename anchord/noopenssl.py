"""Long-running anchord processes run as on a Python built without OpenSSL.

Owns ``block()``: from then on ``import ssl``, ``import _ssl`` and ``import _hashlib`` raise
ImportError in this process, which the standard library handles as a build without OpenSSL:
``http.client`` and ``urllib.request`` define no HTTPS classes, ``hashlib`` uses CPython's
built-in SHA and MD5. Both import ``ssl`` at module level, and ``hashlib`` prefers
``_hashlib``: without this, every worker that imports ``http.client`` (discovery, through
``anchord.dockerhttp``), prometheus_client (metrics) or ``hashlib`` maps libssl and libcrypto,
about 5 MB of text plus private pages in each process. anchord speaks plain HTTP only (Docker's
unix socket or ``tcp://``, its own metrics listener), so nothing is lost.

``anchord.entry`` calls it first thing for the programs that live as long as their container
(the network-anchor's entry process and its workers, the Docker proxy), except those that
serve metrics (the metrics worker, the service-anchor): prometheus_client's exposition module
imports ``ssl`` unconditionally. One-shot commands (status, release, healthcheck) are left
alone. tests/unit/test_layering.py checks that the blocked programs load neither library.
"""

from __future__ import annotations

import sys

BLOCKED = ("ssl", "_ssl", "_hashlib")


def block() -> bool:
    """Refuse the OpenSSL modules from now on; False (and nothing done) if one is loaded."""
    if any(sys.modules.get(name) is not None for name in BLOCKED):
        return False
    for name in BLOCKED:
        sys.modules[name] = None  # type: ignore[assignment]
    return True
