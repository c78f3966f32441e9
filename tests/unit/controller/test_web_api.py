"""The web console's JSON API over real HTTP, against an in-process replica on a real etcd:
shapes, errors as JSON with the gRPC code, streams (SSE watch, logs), the security headers,
and (on a TLS replica) the same tokens and role policy as the gRPC API, audit included."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inproc import Api, FakeAgent, compile_hello, create, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.embedded import open_channel
from controller.security.files import ClusterPki


class Http:
    """A tiny client for the web port (http.client: nothing hidden between test and server)."""

    def __init__(self, api: Api, token: str = "") -> None:
        web = api.replica.web
        assert web is not None
        self.host, self.port = "127.0.0.1", web.port
        self.token = token

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            h.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None,
             **kw: Any) -> tuple[int, Any]:
        raw = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        status, headers, data = self.request(method, path, raw, **kw)
        assert headers["content-type"].startswith("application/json"), headers
        return status, json.loads(data)

    def open_stream(self, path: str) -> tuple[http.client.HTTPConnection,
                                               http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        conn.request("GET", path, headers=h)
        return conn, conn.getresponse()


def sse_events(resp: http.client.HTTPResponse, want: int) -> list[dict[str, Any]]:
    """Read `want` data events (keep-alive comments skipped)."""
    out: list[dict[str, Any]] = []
    while len(out) < want:
        line = resp.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: "):
            out.append(json.loads(line[6:]))
    return out


@pytest.fixture(scope="module")
def api(etcd_endpoint: str) -> Iterator[Api]:
    yield from replica(etcd_endpoint, web_listen="127.0.0.1:0")


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


@pytest.fixture(scope="module")
def agent(api: Api) -> Iterator[FakeAgent]:
    a = FakeAgent(api, "web-node-1", vcpus=4, memory=8 << 30)
    yield a
    a.close()


def test_nodes_mirror_the_grpc_api_with_capacity(api: Api, agent: FakeAgent) -> None:
    client = Http(api)
    status, body = client.json("GET", "/api/v1/nodes")
    assert status == 200
    node = next(n for n in body["nodes"] if n["name"] == "web-node-1")
    assert node["status"]["state"] == "NODE_STATE_READY"
    assert node["status"]["allocatable_vcpus"] == 16          # 4 x the default ratio 4.0
    assert int(node["status"]["allocatable_memory_bytes"]) == 8 << 30
    assert body["next_page_token"] == ""
    status, one = client.json("GET", "/api/v1/nodes/web-node-1")
    assert status == 200 and one["name"] == "web-node-1"
    status, err = client.json("GET", "/api/v1/nodes/no-such-node")
    assert (status, err["code"]) == (404, "NOT_FOUND") and "no-such-node" in err["message"]


def test_partitions_list_get_act_and_watch(api: Api, agent: FakeAgent, elf: bytes) -> None:
    client = Http(api)
    push(api.stub, "hello", elf)
    create(api, "web-p1", vcpus=1, memory_bytes=64 << 20)
    status, body = client.json("GET", "/api/v1/partitions")
    assert status == 200
    names = [p["name"] for p in body["partitions"]]
    assert "web-p1" in names
    status, p = client.json("GET", "/api/v1/partitions/web-p1")
    assert status == 200 and p["spec"]["vcpus"] == 1 and p["status"]["phase"].startswith(
        "PARTITION_PHASE_")
    # Filters are the request's fields, in the query string.
    status, body = client.json("GET", "/api/v1/partitions?name_prefix=web-&page_size=1")
    assert status == 200 and len(body["partitions"]) == 1

    conn, resp = client.open_stream("/api/v1/watch/partitions?name=web-p1")
    try:
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/event-stream"
        first = sse_events(resp, 1)[0]
        assert first["type"] == "TYPE_PUT" and first["partition"]["name"] == "web-p1"
        # The agent reports it running: the watch carries the change.
        bound = wait_for(lambda: agent.assignments("web-p1"), what="an assignment")[-1]
        agent.report(apb.PartitionReport(name="web-p1", epoch=bound.epoch,
                                         phase=pb.PARTITION_PHASE_RUNNING))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ev = sse_events(resp, 1)[0]
            if ev["partition"]["status"]["phase"] == "PARTITION_PHASE_RUNNING":
                break
        else:
            pytest.fail("the watch never showed Running")
    finally:
        conn.close()

    status, stopped = client.json("POST", "/api/v1/partitions/web-p1/stop", {"force": True})
    assert status == 200 and stopped["name"] == "web-p1"
    assert stopped["status"]["phase"] == "PARTITION_PHASE_STOPPING"
    status, ev = client.json("GET", "/api/v1/partitions/web-p1/events?limit=5")
    assert status == 200 and all(e["object"] == "web-p1" for e in ev["events"])
    assert ev["events"], "creating and placing it recorded events"
    status, why = client.json("GET", "/api/v1/partitions/web-p1/explain")
    assert status == 200 and why["partition"] == "web-p1"


def test_bad_requests_are_json_errors_with_the_grpc_code(api: Api) -> None:
    client = Http(api)
    cases: list[tuple[str, str, Any, int, str]] = [
        ("GET", "/api/v1/partitions/ghost", None, 404, "NOT_FOUND"),
        ("POST", "/api/v1/partitions/ghost/start", {}, 404, "NOT_FOUND"),
        ("POST", "/api/v1/partitions/ghost/frobnicate", {}, 404, "NOT_FOUND"),
        ("POST", "/api/v1/partitions/ghost/stop", "{not json", 400, "INVALID_ARGUMENT"),
        ("POST", "/api/v1/partitions/ghost/stop", {"grace_seconds": "soon"}, 400,
         "INVALID_ARGUMENT"),
        ("POST", "/api/v1/partitions/ghost/stop", {"name": "other"}, 400, "INVALID_ARGUMENT"),
        ("POST", "/api/v1/partitions/ghost/checkpoint", {"checkpoint": "Bad Name!"}, 400,
         "INVALID_ARGUMENT"),
        ("GET", "/api/v1/partitions?bogus=1", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/api/v1/partitions?phase=NO_SUCH_PHASE", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/api/v1/partitions?page_token=garbage", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/api/v1/nothing-here", None, 404, "NOT_FOUND"),
        ("DELETE", "/api/v1/nodes", None, 501, "UNIMPLEMENTED"),
        ("POST", "/api/v1/partitions/ghost/stop", "x" * (70 << 10), 400, "INVALID_ARGUMENT"),
    ]
    for method, path, body, want_status, want_code in cases:
        status, err = client.json(method, path, body)
        assert (status, err["code"]) == (want_status, want_code), (method, path, err)
        assert err["message"]


def test_logs_of_a_partition_without_a_node_end_at_once(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    create(api, "web-nolog", vcpus=1, memory_bytes=64 << 20, node_selector={"zone": "none"})
    status, headers, data = Http(api).request("GET", "/api/v1/partitions/web-nolog/logs")
    assert status == 200 and data == b""
    assert headers["content-type"] == "application/octet-stream"
    status, _, data = Http(api).request("GET", "/api/v1/partitions/ghost/logs")
    assert status == 404 and json.loads(data)["code"] == "NOT_FOUND"


def test_pages_and_security_headers(api: Api) -> None:
    client = Http(api)
    status, headers, page = client.request("GET", "/")
    assert status == 200 and b"/static/app.js" in page
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    for asset in ("/static/app.js", "/static/style.css"):
        status, headers, _ = client.request("GET", asset)
        assert status == 200 and headers["x-content-type-options"] == "nosniff"
    status, headers, _ = client.request("GET", "/api/v1/nodes")
    assert headers["cache-control"] == "no-store" and "content-security-policy" in headers
    status, _, _ = client.request("GET", "/static/../server.py")
    assert status in (403, 404)


def test_a_cross_origin_post_is_refused(api: Api, agent: FakeAgent) -> None:
    """On an --insecure cluster no token stops another web site's page; the Origin does."""
    client = Http(api)
    status, err = client.json("POST", "/api/v1/nodes/web-node-1/cordon", {},
                              headers={"Origin": "http://evil.example"})
    assert (status, err["code"]) == (403, "PERMISSION_DENIED")
    node = api.stub.GetNode(cpb.GetNodeRequest(name="web-node-1"))
    assert not node.spec.cordoned
    origin = f"http://127.0.0.1:{client.port}"
    status, body = client.json("POST", "/api/v1/nodes/web-node-1/cordon", {},
                               headers={"Origin": origin})
    assert status == 200 and body["spec"]["cordoned"] is True
    status, body = client.json("POST", "/api/v1/nodes/web-node-1/uncordon")
    assert status == 200 and body["spec"]["cordoned"] is False


# ---- a TLS replica: tokens and roles -----------------------------------------------------


@pytest.fixture(scope="module")
def secure(etcd_endpoint: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Api, ClusterPki, str]]:
    pki = ClusterPki(Path(tmp_path_factory.mktemp("pki")))
    ctl = pki.controller("t", [])
    _, admin = pki.admin()
    pki.write_bootstrap(ctl, [(admin, "admin")])
    for api in replica(etcd_endpoint, tls=ctl.tls(), ca=ctl.ca_keypair(),
                       bootstrap_tokens=ctl.bootstrap_tokens(), web_listen="127.0.0.1:0"):
        yield api, pki, admin


def _token(secure: tuple[Api, ClusterPki, str], role: pb.Role.ValueType) -> str:
    api, pki, admin = secure
    from viridian.v1 import controller_pb2_grpc

    with open_channel(api.address, pki.ca().cert_pem, admin) as channel:
        stub = controller_pb2_grpc.ControllerStub(channel)
        secret: str = stub.CreateToken(cpb.CreateTokenRequest(role=role)).secret
    # Tokens are checked against the replica's cache, which follows etcd a moment behind.
    wait_for(lambda: Http(api, secret).request("GET", "/api/v1/nodes")[0] == 200,
             what="the new token known to the replica")
    return secret


def test_the_same_tokens_and_roles_as_grpc(secure: tuple[Api, ClusterPki, str]) -> None:
    api, _, admin = secure
    for token in ("", "abcdef.0123456789abcdef0123456789abcdef", "not-a-token"):
        status, err = Http(api, token).json("GET", "/api/v1/nodes")
        assert (status, err["code"]) == (401, "UNAUTHENTICATED"), token
    # A stream is refused before it starts, as a JSON error.
    status, headers, data = Http(api).request("GET", "/api/v1/watch/partitions")
    assert status == 401 and json.loads(data)["code"] == "UNAUTHENTICATED"
    status, headers, data = Http(api).request("GET", "/api/v1/partitions/x/logs")
    assert status == 401
    # The page itself needs no token (it asks for one).
    assert Http(api).request("GET", "/")[0] == 200

    viewer = Http(api, _token(secure, pb.ROLE_VIEWER))
    status, body = viewer.json("GET", "/api/v1/nodes")
    assert status == 200 and "nodes" in body
    status, err = viewer.json("POST", "/api/v1/nodes/ghost-web/cordon")
    assert (status, err["code"]) == (403, "PERMISSION_DENIED")
    assert "may not call CordonNode" in err["message"]
    status, err = viewer.json("POST", "/api/v1/partitions/ghost-web/stop")
    assert (status, err["code"]) == (403, "PERMISSION_DENIED")

    operator = Http(api, _token(secure, pb.ROLE_OPERATOR))
    status, err = operator.json("POST", "/api/v1/nodes/ghost-web/cordon")
    assert (status, err["code"]) == (404, "NOT_FOUND")
    status, err = Http(api, admin).json("POST", "/api/v1/partitions/ghost-web/pause")
    assert (status, err["code"]) == (404, "NOT_FOUND")


def test_web_calls_are_audited_like_grpc_calls(secure: tuple[Api, ClusterPki, str]) -> None:
    api, pki, admin = secure
    viewer_token = _token(secure, pb.ROLE_VIEWER)
    Http(api, viewer_token).json("POST", "/api/v1/nodes/ghost-audit/cordon")
    Http(api, admin).json("POST", "/api/v1/nodes/ghost-audit2/cordon")
    admin_http = Http(api, admin)

    def audits() -> list[dict[str, Any]]:
        _, body = admin_http.json("GET", "/api/v1/events")
        return [e for e in body["events"]
                if e["kind"] == "Audit" and e["object"].startswith("ghost-audit")]

    found = wait_for(lambda: len(audits()) >= 2 and audits(), what="audit events")
    by_object = {e["object"]: e for e in found}
    viewer_id = viewer_token.split(".")[0]
    assert by_object["ghost-audit"]["source"] == f"token:{viewer_id}(viewer)"
    assert "PERMISSION_DENIED" in by_object["ghost-audit"]["message"]
    assert "web:" in by_object["ghost-audit"]["message"]
    assert "NOT_FOUND" in by_object["ghost-audit2"]["message"]


def test_drain_starts_and_reports_progress(api: Api) -> None:
    empty = FakeAgent(api, "web-node-drain", vcpus=2, memory=1 << 30)
    try:
        wait_for(lambda: Http(api).json("GET", "/api/v1/nodes/web-node-drain")[1]
                 ["status"]["state"] == "NODE_STATE_READY", what="the node ready")
        status, progress = Http(api).json("POST", "/api/v1/nodes/web-node-drain/drain", {})
        assert status == 200 and progress["remaining"] == 0
        assert progress["drain"]["node"] == "web-node-drain"
        _, node = Http(api).json("GET", "/api/v1/nodes/web-node-drain")
        assert node["spec"]["cordoned"] is True
        conn, resp = Http(api).open_stream("/api/v1/nodes/web-node-drain/drain?follow=true")
        conn.close()  # a GET: drains are POSTs
        assert resp.status == 501
        # Following: progress as SSE until the drain ends, then the stream ends.
        client = Http(api)
        conn = http.client.HTTPConnection(client.host, client.port, timeout=20)
        try:
            conn.request("POST", "/api/v1/nodes/web-node-drain/drain?follow=true", body=b"")
            resp = conn.getresponse()
            assert resp.status == 200
            seen = []
            while line := resp.readline():
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))
            assert seen and seen[-1]["done"] is True, seen
        finally:
            conn.close()
    finally:
        empty.close()


def test_the_pages_never_turn_api_text_into_html() -> None:
    """Names, reasons and console bytes reach the page only as text nodes; the CSP forbids
    inline script, so the page has none."""
    from controller.web.server import static_dir

    js = (static_dir() / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setTimeout(\"", "javascript:"):
        assert sink not in js, sink
    html = (static_dir() / "index.html").read_text()
    assert "<script>" not in html
    assert not re.search(r"<[^>]+\son[a-z]+=", html), "an inline event handler"


def test_up_serves_the_console_at_the_api_port_plus_two_or_a_free_port() -> None:
    import socket

    from controller.embedded import default_web_listen
    from controller.etcd_server import free_port

    api_port = free_port()
    wanted = f"127.0.0.1:{api_port + 2}"
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", api_port + 2))
        except OSError:
            pytest.skip("the port after next is in use by someone else")
        other = default_web_listen(f"0.0.0.0:{api_port}")
        assert other != wanted and other.startswith("127.0.0.1:")
    assert default_web_listen(f"0.0.0.0:{api_port}") == wanted
