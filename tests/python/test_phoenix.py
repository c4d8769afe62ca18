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


FLOWS = {"SUPPORTTRI": ("support-triage", "support_triage"), "DOCBATCH01": ("doc-batch", "doc_batch"),
         "REFINELOOP": ("refine-loop", "refine_loop")}


def export_into_phoenix(phoenix, tmp_path, history, flows, extra_traces=""):
    """`run --once` over `history` finished executions of each of `flows` (ids of FLOWS) on the
    emulator, into Phoenix over OTLP/HTTP; returns the ARNs of the executions."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(f"seed = 21\n[traffic]\nhistory = {history}\n" + "".join(
        f'[[flows]]\nid = "{f}"\nname = "{FLOWS[f][0]}"\ntemplate = "{FLOWS[f][1]}"\n' for f in flows))
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
{extra_traces}
""" + "".join(f'[[flows]]\nid = "{f}"\nname = "{FLOWS[f][0]}"\n' for f in flows))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OTEL_"))}
        env.update(AWS_ACCESS_KEY_ID="AKIDTEST", AWS_SECRET_ACCESS_KEY="secret", AWS_EC2_METADATA_DISABLED="true",
                   OTEL_RESOURCE_ATTRIBUTES="openinference.project.name=bedrock-flows")
        run = subprocess.run([str(BINARY), "run", "--once", "--config", str(config)], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert f"run --once: {history * len(flows)} executions exported" in run.stdout, run.stdout
        arns = []
        for flow in flows:
            listing = requests.get(f"{emulator_url}/flows/{flow}/executions?maxResults=10").json()
            arns += [s["executionArn"] for s in listing["flowExecutionSummaries"]]
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    return arns


def phoenix_spans(phoenix, roots_expected):
    """The project's spans once Phoenix shows `roots_expected` root spans (or after 60 s)."""
    spans = []
    deadline = time.time() + 60
    while time.time() < deadline:
        response = requests.get(f"{phoenix}/v1/projects/bedrock-flows/spans", params={"limit": 1000}, timeout=10)
        if response.status_code == 200:
            spans = response.json()["data"]
            if len([s for s in spans if not s.get("parent_id")]) == roots_expected:
                break
        time.sleep(1)
    return spans


def test_phoenix_receives_every_execution_with_its_node_spans(phoenix, tmp_path):
    arns = export_into_phoenix(phoenix, tmp_path, 4, ["SUPPORTTRI", "DOCBATCH01", "REFINELOOP"])
    assert len(arns) == 12

    spans = phoenix_spans(phoenix, 12)
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


CHROMIUM = "/usr/bin/chromium"
# As the workplace runs Chromium: no sandbox as root, and nothing that reaches for the internet.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_phoenix_trace_view_shows_the_node_spans_of_a_demo_execution(phoenix, tmp_path):
    """Phoenix's own UI, in headless Chromium, on the trace of one doc-batch execution (the
    demo's Iterator flow): the page lists the root and the node spans the exporter made, and its
    screenshot is the picture in the README (`PHOENIX_SCREENSHOT=docs/phoenix-trace.png` writes
    it there)."""
    from playwright.sync_api import sync_playwright

    arns = export_into_phoenix(phoenix, tmp_path, 1, ["DOCBATCH01"], 'capture_content = "truncated"\nmax_content_bytes = 256')
    assert len(arns) == 1
    trace_id = hashlib.sha256(arns[0].encode()).hexdigest()[:32]
    spans = phoenix_spans(phoenix, 1)
    names = {s["name"] for s in spans if s["context"]["trace_id"] == trace_id}
    assert {"invoke_workflow doc-batch", "Iterator EachDocument", "LambdaFunction Extract", "Prompt Summarize",
            "Collector Gather"} <= names, names

    screenshot = pathlib.Path(os.environ.get("PHOENIX_SCREENSHOT", tmp_path / "phoenix-trace.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            # Phoenix resolves a trace by its OpenTelemetry id to the project's trace view.
            page.goto(f"{phoenix}/redirects/traces/{trace_id}", wait_until="networkidle", timeout=60_000)
            assert "/traces/" in page.url, page.url
            for name in ("invoke_workflow doc-batch", "Iterator EachDocument", "LambdaFunction Extract", "Prompt Summarize",
                         "Collector Gather"):
                page.get_by_text(name, exact=True).first.wait_for(state="visible", timeout=30_000)
            # Each span of the trace is one row of the tree: as many Extract rows as Extract spans.
            extracts = [s for s in spans if s["context"]["trace_id"] == trace_id and s["name"] == "LambdaFunction Extract"]
            shown = page.get_by_text("LambdaFunction Extract", exact=True).count()
            assert shown == len(extracts) >= 2, (shown, len(extracts))
            page.wait_for_timeout(500)
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1440, 900), (width, height)
