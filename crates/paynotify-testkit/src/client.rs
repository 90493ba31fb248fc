//! The API as a test calls it: one authenticated HTTP client per test, each call stating the
//! status it expects.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// An authenticated client of one node's API (make one per test; [`at`](Self::at) shares it
/// with another node). [`get`](Self::get) and [`post`](Self::post) panic, with the response
/// body, unless the status is the one expected, and decode the body as `T` (an empty body as
/// JSON `null`); [`get_any`](Self::get_any) and [`post_any`](Self::post_any) return whatever
/// status came, for tests about statuses.
#[derive(Clone)]
pub struct TestClient {
    http: reqwest::Client,
    base: String,
}

impl TestClient {
    /// A client of the node at `addr`, sending `Authorization: Bearer` [`API_KEY`](crate::API_KEY).
    pub fn new(addr: SocketAddr) -> TestClient {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", crate::API_KEY).parse().unwrap(),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        TestClient {
            http,
            base: format!("http://{addr}"),
        }
    }

    /// The same client (same connections, same key) pointed at the node at `addr`.
    pub fn at(&self, addr: SocketAddr) -> TestClient {
        TestClient {
            http: self.http.clone(),
            base: format!("http://{addr}"),
        }
    }

    /// The full URL of `path` on this node.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The authenticated `reqwest` client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// GET `path`; panics unless the status is `expect`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, expect: StatusCode) -> T {
        self.expect(Method::GET, path, None, expect).await
    }

    /// POST `body` as JSON to `path`; panics unless the status is `expect`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: impl Serialize,
        expect: StatusCode,
    ) -> T {
        let body = serde_json::to_value(body).unwrap();
        self.expect(Method::POST, path, Some(body), expect).await
    }

    /// PATCH `body` as JSON to `path`; panics unless the status is `expect`.
    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: impl Serialize,
        expect: StatusCode,
    ) -> T {
        let body = serde_json::to_value(body).unwrap();
        self.expect(Method::PATCH, path, Some(body), expect).await
    }

    /// DELETE `path`; panics unless the status is `expect`.
    pub async fn delete(&self, path: &str, expect: StatusCode) {
        self.expect::<Value>(Method::DELETE, path, None, expect)
            .await;
    }

    /// POST without a body to `path`; panics unless the status is `expect`.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str, expect: StatusCode) -> T {
        self.expect(Method::POST, path, None, expect).await
    }

    /// GET `path`: the status and the body (JSON; `null` if empty; a JSON string if not JSON).
    pub async fn get_any(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.send(Method::GET, path, None).await;
        (status.as_u16(), lenient_json(&text))
    }

    /// POST `body` as JSON to `path`: the status and the body, as for [`get_any`](Self::get_any).
    pub async fn post_any(&self, path: &str, body: impl Serialize) -> (u16, Value) {
        let body = serde_json::to_value(body).unwrap();
        let (status, text) = self.send(Method::POST, path, Some(body)).await;
        (status.as_u16(), lenient_json(&text))
    }

    /// `GET /v1/notifications/{id}` (200).
    pub async fn notification(&self, id: &str) -> Value {
        self.get(&format!("/v1/notifications/{id}"), StatusCode::OK)
            .await
    }

    /// Waits (polling) until notification `id` is in `state` and returns its record (a 404 is
    /// "not yet"); panics with the last answer after `timeout`.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let last_ref = &last;
        let found = crate::poll_until(timeout, || async move {
            // 404 until it is taken in (an intake entry, an enqueue on another node): not yet.
            let (status, v) = self.get_any(&format!("/v1/notifications/{id}")).await;
            if status == 200 && v["state"] == state {
                Some(v)
            } else {
                *last_ref.lock().unwrap() = v;
                None
            }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{id} not {state} within {timeout:?}: {:#}",
                last.lock().unwrap()
            )
        })
    }

    async fn expect<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expect: StatusCode,
    ) -> T {
        let (status, text) = self.send(method.clone(), path, body).await;
        assert_eq!(status, expect, "{method} {path}: {text}");
        let json = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(json).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: the {status} body is not a {}: {e}: {text}",
                std::any::type_name::<T>()
            )
        })
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status();
        (status, r.text().await.unwrap())
    }
}

/// `text` as JSON: `null` if empty, a JSON string if it is not JSON.
fn lenient_json(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
    }
}
