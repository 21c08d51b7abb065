"""Lint and install a chart with the real Helm library (helm-sdkpy), offline; run as a script in its own process.

    python tests/helm_harness.py REQUEST.json RESULT.json

REQUEST: ``{"namespace": ns, "lint": [chart_dir, ...], "installs": [{"release": r, "chart": dir, "values": {...}}]}``.
An install may carry ``"upgrade_values"``: the release is then upgraded with them (``helm upgrade``, hooks included)
against the same API server.
RESULT:  ``{"lint": [helm's lint result, ...], "installs": [{"release": r, "error": str | None, "result": helm's
release JSON (the upgrade's, when there is one), "objects": [every object Helm sent to the API, in order],
"calls": ["POST /apis/...", ...]}]}``.

A separate process because helm-sdkpy's Go runtime reads its environment once, when the shared library loads
(``HELM_DRIVER=memory`` keeps release records out of the fake API server), and cannot be unloaded afterwards. Each
install gets a fresh :class:`fake_kube_api.FakeKubeAPI`, so releases never see each other's objects.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from fake_kube_api import FakeKubeAPI


def main(request_path: str, result_path: str) -> int:
    if os.environ.get("HELM_DRIVER") != "memory":
        raise SystemExit("run with HELM_DRIVER=memory (see module docstring)")
    import helm_sdkpy

    request = json.loads(Path(request_path).read_text())
    namespace = request.get("namespace", "umeflow")
    result: dict = {"helm_sdkpy": helm_sdkpy.__version__, "lint": [], "installs": []}
    with tempfile.TemporaryDirectory() as tmp:
        # Lint is client-only; Configuration still wants a kubeconfig path, which it does not contact.
        offline = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=str(Path(tmp) / "none"))
        for chart in request.get("lint", []):
            result["lint"].append(asyncio.run(helm_sdkpy.Lint(offline).run(chart)))
        for spec in request.get("installs", []):
            result["installs"].append(_install(helm_sdkpy, spec, namespace, Path(tmp)))
    Path(result_path).write_text(json.dumps(result))
    return 0


def _install(helm_sdkpy, spec: dict, namespace: str, tmp: Path) -> dict:
    with FakeKubeAPI() as api:
        kubeconfig = api.write_kubeconfig(tmp / f"{spec['release']}.kubeconfig", namespace)
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=str(kubeconfig))
        out = {"release": spec["release"], "error": None, "result": None}
        try:
            # wait=False: Helm waits for hooks only (the fake server reports Jobs complete), not for Deployments.
            out["result"] = asyncio.run(helm_sdkpy.Install(config).run(
                spec["release"], spec["chart"], values=spec.get("values") or {}, wait=False, timeout=60))
            if "upgrade_values" in spec:
                out["result"] = asyncio.run(helm_sdkpy.Upgrade(config).run(
                    spec["release"], spec["chart"], values=spec["upgrade_values"], wait=False, timeout=60))
        except helm_sdkpy.HelmError as e:
            out["error"] = str(e)
        out["objects"] = api.created()
        out["calls"] = [f"{r.method} {r.path}" for r in api.requests]
    return out


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
