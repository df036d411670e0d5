"""The Docker API calls discovery makes, through ``anchord.dockerhttp``.

Owns connecting (with a negotiated API version), listing the project's containers and reading
one container or network, with a timeout on each and every failure turned into
``DockerUnavailable``. What the documents mean is ``anchord.docker_inspect``'s business; the
event stream is ``anchord.docker_events``'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from anchord.docker_inspect import PROJECT_LABEL, Inspect, NetworkFacts, network_facts
from anchord.docker_reach import DockerUnavailable, Reachability
from anchord.dockerhttp import ApiError, DockerHttp, MalformedAnswer, NotFound, path

# Every API call but the event stream gives up after this many seconds: a hung proxy must not
# freeze the worker. (The API version is negotiated: 1.41 on Docker 20.10.)
API_TIMEOUT = 10.0
API_MAX = "1.44"  # the newest API version whose documents discovery has been read against


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def connect(docker_host: str, reach: Reachability,
            timeout: float = API_TIMEOUT) -> DockerHttp:
    """A client for ``DOCKER_HOST`` speaking the daemon's API version (at most API_MAX).

    Raises DockerUnavailable when the API does not answer.
    """
    reach.check(docker_host, timeout)
    client = DockerHttp(docker_host, timeout=timeout)
    try:
        # Unversioned: every daemon answers it, and says which version it speaks.
        server = str(client.get("/version", versioned=False)["ApiVersion"])
        version = min((server, API_MAX), key=_version_key)
    except (ApiError, KeyError, TypeError, ValueError) as exc:
        client.close()
        raise DockerUnavailable(f"{docker_host}: {exc}") from exc
    client.version = version
    return client


def _document(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise MalformedAnswer(f"{what}: not a JSON object")
    return doc


class DockerApi:
    """The calls discovery makes, with every failure turned into DockerUnavailable."""

    def __init__(self, docker_host: str, project: str) -> None:
        self.docker_host = docker_host
        self.project = project
        self._client: DockerHttp | None = None
        self._reach = Reachability()

    def _api(self) -> DockerHttp:
        if self._client is None:
            self._client = connect(self.docker_host, self._reach)
        else:
            # A proxy's name gone: fail within PROBE_TIMEOUT, not after API_TIMEOUT.
            self._reach.check(self.docker_host, API_TIMEOUT, connect=False)
        return self._client

    def _fail(self, exc: BaseException) -> DockerUnavailable:
        # Drop the client: a proxy or daemon that comes back may speak another API version.
        if self._client is not None:
            self._client.close()
        self._client = None
        return DockerUnavailable(f"{self.docker_host}: {exc}")

    @contextmanager
    def _call(self) -> Iterator[DockerHttp]:
        """The client, for one call; any failure of the call becomes DockerUnavailable (a
        404 the caller expects is caught inside the ``with``, before it gets here)."""
        try:
            yield self._api()
        except ApiError as exc:
            raise self._fail(exc) from exc

    def list_project(self) -> dict[str, Inspect]:
        """Inspect of every container (any state) of the project, by id."""
        with self._call() as api:
            project_filter = {"label": [f"{PROJECT_LABEL}={self.project}"]}
            summaries = api.get("/containers/json", {"all": True, "filters": project_filter})
            if not isinstance(summaries, list):
                raise MalformedAnswer("the container list is not a JSON array")
            result: dict[str, Inspect] = {}
            for s in summaries:
                cid = s.get("Id") if isinstance(s, dict) else None
                if not isinstance(cid, str) or not cid:
                    raise MalformedAnswer(f"a container without an id in the list: {s!r:.200}")
                try:
                    result[cid] = _document(api.get(path("/containers/{}/json", cid)), cid)
                except NotFound:
                    continue  # removed between the list and the inspect
            return result

    def inspect(self, container_id: str) -> Inspect | None:
        """One container's inspect, or None if it no longer exists."""
        with self._call() as api:
            try:
                return _document(api.get(path("/containers/{}/json", container_id)),
                                 container_id)
            except NotFound:
                return None

    def network_facts(self, network_id: str) -> NetworkFacts | None:
        with self._call() as api:
            try:
                return network_facts(_document(api.get(path("/networks/{}", network_id)),
                                               network_id))
            except NotFound:
                return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
