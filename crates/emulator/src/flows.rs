//! Built-in flow definitions (the `FlowDefinition` shape of the control plane), used by the
//! scenarios. Each is a flow a real team could build in the Bedrock console.

use serde_json::{json, Value};

use bedrock_flow_wire::model::FlowDefinition;

fn io(name: &str, kind: &str, expression: &str) -> Value {
    json!({"name": name, "type": kind, "expression": expression})
}

fn data(source: &str, output: &str, target: &str, input: &str) -> Value {
    json!({"type": "Data", "name": format!("{source}_{output}_to_{target}_{input}"), "source": source, "target": target,
           "configuration": {"data": {"sourceOutput": output, "targetInput": input}}})
}

fn conditional(source: &str, condition: &str, target: &str) -> Value {
    json!({"type": "Conditional", "name": format!("{source}_{condition}_to_{target}"), "source": source, "target": target,
           "configuration": {"conditional": {"condition": condition}}})
}

fn input_node() -> Value {
    json!({"name": "FlowInputNode", "type": "Input", "configuration": {"input": {}},
           "outputs": [{"name": "document", "type": "Object"}]})
}

fn output_node(name: &str) -> Value {
    json!({"name": name, "type": "Output", "configuration": {"output": {}},
           "inputs": [io("document", "String", "$.data")]})
}

fn prompt_node(name: &str, model: &str, input: &str) -> Value {
    json!({"name": name, "type": "Prompt",
           "configuration": {"prompt": {"sourceConfiguration": {"inline": {
               "templateType": "TEXT", "modelId": model,
               "templateConfiguration": {"text": {"text": "Answer for {{input}}", "inputVariables": [{"name": input}]}},
               "inferenceConfiguration": {"text": {"temperature": 0.2, "maxTokens": 512}}}}}},
           "inputs": [io(input, "String", "$.data")],
           "outputs": [{"name": "modelCompletion", "type": "String"}]})
}

/// support-triage: classify a ticket with a prompt, route by a condition to an agent (billing)
/// or to a knowledge base then a prompt (technical), answer.
pub fn support_triage() -> FlowDefinition {
    let def = json!({
        "nodes": [
            input_node(),
            prompt_node("Classify", "anthropic.claude-3-haiku-20240307-v1:0", "ticket"),
            {"name": "Route", "type": "Condition",
             "configuration": {"condition": {"conditions": [
                 {"name": "isBilling", "expression": "category == \"billing\""},
                 {"name": "default"}]}},
             "inputs": [io("category", "String", "$.data")]},
            {"name": "BillingAgent", "type": "Agent",
             "configuration": {"agent": {"agentAliasArn": "arn:aws:bedrock:us-east-1:123456789012:agent-alias/AGENT12345/ALIAS12345"}},
             "inputs": [io("agentInputText", "String", "$.data")],
             "outputs": [{"name": "agentResponse", "type": "String"}]},
            {"name": "Docs", "type": "KnowledgeBase",
             "configuration": {"knowledgeBase": {"knowledgeBaseId": "KB12345678", "modelId": "amazon.titan-text-premier-v1:0", "numberOfResults": 5}},
             "inputs": [io("retrievalQuery", "String", "$.data")],
             "outputs": [{"name": "outputText", "type": "String"}]},
            prompt_node("Answer", "anthropic.claude-3-5-sonnet-20240620-v1:0", "context"),
            output_node("BillingOutput"),
            output_node("FlowOutputNode")
        ],
        "connections": [
            data("FlowInputNode", "document", "Classify", "ticket"),
            data("Classify", "modelCompletion", "Route", "category"),
            conditional("Route", "isBilling", "BillingAgent"),
            conditional("Route", "default", "Docs"),
            data("FlowInputNode", "document", "BillingAgent", "agentInputText"),
            data("FlowInputNode", "document", "Docs", "retrievalQuery"),
            data("BillingAgent", "agentResponse", "BillingOutput", "document"),
            data("Docs", "outputText", "Answer", "context"),
            data("Answer", "modelCompletion", "FlowOutputNode", "document")
        ]
    });
    serde_json::from_value(def).expect("built-in definition")
}

/// doc-batch: iterate over documents, run a Lambda and a summarizing prompt per item,
/// collect the summaries.
pub fn doc_batch() -> FlowDefinition {
    let def = json!({
        "nodes": [
            input_node(),
            {"name": "EachDocument", "type": "Iterator", "configuration": {"iterator": {}},
             "inputs": [io("array", "Array", "$.data.documents")],
             "outputs": [{"name": "arrayItem", "type": "String"}, {"name": "arraySize", "type": "Number"}]},
            {"name": "Extract", "type": "LambdaFunction",
             "configuration": {"lambdaFunction": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:extract-text"}},
             "inputs": [io("codeHookInput", "String", "$.data")],
             "outputs": [{"name": "functionResponse", "type": "String"}]},
            prompt_node("Summarize", "anthropic.claude-3-haiku-20240307-v1:0", "text"),
            {"name": "Gather", "type": "Collector", "configuration": {"collector": {}},
             "inputs": [io("arrayItem", "String", "$.data"), io("arraySize", "Number", "$.data")],
             "outputs": [{"name": "collectedArray", "type": "Array"}]},
            {"name": "Archive", "type": "Storage",
             "configuration": {"storage": {"serviceConfiguration": {"s3": {"bucketName": "doc-batch-summaries"}}}},
             "inputs": [io("content", "Array", "$.data"), io("objectKey", "String", "$.data.key")],
             "outputs": [{"name": "s3Uri", "type": "String"}]},
            output_node("FlowOutputNode")
        ],
        "connections": [
            data("FlowInputNode", "document", "EachDocument", "array"),
            data("EachDocument", "arrayItem", "Extract", "codeHookInput"),
            data("Extract", "functionResponse", "Summarize", "text"),
            data("Summarize", "modelCompletion", "Gather", "arrayItem"),
            data("EachDocument", "arraySize", "Gather", "arraySize"),
            data("Gather", "collectedArray", "Archive", "content"),
            data("FlowInputNode", "document", "Archive", "objectKey"),
            data("Archive", "s3Uri", "FlowOutputNode", "document")
        ]
    });
    serde_json::from_value(def).expect("built-in definition")
}

/// refine-loop: draft an answer, then loop a critique prompt and an inline-code scorer until
/// the score is good enough.
pub fn refine_loop() -> FlowDefinition {
    refine_loop_of(5)
}

/// refine-loop allowed `iterations` passes (more than 5: it runs them all), for benchmarks of
/// one execution with thousands of node runs of the same few nodes.
pub fn long_loop(events: usize) -> FlowDefinition {
    refine_loop_of((events / 8).max(6))
}

fn refine_loop_of(iterations: usize) -> FlowDefinition {
    let body = json!({
        "nodes": [
            {"name": "LoopStart", "type": "LoopInput", "configuration": {"loopInput": {}},
             "outputs": [{"name": "loopInput", "type": "String"}]},
            prompt_node("Critique", "meta.llama3-70b-instruct-v1:0", "draft"),
            {"name": "Score", "type": "InlineCode",
             "configuration": {"inlineCode": {"language": "Python_3", "code": "len(draft) > 40"}},
             "inputs": [io("draft", "String", "$.data")],
             "outputs": [{"name": "response", "type": "Number"}]},
            {"name": "Again", "type": "LoopController",
             "configuration": {"loopController": {"continueCondition": {"name": "tooShort", "expression": "score < 0.8"}, "maxIterations": iterations}},
             "inputs": [{"name": "score", "type": "Number", "expression": "$.data", "category": "LoopCondition"},
                        {"name": "draft", "type": "String", "expression": "$.data", "category": "ExitLoop"}]}
        ],
        "connections": [
            data("LoopStart", "loopInput", "Critique", "draft"),
            data("Critique", "modelCompletion", "Score", "draft"),
            data("Score", "response", "Again", "score"),
            data("Critique", "modelCompletion", "Again", "draft")
        ]
    });
    let def = json!({
        "nodes": [
            input_node(),
            prompt_node("Draft", "anthropic.claude-3-5-sonnet-20240620-v1:0", "topic"),
            {"name": "Refine", "type": "Loop", "configuration": {"loop": {"definition": body}},
             "inputs": [io("loopInput", "String", "$.data")],
             "outputs": [{"name": "loopOutput", "type": "String"}]},
            output_node("FlowOutputNode")
        ],
        "connections": [
            data("FlowInputNode", "document", "Draft", "topic"),
            data("Draft", "modelCompletion", "Refine", "loopInput"),
            data("Refine", "loopOutput", "FlowOutputNode", "document")
        ]
    });
    serde_json::from_value(def).expect("built-in definition")
}

/// backlog: a straight chain sized so that one execution yields about `events` events
/// (5 of them flow events: one input and four outputs), for benchmarks.
pub fn backlog(events: usize) -> FlowDefinition {
    let node_events = events.saturating_sub(5).max(7);
    // Input (1) + four Output nodes (4) + three events per prompt + two per inline-code node.
    let rest = node_events - 5;
    let prompts = rest / 3;
    let code_nodes = rest % 3 / 2 + rest % 3 % 2;
    let mut nodes = vec![input_node()];
    let mut connections = Vec::new();
    let mut previous = ("FlowInputNode".to_string(), "document".to_string());
    for i in 0..prompts {
        let name = format!("Step{i}");
        nodes.push(prompt_node(&name, "anthropic.claude-3-haiku-20240307-v1:0", "text"));
        connections.push(data(&previous.0, &previous.1, &name, "text"));
        previous = (name, "modelCompletion".into());
    }
    for i in 0..code_nodes {
        let name = format!("Shape{i}");
        nodes.push(json!({"name": name, "type": "InlineCode",
            "configuration": {"inlineCode": {"language": "Python_3", "code": "text.strip()"}},
            "inputs": [io("text", "String", "$.data")], "outputs": [{"name": "response", "type": "String"}]}));
        connections.push(data(&previous.0, &previous.1, &name, "text"));
        previous = (name, "response".into());
    }
    for i in 0..4 {
        let name = format!("Output{i}");
        nodes.push(output_node(&name));
        connections.push(data(&previous.0, &previous.1, &name, "document"));
    }
    serde_json::from_value(json!({"nodes": nodes, "connections": connections})).expect("built-in definition")
}

/// A built-in definition by template name.
pub fn by_name(name: &str, backlog_events: usize) -> Option<FlowDefinition> {
    Some(match name {
        "support_triage" => support_triage(),
        "doc_batch" => doc_batch(),
        "refine_loop" => refine_loop(),
        "backlog" => backlog(backlog_events),
        "long_loop" => long_loop(backlog_events),
        _ => return None,
    })
}
