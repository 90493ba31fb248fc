//! `GET /openapi.json`: served without an API key, valid OpenAPI 3.1 by a validator nobody here
//! wrote (Python's openapi-spec-validator, which `scripts/test` installs), and listing every
//! route of `src/http/v1.rs` (parsed from its source) with its methods, no more and no fewer.
//! Where the validator is missing the validation test prints why and passes, unless CI or
//! PAYNOTIFY_REQUIRE_BROWSER=1 is set: then it fails.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::*;

/// The router's source, whose `.route("...", get(..).post(..))` calls the document must cover.
const V1_SOURCE: &str = include_str!("../../src/http/v1.rs");
const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];

/// `(path, METHOD)` for every method of every `.route(...)` call in `source`.
fn routed(source: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (at, call) in source.match_indices(".route(") {
        let rest = &source[at + call.len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a .route( call closes");
        let call = &rest[..end];
        let path = call
            .split('"')
            .nth(1)
            .expect("a .route( call names its path");
        let handlers = &call[call.find(',').expect("path, then the method router")..];
        for method in METHODS {
            for (i, _) in handlers.match_indices(&format!("{method}(")) {
                let before = handlers[..i].chars().last();
                if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                    out.insert((path.to_string(), method.to_uppercase()));
                }
            }
        }
    }
    out
}

/// `(path, METHOD)` for every operation of the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(*method).is_some() {
                out.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    out
}

/// The document as a node serves it, fetched without an API key.
async fn fetch(node: &Node) -> Value {
    let response = reqwest::get(node.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"].to_str().unwrap();
    assert!(kind.starts_with("application/json"), "{kind}");
    response.json().await.unwrap()
}

#[test]
fn the_route_parser_reads_the_router_source() {
    let routes = routed(V1_SOURCE);
    assert!(routes.len() >= 19, "{routes:?}");
    for (path, method) in [
        ("/v1/notifications", "POST"),
        ("/v1/merchants", "GET"),
        ("/v1/merchants", "POST"),
        ("/v1/merchants/{id}", "PATCH"),
        ("/v1/merchants/{id}", "DELETE"),
        ("/v1/signing-keys", "GET"),
        ("/openapi.json", "GET"),
    ] {
        assert!(
            routes.contains(&(path.to_string(), method.to_string())),
            "{method} {path} not parsed: {routes:?}"
        );
    }
    let only = routed(r#".route("/a/{id}", get(m::budget).post(x::delete))"#);
    assert_eq!(only.len(), 2, "{only:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_documents_every_route_its_errors_and_its_security() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |_| {}).await;
    let doc = fetch(&node).await;
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");
    let routes = routed(V1_SOURCE);
    let ops = documented(&doc);
    let missing: Vec<_> = routes.difference(&ops).collect();
    let extra: Vec<_> = ops.difference(&routes).collect();
    assert!(missing.is_empty(), "routed but not documented: {missing:?}");
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let client = reqwest::Client::new();
    let mut statuses = BTreeSet::new();
    for (path, method) in &ops {
        let op = &doc["paths"][path][method.to_lowercase()];
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(
            secured,
            path != "/v1/signing-keys" && path != "/openapi.json",
            "{method} {path}: {op}"
        );
        for (status, response) in op["responses"].as_object().unwrap() {
            let code: u16 = status.parse().unwrap();
            if code >= 400 {
                statuses.insert(code);
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ApiError", "{method} {path}");
            }
        }
        // What the document says about the key is what the node does without one.
        let url = node.url(&path.replace('{', "x").replace('}', ""));
        let answer = client
            .request(method.parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        let refused = answer.status() == StatusCode::UNAUTHORIZED;
        assert_eq!(refused, secured, "{method} {path}: {}", answer.status());
        if secured {
            assert!(op["responses"]["401"].is_object(), "{method} {path}");
        }
    }
    for status in [400, 401, 404, 409, 413, 503] {
        assert!(statuses.contains(&status), "no route answers {status}");
    }
    let error = &doc["components"]["schemas"]["ApiError"];
    assert_eq!(error["required"], serde_json::json!(["code", "message"]));
    for name in [
        "NotificationDocument",
        "NewMerchant",
        "ReplayBody",
        "CallBody",
    ] {
        assert!(doc["components"]["schemas"][name].is_object(), "{name}");
    }
    node.stop().await;
}

/// Why the validator cannot run, when it cannot (fails under CI or PAYNOTIFY_REQUIRE_BROWSER=1).
fn missing_validator() -> Option<String> {
    let version = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--version"])
        .output();
    if version.as_ref().is_ok_and(|o| o.status.success()) {
        return None;
    }
    let missing = "python3 -m openapi_spec_validator is missing; scripts/test installs it \
                   (pip install openapi-spec-validator)";
    let required = std::env::var("PAYNOTIFY_REQUIRE_BROWSER").as_deref() == Ok("1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty());
    assert!(
        !required,
        "{missing} (required with CI or PAYNOTIFY_REQUIRE_BROWSER=1)"
    );
    let why = format!("openapi validation test SKIPPED: {missing}");
    eprintln!("{why}");
    Some(why)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_is_valid_openapi_3_1_by_openapi_spec_validator() {
    if missing_validator().is_some() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |_| {}).await;
    let doc = fetch(&node).await;
    node.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-spec-validator: {text}");
    assert!(text.contains("OK"), "{text}");
}
