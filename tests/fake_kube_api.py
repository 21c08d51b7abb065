"""A small in-memory Kubernetes API server for driving the real Helm library in tests.

There is no kube-apiserver, kind or k3s on the machines that run the tests (reference/feasibility.md step 8) and
helm-sdkpy exposes no client-only ``helm template``. Helm's install action does run offline once *something*
answers the Kubernetes API, so this module answers the handful of calls Helm makes — discovery, GET-before-create,
create, delete, list and watch — and records every object Helm sends. What the tests check is therefore exactly what
``helm install`` would submit to a cluster, rendered by Helm's own engine.

It is deliberately not a Kubernetes: no admission, no defaulting, no controllers. Jobs are reported complete as soon
as they are created so that Helm's hook waiter (kstatus) sees post-install hooks finish.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SERVER_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "fake", "gitTreeState": "clean",
                  "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                  "platform": "linux/amd64"}

# (group, version) -> [(kind, plural, namespaced)]: the API surface a chart of this project may use.
API_RESOURCES: dict[tuple[str, str], list[tuple[str, str, bool]]] = {
    ("", "v1"): [("ConfigMap", "configmaps", True), ("Secret", "secrets", True), ("Service", "services", True),
                 ("ServiceAccount", "serviceaccounts", True), ("Pod", "pods", True),
                 ("PersistentVolumeClaim", "persistentvolumeclaims", True), ("Namespace", "namespaces", False)],
    ("apps", "v1"): [("Deployment", "deployments", True), ("StatefulSet", "statefulsets", True)],
    ("batch", "v1"): [("Job", "jobs", True), ("CronJob", "cronjobs", True)],
    ("rbac.authorization.k8s.io", "v1"): [("Role", "roles", True), ("RoleBinding", "rolebindings", True),
                                          ("ClusterRole", "clusterroles", False),
                                          ("ClusterRoleBinding", "clusterrolebindings", False)],
    ("networking.k8s.io", "v1"): [("NetworkPolicy", "networkpolicies", True), ("Ingress", "ingresses", True)],
    ("policy", "v1"): [("PodDisruptionBudget", "poddisruptionbudgets", True)],
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass
class Request:
    """One call Helm made: method, path and (for writes) the object body."""

    method: str
    path: str
    body: dict | None = None


@dataclass
class FakeKubeAPI:
    """Threaded HTTP server on 127.0.0.1; use as a context manager, then ``write_kubeconfig``."""

    requests: list[Request] = field(default_factory=list)
    objects: dict[tuple[str, str, str, str], dict] = field(default_factory=dict)  # (group, plural, ns, name)
    _watchers: list[tuple[tuple[str, str, str], queue.Queue]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rv: itertools.count = field(default_factory=lambda: itertools.count(1))
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "FakeKubeAPI":
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                api._handle(self, "GET")

            def do_POST(self):
                api._handle(self, "POST")

            def do_PUT(self):
                api._handle(self, "PUT")

            def do_PATCH(self):
                api._handle(self, "PATCH")

            def do_DELETE(self):
                api._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        path.write_text(json.dumps(config))
        return path

    # ------------------------------------------------------------------------------------------------ results

    def created(self) -> list[dict]:
        """Every object Helm created, in creation order (hooks included)."""
        return [r.body for r in self.requests if r.method == "POST" and r.body is not None]

    # ------------------------------------------------------------------------------------------------ serving

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw and raw.strip().startswith(b"{") else None
        with self._lock:
            self.requests.append(Request(method, url.path, body))
        parts = [p for p in url.path.split("/") if p]
        try:
            if url.path == "/version":
                return self._send(h, 200, SERVER_VERSION)
            if parts == ["api"]:
                return self._send(h, 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
            if parts == ["apis"]:
                return self._send(h, 200, self._group_list())
            if parts[:2] == ["openapi", "v3"]:
                return self._send(h, 200, self._openapi_v3(parts[2:]))
            group, version, rest = self._split_api_path(parts)
            if group is None:
                return self._status(h, 404, "NotFound", f"no route for {url.path}")
            if not rest:
                return self._send(h, 200, self._resource_list(group, version))
            ns, plural, name = self._split_resource_path(rest)
            if method == "GET" and name is None:
                if query.get("watch") in ("true", "1"):
                    return self._watch(h, group, version, plural, ns, query)
                return self._send(h, 200, self._list(group, version, plural, ns))
            if method == "GET":
                obj = self.objects.get((group, plural, ns, name))
                return self._send(h, 200, obj) if obj else self._not_found(h, plural, name)
            if method == "POST":
                return self._create(h, group, plural, ns, body)
            if method in ("PUT", "PATCH"):
                key = (group, plural, ns, name)
                if key not in self.objects:
                    return self._not_found(h, plural, name)
                if method == "PUT" and body:
                    self.objects[key] = self._stamp(body, ns)
                return self._send(h, 200, self.objects[key])
            if method == "DELETE":
                obj = self.objects.pop((group, plural, ns, name), None)
                if obj is None:
                    return self._not_found(h, plural, name)
                self._notify((group, plural, ns), "DELETED", obj)
                return self._send(h, 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                                           "details": {"name": name, "kind": plural}})
            return self._status(h, 405, "MethodNotAllowed", method)
        except (BrokenPipeError, ConnectionResetError):
            return None

    @staticmethod
    def _split_api_path(parts: list[str]):
        if len(parts) >= 2 and parts[0] == "api":
            return "", parts[1], parts[2:]
        if len(parts) >= 3 and parts[0] == "apis":
            return parts[1], parts[2], parts[3:]
        return None, None, None

    @staticmethod
    def _split_resource_path(rest: list[str]):
        if rest[0] == "namespaces" and len(rest) >= 3:
            return rest[1], rest[2], (rest[3] if len(rest) > 3 else None)
        return "", rest[0], (rest[1] if len(rest) > 1 else None)

    def _group_list(self) -> dict:
        groups = []
        for (group, version) in API_RESOURCES:
            if group:
                gv = {"groupVersion": f"{group}/{version}", "version": version}
                groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _openapi_v3(self, gv_path: list[str]) -> dict:
        """Just enough OpenAPI v3 for kubectl's field-validation probe: every kind advertises the server-side
        ``fieldValidation`` parameter, so Helm leaves schema validation to the server (here: to the tests, which
        validate every object with kubernetes-validate)."""
        if not gv_path:
            return {"paths": {(f"apis/{g}/{v}" if g else f"api/{v}"): {
                "serverRelativeURL": f"/openapi/v3/{'apis/' + g if g else 'api'}/{v}?hash=fake"}
                for g, v in API_RESOURCES}}
        group, version = ("", gv_path[1]) if gv_path[0] == "api" else (gv_path[1], gv_path[2])
        paths = {}
        for kind, plural, namespaced in API_RESOURCES.get((group, version), []):
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            scope = f"{prefix}/namespaces/{{namespace}}" if namespaced else prefix
            path = f"{scope}/{plural}/{{name}}"
            paths[path] = {"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}}}
        return {"openapi": "3.0.0", "info": {"title": "fake", "version": version}, "paths": paths}

    def _resource_list(self, group: str, version: str) -> dict:
        resources = [{"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                      "verbs": VERBS} for kind, plural, namespaced in API_RESOURCES.get((group, version), [])]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    def _kind(self, group: str, version: str, plural: str) -> str:
        for kind, p, _ in API_RESOURCES.get((group, version), []):
            if p == plural:
                return kind
        return plural

    def _stamp(self, obj: dict, ns: str) -> dict:
        obj = json.loads(json.dumps(obj))
        meta = obj.setdefault("metadata", {})
        if ns:
            meta.setdefault("namespace", ns)
        meta.setdefault("uid", f"uid-{next(self._rv)}")
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta.setdefault("generation", 1)
        if obj.get("kind") == "Job":  # no controller here: report the Job finished so hook waits return
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            obj["status"] = {"startTime": now, "completionTime": now, "succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}
        return obj

    def _create(self, h, group: str, plural: str, ns: str, body: dict | None) -> None:
        if not body or "metadata" not in body:
            return self._status(h, 400, "BadRequest", "object with metadata required")
        name = body["metadata"].get("name")
        key = (group, plural, ns, name)
        if key in self.objects:
            return self._status(h, 409, "AlreadyExists", f'{plural} "{name}" already exists')
        obj = self._stamp(body, ns)
        self.objects[key] = obj
        self._notify((group, plural, ns), "ADDED", obj)
        return self._send(h, 201, obj)

    def _list(self, group: str, version: str, plural: str, ns: str) -> dict:
        items = [o for (g, p, n, _), o in self.objects.items() if g == group and p == plural and (not ns or n == ns)]
        return {"kind": self._kind(group, version, plural) + "List", "apiVersion": f"{group}/{version}".lstrip("/"),
                "metadata": {"resourceVersion": str(next(self._rv))}, "items": items}

    def _notify(self, scope: tuple[str, str, str], event: str, obj: dict) -> None:
        for watched, q in list(self._watchers):
            if watched[:2] == scope[:2] and (not watched[2] or watched[2] == scope[2]):
                q.put({"type": event, "object": obj})

    def _watch(self, h, group, version, plural, ns, query) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def emit(event: dict) -> None:
            data = (json.dumps(event) + "\n").encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        q: queue.Queue = queue.Queue()
        entry = ((group, plural, ns), q)
        self._watchers.append(entry)
        try:
            if query.get("sendInitialEvents") == "true":  # the streaming-list protocol of newer client-go
                listing = self._list(group, version, plural, ns)
                for obj in listing["items"]:
                    emit({"type": "ADDED", "object": obj})
                emit({"type": "BOOKMARK", "object": {
                    "kind": self._kind(group, version, plural), "apiVersion": listing["apiVersion"],
                    "metadata": {"resourceVersion": listing["metadata"]["resourceVersion"],
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})
            deadline = time.monotonic() + min(float(query.get("timeoutSeconds", 30)), 30.0)
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    emit(q.get(timeout=0.2))
                except queue.Empty:
                    continue
            h.wfile.write(b"0\r\n\r\n")
        finally:
            self._watchers.remove(entry)

    def _send(self, h, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, h, code: int, reason: str, message: str) -> None:
        self._send(h, code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                             "message": message, "reason": reason, "code": code})

    def _not_found(self, h, plural: str, name: str) -> None:
        self._send(h, 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f'{plural} "{name}" not found', "reason": "NotFound",
                            "details": {"name": name, "kind": plural}, "code": 404})
