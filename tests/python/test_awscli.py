"""The AWS CLI (PyPI `awscli`, in the test venv) against the emulator: the paginator contract
users script with (`--max-items`, `--page-size`, `--starting-token` resuming exactly), both
event streams, the get operations, start and stop (a second stop is a ConflictException and
the CLI's error exit)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

AWS = pathlib.Path(sys.executable).parent / "aws"


def aws(url, *args, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIDCLI", AWS_SECRET_ACCESS_KEY="secret", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    run = subprocess.run([str(AWS), "bedrock-agent-runtime", *args, "--endpoint-url", url, "--output", "json"], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout) if run.stdout.strip() else {}
    return run


@pytest.fixture(scope="module", autouse=True)
def cli_installed():
    if not AWS.exists():
        pytest.fail(f"{AWS} missing: awscli belongs in tests/python/requirements.txt")


def test_paging_with_max_items_page_size_and_starting_token_resumes_exactly(emulator):
    everything = aws(emulator, "list-flow-executions", "--flow-identifier", "SUPPORTTRI")["flowExecutionSummaries"]
    assert len(everything) == 23, "the CLI pages through all by itself"
    seen, token, pages = [], None, 0
    while True:
        args = ["list-flow-executions", "--flow-identifier", "SUPPORTTRI", "--max-items", "5", "--page-size", "2"]
        if token:
            args += ["--starting-token", token]
        page = aws(emulator, *args)
        pages += 1
        assert len(page["flowExecutionSummaries"]) <= 5
        seen += [s["executionArn"] for s in page["flowExecutionSummaries"]]
        token = page.get("NextToken")
        if not token:
            break
    assert pages == 5, "23 items, 5 at a time"
    assert seen == [s["executionArn"] for s in everything], "resumed exactly: nothing skipped or repeated, same order"


def test_both_event_streams_and_the_get_operations(emulator):
    summary = aws(emulator, "list-flow-executions", "--flow-identifier", "DOCBATCH01", "--max-items", "1")["flowExecutionSummaries"][0]
    ids = ["--flow-identifier", "DOCBATCH01", "--flow-alias-identifier", summary["flowAliasIdentifier"], "--execution-identifier", summary["executionArn"]]
    node = aws(emulator, "list-flow-execution-events", *ids, "--event-type", "Node")["flowExecutionEvents"]
    flow = aws(emulator, "list-flow-execution-events", *ids, "--event-type", "Flow")["flowExecutionEvents"]
    assert node and all(len(e) == 1 and next(iter(e)).startswith(("node", "condition")) for e in node), node[:3]
    assert flow and all(next(iter(e)).startswith("flow") for e in flow), flow
    small = aws(emulator, "list-flow-execution-events", *ids, "--event-type", "Node", "--max-items", "3", "--page-size", "2")
    assert small["flowExecutionEvents"] == node[:3] and small.get("NextToken")
    rest = aws(emulator, "list-flow-execution-events", *ids, "--event-type", "Node", "--starting-token", small["NextToken"])
    assert small["flowExecutionEvents"] + rest["flowExecutionEvents"] == node, "the token resumes exactly"
    got = aws(emulator, "get-flow-execution", *ids)
    assert got["executionArn"] == summary["executionArn"] and got["status"] == summary["status"]
    snapshot = aws(emulator, "get-execution-flow-snapshot", *ids)
    assert any(n["type"] == "Iterator" for n in json.loads(snapshot["definition"])["nodes"])


def test_start_then_stop_twice_is_a_conflict(emulator):
    inputs = json.dumps([{"nodeName": "FlowInputNode", "nodeOutputName": "document", "content": {"document": {"documents": ["a"], "key": "k"}}}])
    started = aws(emulator, "start-flow-execution", "--flow-identifier", "DOCBATCH01", "--flow-alias-identifier", "TSTALIASID", "--flow-execution-name", "cli-run", "--inputs", inputs)
    arn = started["executionArn"]
    assert arn.endswith(":flow/DOCBATCH01/alias/TSTALIASID/execution/cli-run")
    ids = ["--flow-identifier", "DOCBATCH01", "--flow-alias-identifier", "TSTALIASID", "--execution-identifier", arn]
    assert aws(emulator, "stop-flow-execution", *ids)["status"] == "Aborted"
    again = aws(emulator, "stop-flow-execution", *ids, check=False)
    assert again.returncode != 0, "the CLI's error exit"
    assert "ConflictException" in again.stderr, again.stderr
