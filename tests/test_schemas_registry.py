"""RegistryCodec against a small fake schema registry on 127.0.0.1.

No registry server can be installed here, so this module serves the REST subset
that confluent-kafka's SchemaRegistryClient uses (POST
/subjects/{subject}/versions, GET /schemas/ids/{id}). The HTTP exchange and
the client are real; the registry's own compatibility checks are not.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import fastavro
import httpx
import pytest

from taskstream.schemas.catalog import NAMESPACE, catalog
from taskstream.schemas.errors import DecodeError, RegistryError
from taskstream.schemas.events import Backoff, Envelope, TaskSubmitted
from taskstream.schemas.registry import RegistryCodec
from taskstream.schemas.serde import encode_event
from tests.test_schemas_serde import BODIES, envelope, full_state


class FakeRegistry:
    """Schemas by ID and subjects by name, behind a lock (requests come on threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.schemas: list[str] = []
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []

    def register(self, subject: str, schema: str) -> int:
        with self.lock:
            if schema not in self.schemas:
                self.schemas.append(schema)
            schema_id = self.schemas.index(schema) + 1
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id


def _handler(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            path = urlparse(self.path).path.strip("/").split("/")
            registry.requests.append(("POST", self.path))
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if len(path) == 3 and path[0] == "subjects" and path[2] == "versions":
                self._reply(200, {"id": registry.register(unquote(path[1]), body["schema"])})
            else:
                self._reply(404, {"error_code": 404, "message": "not served by the fake"})

        def do_GET(self) -> None:
            path = urlparse(self.path).path.strip("/").split("/")
            registry.requests.append(("GET", self.path))
            if len(path) == 3 and path[:2] == ["schemas", "ids"]:
                schema_id = int(path[2])
                if 1 <= schema_id <= len(registry.schemas):
                    self._reply(200, {"schema": registry.schemas[schema_id - 1]})
                    return
                self._reply(404, {"error_code": 40403, "message": "Schema not found"})
            else:
                self._reply(404, {"error_code": 404, "message": "not served by the fake"})

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[str, FakeRegistry]]:
    state = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("body", BODIES[:4] + BODIES[-4:], ids=lambda b: type(b).__name__)
def test_events_round_trip_in_the_confluent_format(
    registry: tuple[str, FakeRegistry], body: Any
) -> None:
    url, state = registry
    writer = RegistryCodec(url, timeout_s=5)
    env = envelope(body)
    data = writer.encode_event(env)
    assert data[:1] == b"\x00" and int.from_bytes(data[1:5], "big") == 1
    assert data[5:] == encode_event(env)[10:], "same Avro body as the default format"
    assert writer.decode_event(data) == env
    reader = RegistryCodec(url, timeout_s=5)  # a fresh consumer fetches the schema by ID
    assert reader.decode_event(data) == env
    assert reader.decode_event(data) == env
    assert state.subjects == {f"{NAMESPACE}.Envelope": [1]}
    assert [r for r in state.requests if r[0] == "GET"] == [("GET", "/schemas/ids/1")]


def test_registration_happens_once_and_states_have_their_own_subject(
    registry: tuple[str, FakeRegistry],
) -> None:
    url, state = registry
    codec = RegistryCodec(url, timeout_s=5)
    for body in BODIES:
        codec.encode_event(envelope(body))
    data = codec.encode_state(full_state())
    assert int.from_bytes(data[1:5], "big") == 2
    assert RegistryCodec(url, timeout_s=5).decode_state(data) == full_state()
    assert sum(1 for method, _ in state.requests if method == "POST") == 2
    with pytest.raises(DecodeError, match=r"is a io\.taskstream\.TaskState"):
        codec.decode_event(data)
    assert json.loads(state.schemas[0]) == catalog().envelope.schema  # with defaults and docs


def test_data_of_an_older_schema_is_resolved(registry: tuple[str, FakeRegistry]) -> None:
    url, _ = registry
    old = json.loads(catalog().envelope.json)
    submitted = old["fields"][-1]["type"][0]
    submitted["fields"] = [f for f in submitted["fields"] if f["name"] != "depends_on"]
    response = httpx.post(
        f"{url}/subjects/{NAMESPACE}.Envelope/versions", json={"schema": json.dumps(old)}
    )
    old_id = response.json()["id"]
    record = {
        "event_id": "e", "task_id": "t", "occurred_at_ms": 1, "source": "s", "attempt": 0,
        "body": (f"{NAMESPACE}.TaskSubmitted", {
            "name": "n", "queue": "q", "priority": 0, "payload": b"", "content_type": "c",
            "eta_ms": None, "max_attempts": 1,
            "backoff": {"initial_ms": 1000, "multiplier": 2.0, "max_ms": 300000, "jitter": 0.1},
            "timeout_ms": None, "lease_ms": 5, "idempotency_key": None, "headers": {}, "tags": [],
        }),
    }  # fmt: skip
    buffer = io.BytesIO(b"\x00" + old_id.to_bytes(4, "big"))
    buffer.seek(5)
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(old), record)
    body = TaskSubmitted("n", "q", 0, b"", "c", None, 1, Backoff(), None, 5)
    decoded = RegistryCodec(url, timeout_s=5).decode_event(buffer.getvalue())
    assert decoded == Envelope("e", "t", 1, "s", 0, body)


def test_bad_bytes_and_unknown_ids_are_decode_errors(registry: tuple[str, FakeRegistry]) -> None:
    url, _ = registry
    codec = RegistryCodec(url, timeout_s=5)
    data = codec.encode_event(envelope(BODIES[0]))
    with pytest.raises(DecodeError, match="ID 99 is unknown"):
        codec.decode_event(b"\x00" + (99).to_bytes(4, "big") + data[5:])
    for bad in (b"", b"\xc3\x01" + data[1:], data[:3]):
        with pytest.raises(DecodeError, match="Confluent wire format"):
            codec.decode_event(bad)
    for cut in range(5, len(data)):
        with pytest.raises(DecodeError):
            codec.decode_event(data[:cut])


def test_an_unreachable_registry_is_a_retriable_registry_error() -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    codec = RegistryCodec(f"http://127.0.0.1:{port}", timeout_s=1)
    with pytest.raises(RegistryError, match="cannot register") as caught:
        codec.encode_event(envelope(BODIES[0]))
    assert caught.value.retriable
    with pytest.raises(RegistryError, match="cannot fetch schema 1"):
        codec.decode_event(b"\x00\x00\x00\x00\x01\x00")
