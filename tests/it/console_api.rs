//! The console's JSON routes over HTTP with a signed-in session: search pages through every
//! notification once, newest first, with each filter; the overview counts, charts and lists
//! the nodes; the dead group by merchant and error and replay by merchant; merchant actions.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A signed-in console session over plain HTTP.
struct Console {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Console {
    async fn sign_in(node: &Node) -> Console {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let base = node.url("").trim_end_matches('/').to_string();
        let r = http
            .post(format!("{base}/console/login"))
            .form(&[("api_key", API_KEY)])
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let mut c = Console {
            http,
            base,
            cookie,
            csrf: String::new(),
        };
        c.csrf = c.get("/session").await["csrf"]
            .as_str()
            .unwrap()
            .to_string();
        c
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/console/api{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}/console/api{path}", self.base))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

async fn enqueue(node: &Node, doc: Value) {
    let _: Value = node
        .api()
        .post("/v1/notifications", doc, StatusCode::CREATED)
        .await;
}

/// Every page of a search, in order.
async fn all_pages(c: &Console, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/search?limit={limit}&{query}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", urlencode(a)));
        }
        let page = c.get(&path).await;
        out.extend(page["hits"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_overview_groups_and_merchant_actions_over_the_console_api() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |c| c.partitions = Some(3)).await;
    for m in ["m1", "m2"] {
        let _: Value = node
            .api()
            .post(
                "/v1/merchants",
                json!({"id": m, "allowed_urls": [sink.url("/")]}),
                StatusCode::CREATED,
            )
            .await;
    }
    // 60 delivered (30 of m1), 70 dead (20 of m2); a few carry a needle in their body.
    for i in 0..130 {
        let mut doc = json!({"id": format!("n-{i:03}"), "body": {"i": i}, "schedule": [0]});
        doc["url"] = json!(sink.url(if i < 60 { "/ok" } else { "/status/500" }));
        if i < 30 {
            doc["merchant"] = json!("m1");
        } else if i >= 110 {
            doc["merchant"] = json!("m2");
        }
        if i % 40 == 7 {
            doc["body"] = json!({"note": format!("needle-{i}")});
        }
        enqueue(&node, doc).await;
    }
    wait_until(Duration::from_secs(30), || async {
        let s: Value = node.api().get("/v1/stats", StatusCode::OK).await;
        s["delivered"] == 60 && s["dead"] == 70
    })
    .await;
    let c = Console::sign_in(&node).await;

    // Every notification once, newest first, in pages of 17.
    let hits = all_pages(&c, "state=any", 17).await;
    let ids: HashSet<&str> = hits.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!((hits.len(), ids.len()), (130, 130));
    let times: Vec<i64> = hits.iter().map(|h| h["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first");
    // Each filter.
    let m1 = all_pages(&c, "merchant=m1", 7).await;
    assert_eq!(m1.len(), 30);
    assert!(m1
        .iter()
        .all(|h| h["merchant"] == "m1" && h["state"] == "delivered"));
    assert_eq!(all_pages(&c, "state=dead&merchant=m2", 50).await.len(), 20);
    assert_eq!(
        all_pages(&c, "state=dead&reason=http%20500", 50)
            .await
            .len(),
        70
    );
    let needles = all_pages(&c, "q=NEEDLE", 50).await;
    let mut needle_ids: Vec<&str> = needles.iter().map(|h| h["id"].as_str().unwrap()).collect();
    needle_ids.sort();
    // n-007 and n-047 were delivered: compacted, their bodies are not kept (ids and URLs are).
    assert_eq!(needle_ids, ["n-087", "n-127"]);
    assert_eq!(all_pages(&c, "q=n-04", 50).await.len(), 10);
    assert_eq!(all_pages(&c, "to=1", 50).await.len(), 0);
    // An exact id comes back whole.
    let exact = c.get("/search?q=n-042").await;
    assert_eq!(exact["exact"]["id"], "n-042");
    assert_eq!(exact["exact"]["attempts_made"], 1);
    assert_eq!(exact["exact"]["compacted"], true);

    // The overview: counts, the chart of this hour's attempts, this node alive.
    let o = c.get("/overview?range=hour").await;
    assert_eq!(o["stats"]["dead"], 70);
    let chart = o["chart"].as_array().unwrap();
    assert_eq!(chart.len(), 60);
    let sum = |k: &str| chart.iter().map(|m| m[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!((sum("delivered"), sum("dead")), (60, 70));
    assert_eq!(
        c.get("/overview?range=day").await["chart"]
            .as_array()
            .unwrap()
            .len(),
        1440
    );
    let nodes = o["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{o}");
    assert_eq!(nodes[0]["roles"], "api,worker,gateway");

    // The dead, grouped; then all of m2's replayed.
    let groups = c.get("/dead/groups").await;
    let counts: Vec<(Value, i64)> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["merchant"].clone(), g["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(counts, [(Value::Null, 50), (json!("m2"), 20)], "{groups}");
    assert_eq!(groups["groups"][0]["error"], "HTTP 500");
    let (status, r) = c
        .send(
            reqwest::Method::POST,
            "/dead/replay-merchant",
            json!({"merchant": "m2"}),
        )
        .await;
    assert_eq!(
        (status, r["replayed"].clone(), r["complete"].clone()),
        (200, json!(20), json!(true))
    );

    // Merchant actions: disable, enable, a test notification signed and delivered.
    let (status, m) = c
        .send(
            reqwest::Method::PATCH,
            "/v1/merchants/m1",
            json!({"disabled": true}),
        )
        .await;
    assert_eq!((status, m["disabled"].clone()), (200, json!(true)), "{m}");
    let (status, _) = c
        .send(
            reqwest::Method::PATCH,
            "/v1/merchants/m1",
            json!({"disabled": false}),
        )
        .await;
    assert_eq!(status, 200);
    // Health is flushed once a second per node.
    wait_until(Duration::from_secs(10), || async {
        let list = c.get("/merchants").await;
        list["merchants"][0]["id"] == "m1"
            && list["merchants"][0]["health"]["last_1h"]["delivered"] == 30
    })
    .await;
    let (status, t) = c
        .send(
            reqwest::Method::POST,
            "/merchants/m1/test",
            json!({"url": sink.url("/ok")}),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("console-test-"), "{id}");
    wait_until(Duration::from_secs(20), || async {
        node.api()
            .get_any(&format!("/v1/notifications/{id}"))
            .await
            .1["state"]
            == "delivered"
    })
    .await;
    let got = sink.received();
    let test = got.iter().find(|r| {
        r.headers
            .get("webhook-id")
            .is_some_and(|v| v == id.as_str())
    });
    assert!(test.is_some(), "the sink never got {id}");
    node.stop().await;
}
