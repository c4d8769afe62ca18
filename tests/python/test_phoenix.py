"""Arize Phoenix, a real OTLP trace backend, receives the spans of a run against the emulator;
the traces are read back through Phoenix's REST API with their node spans and parents."""
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import pathlib

import pytest
import requests

from conftest import BINARY, start_emulator


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def phoenix(tmp_path):
    executable = shutil.which("phoenix", path=os.path.dirname(sys.executable)) or shutil.which("phoenix")
    assert executable, "arize-phoenix is installed by .ci/run (tests/python/requirements.txt)"
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, PHOENIX_WORKING_DIR=str(tmp_path / "phoenix"), PHOENIX_HOST="127.0.0.1",
               PHOENIX_PORT=str(port), PHOENIX_GRPC_PORT=str(grpc_port), PHOENIX_TELEMETRY_ENABLED="false",
               DO_NOT_TRACK="1")
    log = open(tmp_path / "phoenix.log", "w")
    process = subprocess.Popen([executable, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert process.poll() is None, (tmp_path / "phoenix.log").read_text()
        time.sleep(0.5)
    else:
        raise AssertionError("Phoenix did not become healthy")
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_phoenix_receives_every_execution_with_its_node_spans(phoenix, tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text("""
seed = 21
[traffic]
history = 4
[[flows]]
id = "SUPPORTTRI"
name = "support-triage"
template = "support_triage"
[[flows]]
id = "DOCBATCH01"
name = "doc-batch"
template = "doc_batch"
[[flows]]
id = "REFINELOOP"
name = "refine-loop"
template = "refine_loop"
""")
    emulator, emulator_url = start_emulator("--scenario", str(scenario))
    try:
        config = tmp_path / "config.toml"
        config.write_text(f"""
[server]
listen = "127.0.0.1:0"
[state]
path = "{tmp_path / 'state.sqlite'}"
[aws]
region = "us-east-1"
endpoint_url = "{emulator_url}"
max_requests_per_second = 200
[poll]
interval_secs = 1
settle_secs = 0
[traces]
endpoint = "{phoenix}"
protocol = "http/protobuf"
[[flows]]
id = "SUPPORTTRI"
name = "support-triage"
[[flows]]
id = "DOCBATCH01"
name = "doc-batch"
[[flows]]
id = "REFINELOOP"
name = "refine-loop"
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OTEL_"))}
        env.update(AWS_ACCESS_KEY_ID="AKIDTEST", AWS_SECRET_ACCESS_KEY="secret", AWS_EC2_METADATA_DISABLED="true",
                   OTEL_RESOURCE_ATTRIBUTES="openinference.project.name=bedrock-flows")
        run = subprocess.run([str(BINARY), "run", "--once", "--config", str(config)], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert "run --once: 12 executions exported" in run.stdout, run.stdout
        arns = []
        for flow in ("SUPPORTTRI", "DOCBATCH01", "REFINELOOP"):
            listing = requests.get(f"{emulator_url}/flows/{flow}/executions?maxResults=10").json()
            arns += [s["executionArn"] for s in listing["flowExecutionSummaries"]]
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    assert len(arns) == 12

    spans = []
    deadline = time.time() + 60
    while time.time() < deadline:
        response = requests.get(f"{phoenix}/v1/projects/bedrock-flows/spans", params={"limit": 1000}, timeout=10)
        if response.status_code == 200:
            spans = response.json()["data"]
            roots = [s for s in spans if not s.get("parent_id")]
            if len(roots) == 12:
                break
        time.sleep(1)
    roots = {s["context"]["trace_id"]: s for s in spans if not s.get("parent_id")}
    assert len(roots) == 12, f"{len(roots)} root spans in Phoenix"
    by_id = {s["context"]["span_id"]: s for s in spans}
    for arn in arns:
        trace_id = hashlib.sha256(arn.encode()).hexdigest()[:32]
        assert trace_id in roots, f"the trace of {arn} is found by its derived id"
        root = roots[trace_id]
        assert root["name"].startswith("invoke_workflow ")
        assert root["context"]["span_id"] == hashlib.sha256(f"{arn}|root".encode()).hexdigest()[:16]
        nodes = [s for s in spans if s["context"]["trace_id"] == trace_id and s.get("parent_id")]
        assert len(nodes) >= 4, f"{arn}: {len(nodes)} node spans"
        for node in nodes:
            assert node["parent_id"] in by_id, "every parent is a span Phoenix has"
            assert by_id[node["parent_id"]]["context"]["trace_id"] == trace_id
        if "DOCBATCH01" in arn:
            iterator = [n for n in nodes if n["name"] == "Iterator EachDocument"]
            extracts = [n for n in nodes if n["name"] == "LambdaFunction Extract"]
            assert len(iterator) == 1 and extracts
            assert all(e["parent_id"] == iterator[0]["context"]["span_id"] for e in extracts), "the Iterator run is the parent"
        prompts = [n for n in nodes if n["name"].startswith("Prompt ")]
        assert prompts and all(p["span_kind"] == "LLM" for p in prompts), "OpenInference span kinds reach Phoenix"
