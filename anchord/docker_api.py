"""The Docker API calls discovery makes, through docker-py's low-level ``APIClient``.

Owns connecting (with a negotiated API version), listing the project's containers and reading
one container or network, with a timeout on each and every failure turned into
``DockerUnavailable``. What the documents mean is ``anchord.docker_inspect``'s business; the
event stream is ``anchord.docker_events``'.
"""

from __future__ import annotations

import docker
import docker.errors
import requests

from anchord.docker_inspect import PROJECT_LABEL, Inspect, NetworkFacts, network_facts
from anchord.docker_reach import DockerUnavailable, Reachability

# Every API call but the event stream gives up after this many seconds: a hung proxy must not
# freeze the worker. (The API version is negotiated: 1.41 on Docker 20.10.)
API_TIMEOUT = 10.0
API_MIN = "1.24"  # docker-py's floor, only used to ask the daemon which version it speaks
API_MAX = "1.44"  # the newest version this docker-py knows

# Everything docker-py and requests raise when the API is gone or broken.
API_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    OSError,
)
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*API_ERRORS, KeyError)


def connect(docker_host: str, reach: Reachability,
            timeout: float = API_TIMEOUT) -> docker.APIClient:
    """An API client for ``DOCKER_HOST`` with a negotiated API version.

    Raises DockerUnavailable when the API does not answer.
    """
    # Negotiated by hand rather than with docker-py's version="auto": that one leaks the
    # probe client's socket when the daemon does not answer, and we retry a lot then.
    reach.check(docker_host, timeout)
    try:
        with docker.APIClient(base_url=docker_host, version=API_MIN, timeout=timeout) as probe:
            server = str(probe.version(api_version=False)["ApiVersion"])
    except _PROBE_ERRORS as exc:
        raise DockerUnavailable(f"{docker_host}: {exc}") from exc
    version = min((server, API_MAX), key=lambda v: tuple(int(x) for x in v.split(".")))
    return docker.APIClient(base_url=docker_host, version=version, timeout=timeout)


class DockerApi:
    """The calls discovery makes, with every failure turned into DockerUnavailable."""

    def __init__(self, docker_host: str, project: str) -> None:
        self.docker_host = docker_host
        self.project = project
        self._client: docker.APIClient | None = None
        self._reach = Reachability()

    def _api(self) -> docker.APIClient:
        if self._client is None:
            self._client = connect(self.docker_host, self._reach)
        else:
            # A unix socket gone away: fail here instead of in docker-py (which leaks then);
            # a proxy's name gone: fail within PROBE_TIMEOUT, not docker-py's 10 s.
            self._reach.check(self.docker_host, API_TIMEOUT, connect=False)
        return self._client

    def _fail(self, exc: BaseException) -> DockerUnavailable:
        # Drop the client: a proxy or daemon that comes back may speak another API version.
        if self._client is not None:
            self._client.close()
        self._client = None
        return DockerUnavailable(f"{self.docker_host}: {exc}")

    def list_project(self) -> dict[str, Inspect]:
        """Inspect of every container (any state) of the project, by id."""
        try:
            api = self._api()
            project_filter = {"label": f"{PROJECT_LABEL}={self.project}"}
            summaries = api.containers(all=True, filters=project_filter)
            result: dict[str, Inspect] = {}
            for s in summaries:
                try:
                    result[s["Id"]] = api.inspect_container(s["Id"])
                except docker.errors.NotFound:
                    continue  # removed between the list and the inspect
            return result
        except DockerUnavailable:
            raise
        except API_ERRORS as exc:
            raise self._fail(exc) from exc

    def inspect(self, container_id: str) -> Inspect | None:
        """One container's inspect, or None if it no longer exists."""
        try:
            return dict(self._api().inspect_container(container_id))
        except docker.errors.NotFound:
            return None
        except DockerUnavailable:
            raise
        except API_ERRORS as exc:
            raise self._fail(exc) from exc

    def network_facts(self, network_id: str) -> NetworkFacts | None:
        try:
            return network_facts(self._api().inspect_network(network_id))
        except docker.errors.NotFound:
            return None
        except DockerUnavailable:
            raise
        except API_ERRORS as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
