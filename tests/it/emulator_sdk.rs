//! The emulator driven by the real AWS SDK for Rust (its paginators included): every
//! operation, every error kind, ARN and bare-id identifiers, pages of any size.

use aws_config::BehaviorVersion;
use aws_sdk_bedrockagentruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockagentruntime::types::{FlowExecutionEventType, FlowExecutionStatus, FlowInput, FlowInputContent};
use aws_sdk_bedrockagentruntime::Client;
use bedrock_flow_emulator::scenario::{ListOrder, Scenario};

use bedrock_flow_test_support as support;

pub async fn client(endpoint: &str) -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "static"))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    Client::new(&config)
}

fn scenario(history: usize) -> Scenario {
    let mut s = support::history_scenario(history);
    s.outcomes.failed = 0.3;
    s
}

async fn all_executions(c: &Client, flow: &str, alias: Option<&str>) -> Vec<String> {
    c.list_flow_executions()
        .flow_identifier(flow)
        .set_flow_alias_identifier(alias.map(String::from))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.execution_arn().to_string())
        .collect()
}

#[tokio::test]
async fn every_read_operation_with_bare_ids_and_arns() {
    let emulator = support::emulator(scenario(25)).await;
    let c = client(&emulator.endpoint()).await;
    let arns = all_executions(&c, "SUPPORTTRI", None).await;
    assert_eq!(arns.len(), 25, "every execution of the flow, over three pages");
    let mut unique = arns.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 25);
    let flow_arn = "arn:aws:bedrock:us-east-1:123456789012:flow/SUPPORTTRI";
    assert_eq!(all_executions(&c, flow_arn, None).await, arns, "a flow ARN lists the same");
    let live = all_executions(&c, "SUPPORTTRI", Some("SUPPORLIVE")).await;
    let test = all_executions(&c, "SUPPORTTRI", Some("TSTALIASID")).await;
    assert_eq!(live.len() + test.len(), 25);
    assert!(live.iter().all(|a| a.contains("/alias/SUPPORLIVE/")));

    let mut failed_seen = 0;
    for arn in &arns {
        let parts: Vec<&str> = arn.split('/').collect();
        let (alias, name) = (parts[3], parts[5]);
        let alias_arn = format!("{flow_arn}/alias/{alias}");
        let by_ids: Vec<_> = c
            .list_flow_execution_events()
            .flow_identifier("SUPPORTTRI")
            .flow_alias_identifier(alias)
            .execution_identifier(name)
            .event_type(FlowExecutionEventType::Node)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
        let by_arns: Vec<_> = c
            .list_flow_execution_events()
            .flow_identifier(flow_arn)
            .flow_alias_identifier(&alias_arn)
            .execution_identifier(arn)
            .event_type(FlowExecutionEventType::Node)
            .max_results(3)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
        assert_eq!(by_ids, by_arns, "ARN labels (percent-encoded on the wire) reach the same execution");
        assert!(by_ids.len() >= 2, "an execution has node events: {}", by_ids.len());
        assert!(by_ids.iter().all(|e| !e.is_unknown() && !e.is_flow_input_event()));
        let first = by_ids[0].as_node_output_event().expect("the Input node's output comes first");
        assert_eq!(first.node_name(), "FlowInputNode");
        assert!(first.timestamp().secs() > 1_700_000_000);
        let flow_events = c
            .list_flow_execution_events()
            .flow_identifier("SUPPORTTRI")
            .flow_alias_identifier(alias)
            .execution_identifier(name)
            .event_type(FlowExecutionEventType::Flow)
            .send()
            .await
            .unwrap();
        assert!(flow_events.flow_execution_events()[0].is_flow_input_event());
        let got = c.get_flow_execution().flow_identifier("SUPPORTTRI").flow_alias_identifier(alias).execution_identifier(arn).send().await.unwrap();
        assert_eq!(got.execution_arn(), arn);
        assert!(got.ended_at().is_some());
        if got.status() == &FlowExecutionStatus::Failed {
            failed_seen += 1;
            assert!(flow_events.flow_execution_events().iter().any(|e| e.is_flow_failure_event()));
            assert!(!got.errors().is_empty(), "a failed execution carries errors");
        }
        let snapshot =
            c.get_execution_flow_snapshot().flow_identifier("SUPPORTTRI").flow_alias_identifier(alias).execution_identifier(name).send().await.unwrap();
        let definition: serde_json::Value = serde_json::from_str(snapshot.definition()).unwrap();
        assert_eq!(definition["nodes"].as_array().unwrap().len(), 8);
        assert_eq!(snapshot.flow_version(), if alias == "TSTALIASID" { "DRAFT" } else { "1" });
    }
    assert!(failed_seen > 0, "the scenario's 30% failures show");
    let stats = emulator.stats();
    assert_eq!(support::requests(&stats, "GetExecutionFlowSnapshot"), 25);
    emulator.stop().await;
}

#[tokio::test]
async fn start_and_stop_drive_real_executions() {
    let mut s = scenario(0);
    s.outcomes.failed = 0.0;
    let emulator = support::emulator(s).await;
    let c = client(&emulator.endpoint()).await;
    let input = FlowInput::builder()
        .node_name("FlowInputNode")
        .node_output_name("document")
        .content(FlowInputContent::Document(aws_smithy_types::Document::String("hello".into())))
        .build()
        .unwrap();
    let started = c
        .start_flow_execution()
        .flow_identifier("REFINELOOP")
        .flow_alias_identifier("TSTALIASID")
        .flow_execution_name("my-run-1")
        .inputs(input.clone())
        .send()
        .await
        .unwrap();
    let arn = started.execution_arn().unwrap().to_string();
    assert!(arn.ends_with(":flow/REFINELOOP/alias/TSTALIASID/execution/my-run-1"), "{arn}");
    let again = c
        .start_flow_execution()
        .flow_identifier("REFINELOOP")
        .flow_alias_identifier("TSTALIASID")
        .flow_execution_name("my-run-1")
        .inputs(input.clone())
        .send()
        .await;
    assert_eq!(again.unwrap_err().code(), Some("ConflictException"));
    let got = c.get_flow_execution().flow_identifier("REFINELOOP").flow_alias_identifier("TSTALIASID").execution_identifier(&arn).send().await.unwrap();
    assert_eq!(got.status(), &FlowExecutionStatus::Running);
    let stopped = c.stop_flow_execution().flow_identifier("REFINELOOP").flow_alias_identifier("TSTALIASID").execution_identifier(&arn).send().await.unwrap();
    assert_eq!(stopped.status(), &FlowExecutionStatus::Aborted);
    let got = c.get_flow_execution().flow_identifier("REFINELOOP").flow_alias_identifier("TSTALIASID").execution_identifier(&arn).send().await.unwrap();
    assert_eq!(got.status(), &FlowExecutionStatus::Aborted);
    assert!(got.ended_at().is_some());
    let twice = c.stop_flow_execution().flow_identifier("REFINELOOP").flow_alias_identifier("TSTALIASID").execution_identifier(&arn).send().await;
    assert_eq!(twice.unwrap_err().code(), Some("ConflictException"));
    // The input document reaches the first events.
    let flow_events = c
        .list_flow_execution_events()
        .flow_identifier("REFINELOOP")
        .flow_alias_identifier("TSTALIASID")
        .execution_identifier("my-run-1")
        .event_type(FlowExecutionEventType::Flow)
        .send()
        .await
        .unwrap();
    let first = flow_events.flow_execution_events()[0].as_flow_input_event().unwrap();
    assert_eq!(first.fields()[0].content().unwrap().as_document().unwrap(), &aws_smithy_types::Document::String("hello".into()));
    emulator.stop().await;
}

#[tokio::test]
async fn every_error_kind_reaches_the_sdk_as_its_type() {
    let mut s = scenario(3);
    s.faults.access_denied_flows = vec!["DOCBATCH01".into()];
    s.faults.token_ttl_secs = 1;
    let emulator = support::emulator(s).await;
    let c = client(&emulator.endpoint()).await;
    let missing = c.list_flow_executions().flow_identifier("NOSUCHFLOW").send().await.unwrap_err();
    assert_eq!(missing.code(), Some("ResourceNotFoundException"));
    assert!(missing.as_service_error().unwrap().is_resource_not_found_exception());
    let denied = c.list_flow_executions().flow_identifier("DOCBATCH01").send().await.unwrap_err();
    assert!(denied.as_service_error().unwrap().is_access_denied_exception());
    for bad in [0, 1001] {
        let e = c.list_flow_executions().flow_identifier("SUPPORTTRI").max_results(bad).send().await.unwrap_err();
        assert!(e.as_service_error().unwrap().is_validation_exception(), "maxResults {bad}");
    }
    let e = c.list_flow_executions().flow_identifier("SUPPORTTRI").next_token("not-a-token").send().await.unwrap_err();
    assert!(e.as_service_error().unwrap().is_validation_exception());
    let e = c.list_flow_executions().flow_identifier("bad id!").send().await.unwrap_err();
    assert!(e.as_service_error().unwrap().is_validation_exception());
    let page = c.list_flow_executions().flow_identifier("SUPPORTTRI").max_results(1).send().await.unwrap();
    let token = page.next_token().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = c.list_flow_executions().flow_identifier("SUPPORTTRI").max_results(1).next_token(token).send().await.unwrap_err();
    assert!(expired.as_service_error().unwrap().is_validation_exception(), "expired tokens are rejected");
    let gone = c
        .get_flow_execution()
        .flow_identifier("SUPPORTTRI")
        .flow_alias_identifier("TSTALIASID")
        .execution_identifier("no-such-execution")
        .send()
        .await
        .unwrap_err();
    assert!(gone.as_service_error().unwrap().is_resource_not_found_exception());
    emulator.stop().await;

    // Injected faults: every request fails with the modeled type (one attempt, no retry).
    type IsKind = fn(&aws_sdk_bedrockagentruntime::operation::list_flow_executions::ListFlowExecutionsError) -> bool;
    type Inject = fn(&mut Scenario);
    let faults: [(Inject, &str, IsKind); 2] = [
        (|s| s.faults.throttle_ratio = 1.0, "ThrottlingException", |e| e.is_throttling_exception()),
        (|s| s.faults.server_error_ratio = 1.0, "InternalServerException", |e| e.is_internal_server_exception()),
    ];
    for (inject, code, is_kind) in faults {
        let mut s = scenario(3);
        inject(&mut s);
        let emulator = support::emulator(s).await;
        let c = client(&emulator.endpoint()).await;
        let e = c.list_flow_executions().flow_identifier("SUPPORTTRI").send().await.unwrap_err();
        assert!(is_kind(e.as_service_error().unwrap()), "{code}");
        assert_eq!(emulator.stats()["errors"][code], 1, "{code} counted once");
        emulator.stop().await;
    }
}

#[tokio::test]
async fn any_page_size_from_1_to_1000_lists_the_same_executions() {
    for order in [ListOrder::NewestFirst, ListOrder::OldestFirst, ListOrder::Shuffled] {
        let mut s = scenario(37);
        s.list_order = order;
        let emulator = support::emulator(s).await;
        let c = client(&emulator.endpoint()).await;
        let reference = all_executions(&c, "DOCBATCH01", None).await;
        assert_eq!(reference.len(), 37);
        let mut sizes: Vec<i32> = (1..=12).collect();
        sizes.extend([13, 37, 99, 500, 999, 1000]);
        let mut rng = bedrock_flow_emulator::rng::Rng::new(order as u64);
        sizes.extend((0..5).map(|_| rng.between(1, 1000) as i32));
        for size in sizes {
            let listed: Vec<String> = c
                .list_flow_executions()
                .flow_identifier("DOCBATCH01")
                .max_results(size)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.execution_arn().to_string())
                .collect();
            assert_eq!(listed, reference, "maxResults {size}, {order:?}");
        }
        emulator.stop().await;
    }
}
