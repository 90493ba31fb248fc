//! The Grafana dashboard the chart ships (`helm/paynotify/dashboards/paynotify.json`): it parses,
//! every panel and target queries the `${datasource}` variable, and every metric its queries name
//! is one that a real node exposes on `/metrics`.
//!
//! What a node exposes is read from its `# TYPE` lines: a counter `x` is queried as `x_total`, a
//! histogram `x` as `x_bucket`, `x_sum` and `x_count`, a gauge `x` as `x`. prometheus-client
//! (0.24) leaves out a labelled family until its first sample, so the test first makes one
//! attempt, one ops event and one device call happen.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;

const DASHBOARD: &str = "helm/paynotify/dashboards/paynotify.json";
const DATASOURCE: &str = "${datasource}";
const ROWS: [&str; 4] = ["Delivery", "Browser push", "Devices", "Redis & health"];

fn dashboard() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, the panels of collapsed rows included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// Every query of the dashboard, with where it is: each panel target's `expr` and each query
/// variable's `query` (a string, or an object holding `query`).
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or_default();
                let at = format!("panel {title:?} target {}", t["refId"]);
                out.push((at, expr.to_string()));
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            let at = format!("variable {}", v["name"]);
            out.push((at, q.unwrap_or_default().to_string()));
        }
    }
    out
}

/// The metric names a PromQL expression uses: identifiers starting with `paynotify_`, outside
/// string literals (label values) and not template variables (`$name`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    let mut prev = ' ';
    while let Some((i, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            let mut escaped = false;
            for (_, s) in chars.by_ref() {
                if s == c && !escaped {
                    break;
                }
                escaped = s == '\\' && !escaped && c != '`';
            }
        } else if ident(c) {
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = chars.peek() {
                if !ident(n) {
                    break;
                }
                end = j + n.len_utf8();
                chars.next();
            }
            let word = &expr[i..end];
            if prev != '$' && word.starts_with("paynotify_") {
                out.insert(word.to_string());
            }
        }
        prev = c;
    }
    out
}

/// Families by name and type, from the `# TYPE` lines.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap_or_else(|| panic!("bad {l:?}"));
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// The names a family's samples carry, by its type.
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        "counter" => &["_total"],
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["", "_sum", "_count"],
        "info" => &["_info"],
        _ => &[""],
    };
    suffixes.iter().map(|s| format!("{family}{s}")).collect()
}

/// The names of the sample lines present.
fn samples(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn metric_names_skips_strings_variables_and_functions() {
    let expr = r#"sum by (pod) (rate(paynotify_a_total{x="paynotify_b", y=~'paynotify_c'}[$__rate_interval]))
        / on() paynotify_d:ratio + histogram_quantile(0.99, paynotify_e_bucket) or $paynotify_f"#;
    let want: BTreeSet<String> = [
        "paynotify_a_total",
        "paynotify_d:ratio",
        "paynotify_e_bucket",
    ]
    .map(String::from)
    .into();
    assert_eq!(metric_names(expr), want);
    assert_eq!(metric_names(r#"up{job="a\"paynotify_x"}"#), BTreeSet::new());
}

#[test]
fn the_grafana_dashboard_is_valid_and_queries_its_datasource_variable() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_i64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a `datasource` variable");
    assert_eq!(ds["type"], "datasource", "{ds}");
    assert_eq!(ds["query"], "prometheus", "{ds}");
    for name in ["namespace", "pod"] {
        let v = var(name).unwrap_or_else(|| panic!("a `{name}` variable"));
        assert_eq!(v["type"], "query", "{v}");
        assert_eq!(v["datasource"]["uid"], DATASOURCE, "{v}");
    }
    let all = panels(&d);
    let rows: Vec<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(rows, ROWS);
    let mut ids = BTreeSet::new();
    let mut bad = Vec::new();
    for p in &all {
        let title = &p["title"];
        assert!(
            ids.insert(p["id"].as_i64().expect("a panel id")),
            "id twice: {title}"
        );
        if p["type"] == "row" {
            continue;
        }
        let datasource = |v: &Value| v["type"] == "prometheus" && v["uid"] == DATASOURCE;
        if !datasource(&p["datasource"]) {
            bad.push(format!("{title}: datasource {}", p["datasource"]));
        }
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            bad.push(format!("{title}: no targets"));
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            if !t["datasource"].is_null() && !datasource(&t["datasource"]) {
                bad.push(format!("{title}: target datasource {}", t["datasource"]));
            }
            // A misspelt prefix would hide a metric from the check below.
            if metric_names(expr).is_empty() {
                bad.push(format!("{title}: no paynotify_ metric in {expr:?}"));
            }
            if !expr.contains("pod=~\"$pod\"") {
                bad.push(format!("{title}: {expr:?} ignores the pod variable"));
            }
        }
    }
    assert!(bad.is_empty(), "panels:\n{}", bad.join("\n"));
}

/// The labelled families, which a node exposes only once they have a sample.
const LABELLED: [&str; 3] = [
    "paynotify_attempts",
    "paynotify_ops_events",
    "paynotify_device_calls",
];

async fn scrape(node: &Node) -> String {
    reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_exposed_by_a_node() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |c| c.ops_events_url = Some(sink.url("/ok/ops"))).await;
    // A 410 is dead at once (attempts{outcome="dead"}, then a notification.dead ops event);
    // a call to a device nobody holds is device_calls{outcome="offline"}.
    let api = node.api();
    let gone = serde_json::json!({"id": "g1", "url": sink.url("/status/410"), "body": "g1"});
    api.post::<Value>("/v1/notifications", gone, StatusCode::CREATED)
        .await;
    let call = serde_json::json!({"method": "ping", "timeout_ms": 1000});
    let (status, body) = api.post_any("/v1/devices/nobody/call", call).await;
    assert_eq!(status, 404, "{body}");
    wait_until(std::time::Duration::from_secs(20), || async {
        let families = families(&scrape(&node).await);
        LABELLED.iter().all(|f| families.contains_key(*f))
    })
    .await;
    let text = scrape(&node).await;
    let families = families(&text);
    for family in LABELLED {
        assert_eq!(families.get(family).map(String::as_str), Some("counter"));
    }
    let exposed: BTreeSet<String> = families
        .iter()
        .flat_map(|(name, kind)| sample_names(name, kind))
        .collect();
    // The names derived from the types are the ones the samples carry.
    let underived: Vec<_> = samples(&text).difference(&exposed).cloned().collect();
    assert!(underived.is_empty(), "samples {underived:?} in:\n{text}");

    let queried = queries(&dashboard());
    assert!(queried.len() >= 20, "{} queries", queried.len());
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (at, expr) in &queried {
        for name in metric_names(expr) {
            if !exposed.contains(&name) {
                missing.entry(name).or_default().push(at.clone());
            }
        }
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(name, at)| format!("{name} (in {})", at.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not expose:\n{}\nexposed: {exposed:?}",
        list.join("\n")
    );
    node.stop().await;
}
