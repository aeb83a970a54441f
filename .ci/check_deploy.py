#!/usr/bin/env python3
"""Checks the deploy files (deploy/) beyond their schemas: that they have the shape the README
promises, and that every GEMHOOK_* variable they set is a setting gemhook knows.

Usage: check_deploy.py GEMHOOK_BINARY

The schemas are checked by .ci/run itself (kubernetes-validate, the compose-spec schema); this
catches what a schema cannot: a misspelt GEMHOOK_ variable is valid YAML and a valid manifest,
but gemhook would ignore it (with a warning nobody reads) and run with the default.
"""

import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEPLOY = os.path.join(ROOT, "deploy")
# A valid secret for `config check` in place of the files' placeholders (which are not base64).
CHECK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# And an admin token in place of compose's `${GEMHOOK_ADMIN_TOKEN:?...}` and the Secret's
# placeholder: required wherever /metrics or the console leave loopback.
CHECK_ADMIN_TOKEN = "check-deploy-admin-token-0123456789"

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}", file=sys.stderr)


def compose_checks():
    """The services, images, roles and settings compose.yaml must have; returns its variables."""
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    services = compose.get("services", {})
    for name in ["postgres", "nats", "migrate", "receiver", "worker"]:
        if name not in services:
            fail(f"compose.yaml: no service `{name}`")
    for name in ["migrate", "receiver", "worker"]:
        service = services.get(name, {})
        if service.get("image") != "gemhook:latest" or "build" not in service:
            fail(f"compose.yaml: `{name}` is not built from the repository's Dockerfile")
    expected_commands = {
        "migrate": ["migrate"],
        "receiver": ["serve", "--role", "receiver"],
        "worker": ["serve", "--role", "worker"],
    }
    for name, command in expected_commands.items():
        if services.get(name, {}).get("command") != command:
            fail(f"compose.yaml: `{name}` does not run `gemhook {' '.join(command)}`")
    if services.get("receiver", {}).get("deploy", {}).get("replicas", 1) < 2:
        fail("compose.yaml: fewer than two receivers")
    variables = {}
    for name in ["receiver", "worker", "migrate"]:
        env = services.get(name, {}).get("environment", {})
        if "GEMHOOK_DATABASE_URL" not in env:
            fail(f"compose.yaml: `{name}` has no GEMHOOK_DATABASE_URL")
        if name != "migrate" and env.get("GEMHOOK_AUTO_MIGRATE") != "false":
            fail(f"compose.yaml: `{name}` migrates at start (GEMHOOK_AUTO_MIGRATE is not false)")
        variables.update(env)
    sinks = compose.get("configs", {}).get("gemhook-sinks", {}).get("content", "")
    return variables, sinks


def kubernetes_documents():
    directory = os.path.join(DEPLOY, "kubernetes")
    for name in sorted(os.listdir(directory)):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            with open(os.path.join(directory, name)) as f:
                for document in yaml.safe_load_all(f):
                    if document:
                        yield name, document


def kubernetes_checks():
    """Probes, resources, budgets and secrets the manifests must have; returns their variables."""
    variables, sinks, kinds = {}, "", {}
    for name, document in kubernetes_documents():
        kind = document["kind"]
        kinds.setdefault(kind, []).append(document["metadata"]["name"])
        if kind in ("ConfigMap", "Secret"):
            for key, value in {**document.get("data", {}), **document.get("stringData", {})}.items():
                if key == "gemhook.toml":
                    sinks = value
                else:
                    variables[key] = value
        pod = None
        if kind == "Deployment":
            pod = document["spec"]["template"]["spec"]
        elif kind == "Job":
            pod = document["spec"]["template"]["spec"]
        if pod is None:
            continue
        for container in pod["containers"]:
            where = f"{name}: {document['metadata']['name']}"
            if "resources" not in container:
                fail(f"{where}: no resources")
            for env in container.get("env", []):
                variables.setdefault(env["name"], env.get("value", ""))
            if kind == "Deployment":
                if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    fail(f"{where}: liveness is not /healthz")
                if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                    fail(f"{where}: readiness is not /readyz")
                refs = [r for e in container.get("envFrom", []) for r in e]
                if "secretRef" not in refs:
                    fail(f"{where}: secrets are not read from a Secret")
            if kind == "Job" and container.get("args") != ["migrate"]:
                fail(f"{where}: the Job does not run `gemhook migrate`")
    for deployment in ["gemhook-receiver", "gemhook-worker"]:
        if deployment not in kinds.get("Deployment", []):
            fail(f"kubernetes: no Deployment {deployment}")
        if deployment not in kinds.get("PodDisruptionBudget", []):
            fail(f"kubernetes: no PodDisruptionBudget {deployment}")
    for kind in ["Service", "Job", "Secret", "ConfigMap"]:
        if kind not in kinds:
            fail(f"kubernetes: no {kind}")
    for key in ["GEMHOOK_WEBHOOK_SECRETS", "GEMINI_API_KEY", "GEMHOOK_DATABASE_URL"]:
        if key not in variables:
            fail(f"kubernetes: the Secret has no {key}")
    if variables.get("GEMHOOK_AUTO_MIGRATE") != "false":
        fail("kubernetes: the Deployments migrate at start (GEMHOOK_AUTO_MIGRATE is not false)")
    if not variables.get("GEMHOOK_METRICS_LISTEN"):
        fail("kubernetes: no GEMHOOK_METRICS_LISTEN")
    return variables, sinks


def config_check(binary, where, variables, sinks):
    """Runs `gemhook config check` with the file's variables: an unknown GEMHOOK_ name warns
    on stderr, an invalid value (or sinks file) fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMHOOK_")}
    for key, value in variables.items():
        # Compose interpolation (${VAR:-default}) is resolved by compose, not by gemhook.
        env[key] = "" if "${" in str(value) else str(value)
    env["GEMHOOK_WEBHOOK_SECRETS"] = CHECK_SECRET
    if "GEMHOOK_ADMIN_TOKEN" in env:
        env["GEMHOOK_ADMIN_TOKEN"] = CHECK_ADMIN_TOKEN
    with tempfile.TemporaryDirectory() as scratch:
        config = os.path.join(scratch, "gemhook.toml")
        with open(config, "w") as f:
            f.write(sinks)
        env["GEMHOOK_CONFIG"] = config
        if "GEMHOOK_RESULTS_DIR" in env:
            env["GEMHOOK_RESULTS_DIR"] = os.path.join(scratch, "results")
        run = subprocess.run(
            [binary, "config", "check"], env=env, capture_output=True, text=True, timeout=60
        )
    if run.returncode != 0:
        fail(f"{where}: gemhook config check failed: {run.stderr.strip()}")
    elif run.stderr.strip():
        fail(f"{where}: gemhook config check warned: {run.stderr.strip()}")
    else:
        names = sorted(k for k in variables if k.startswith("GEMHOOK_"))
        print(f"ok   {where}: {len(names)} GEMHOOK_ variables are settings ({', '.join(names)})")


def main():
    binary = sys.argv[1]
    variables, sinks = compose_checks()
    config_check(binary, "compose.yaml", variables, sinks)
    variables, sinks = kubernetes_checks()
    config_check(binary, "kubernetes", variables, sinks)
    if failures:
        sys.exit(f"{len(failures)} deploy check(s) failed")
    print("deploy files: ok")


if __name__ == "__main__":
    main()
