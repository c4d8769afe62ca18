"""boto3, an independent client, drives every operation of the emulator and agrees with the wire."""
import datetime
import json

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError


@pytest.fixture
def client(emulator):
    return boto3.client(
        "bedrock-agent-runtime",
        endpoint_url=emulator,
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def all_executions(client, **kwargs):
    pages = client.get_paginator("list_flow_executions").paginate(flowIdentifier="SUPPORTTRI", **kwargs)
    return [s for page in pages for s in page["flowExecutionSummaries"]]


def test_list_pages_and_parses_every_summary(client):
    summaries = all_executions(client)
    assert len(summaries) == 23
    assert len({s["executionArn"] for s in summaries}) == 23
    for s in summaries:
        assert isinstance(s["createdAt"], datetime.datetime) and s["createdAt"].tzinfo is not None
        assert s["status"] in {"Succeeded", "Failed", "TimedOut", "Aborted", "Running"}
        assert s["executionArn"].startswith("arn:aws:bedrock:us-east-1:123456789012:flow/SUPPORTTRI/alias/")
    small = all_executions(client, PaginationConfig={"PageSize": 3})
    assert [s["executionArn"] for s in small] == [s["executionArn"] for s in summaries]
    one_page = client.list_flow_executions(flowIdentifier="SUPPORTTRI", maxResults=1000)
    assert len(one_page["flowExecutionSummaries"]) == 10, "pages hold at most 10 items"
    assert "nextToken" in one_page


def test_events_snapshot_and_execution_with_arn_identifiers(client):
    failed = 0
    for s in all_executions(client):
        arn = s["executionArn"]
        alias = s["flowAliasIdentifier"]
        alias_arn = f"arn:aws:bedrock:us-east-1:123456789012:flow/SUPPORTTRI/alias/{alias}"
        node = [e for p in client.get_paginator("list_flow_execution_events").paginate(
            flowIdentifier="SUPPORTTRI", flowAliasIdentifier=alias_arn, executionIdentifier=arn, eventType="Node") for e in p["flowExecutionEvents"]]
        flow = client.list_flow_execution_events(flowIdentifier="SUPPORTTRI", flowAliasIdentifier=alias, executionIdentifier=arn.rsplit("/", 1)[1], eventType="Flow")["flowExecutionEvents"]
        assert all(len(e) == 1 for e in node + flow), "one union member per event"
        assert "nodeOutputEvent" in node[0] and node[0]["nodeOutputEvent"]["nodeName"] == "FlowInputNode"
        assert isinstance(node[0]["nodeOutputEvent"]["timestamp"], datetime.datetime)
        assert "flowInputEvent" in flow[0]
        got = client.get_flow_execution(flowIdentifier="SUPPORTTRI", flowAliasIdentifier=alias, executionIdentifier=arn)
        assert got["executionArn"] == arn and got["status"] == s["status"] and got["startedAt"] == s["createdAt"]
        if got["status"] == "Failed":
            failed += 1
            assert any("flowFailureEvent" in e for e in flow)
            assert got["errors"][0]["nodeName"]
        snapshot = client.get_execution_flow_snapshot(flowIdentifier="SUPPORTTRI", flowAliasIdentifier=alias, executionIdentifier=arn)
        definition = json.loads(snapshot["definition"])
        assert {n["type"] for n in definition["nodes"]} >= {"Input", "Output", "Prompt", "Condition", "Agent", "KnowledgeBase"}
    assert failed > 0


def test_start_and_stop(client):
    started = client.start_flow_execution(
        flowIdentifier="DOCBATCH01", flowAliasIdentifier="TSTALIASID", flowExecutionName="boto-run",
        inputs=[{"nodeName": "FlowInputNode", "nodeOutputName": "document", "content": {"document": {"documents": ["a", "b"], "key": "k"}}}],
    )
    arn = started["executionArn"]
    assert arn.endswith(":flow/DOCBATCH01/alias/TSTALIASID/execution/boto-run")
    stopped = client.stop_flow_execution(flowIdentifier="DOCBATCH01", flowAliasIdentifier="TSTALIASID", executionIdentifier=arn)
    assert stopped["status"] == "Aborted"
    with pytest.raises(ClientError) as conflict:
        client.stop_flow_execution(flowIdentifier="DOCBATCH01", flowAliasIdentifier="TSTALIASID", executionIdentifier=arn)
    assert conflict.value.response["Error"]["Code"] == "ConflictException"
    assert conflict.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


@pytest.mark.parametrize("call,code,status", [
    (lambda c: c.list_flow_executions(flowIdentifier="NOSUCHFLOW"), "ResourceNotFoundException", 404),
    (lambda c: c.list_flow_executions(flowIdentifier="SUPPORTTRI", maxResults=5000), "ValidationException", 400),
    (lambda c: c.list_flow_executions(flowIdentifier="SUPPORTTRI", nextToken="bogus"), "ValidationException", 400),
    (lambda c: c.list_flow_execution_events(flowIdentifier="SUPPORTTRI", flowAliasIdentifier="TSTALIASID", executionIdentifier="nope", eventType="Node"), "ResourceNotFoundException", 404),
])
def test_errors_carry_type_and_status(client, call, code, status):
    with pytest.raises(ClientError) as error:
        call(client)
    assert error.value.response["Error"]["Code"] == code
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error.value.response["ResponseMetadata"]["RequestId"]
