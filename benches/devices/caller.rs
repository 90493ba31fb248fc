//! The healthy calls' HTTP client: a fixed set of HTTP/1.1 keep-alive connections to node B
//! (hyper's connection API, one task per connection), each taking one call at a time from a
//! shared queue, as a service with a bounded client pool calls an API.
//!
//! Why not reqwest with a task per call: at 5,000 calls/s it cost this process 60–145 µs of CPU
//! per call on the two cores the nodes run on, and it opened a new connection whenever every
//! pooled one was busy, so a node that fell behind drew more connections, tasks and CPU and the
//! run collapsed instead of queueing. Here a call that finds every connection busy waits in the
//! queue, and its latency (measured by the caller from when the call was made) includes the wait.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, oneshot, Mutex};

/// One call for a connection: the request path and where its status goes.
type Job = (String, oneshot::Sender<u16>);

/// The healthy calls' client. Cheap to clone.
#[derive(Clone)]
pub struct Caller {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Caller {
    /// Opens `connections` connections to `127.0.0.1:port`; every call sends `body` with
    /// `authorization`.
    pub async fn connect(port: u16, connections: usize, authorization: &str, body: &str) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let body = Bytes::from(body.to_string());
        let authorization = http::HeaderValue::from_str(authorization).unwrap();
        for _ in 0..connections {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let (queue, body, authorization) = (queue.clone(), body.clone(), authorization.clone());
            tokio::spawn(async move {
                loop {
                    // Ready before taking a call: a connection between two exchanges (or gone)
                    // must not take a call it cannot send.
                    if send.ready().await.is_err() {
                        return;
                    }
                    let next = queue.lock().await.recv().await;
                    let Some((path, reply)) = next else { return };
                    let request = http::Request::post(path)
                        .header(http::header::HOST, "127.0.0.1")
                        .header(http::header::AUTHORIZATION, authorization.clone())
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let status = match send.send_request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.into_body().collect().await {
                                Ok(_) => status,
                                Err(_) => 0,
                            }
                        }
                        Err(_) => 0,
                    };
                    let _ = reply.send(status);
                    if status == 0 {
                        // The connection is gone: the next calls go to the others.
                        return;
                    }
                }
            });
        }
        Self { jobs }
    }

    /// POSTs to `path` on the next free connection; the HTTP status, 0 if there was none.
    pub async fn call(&self, path: String) -> u16 {
        let (reply, status) = oneshot::channel();
        if self.jobs.send((path, reply)).is_err() {
            return 0;
        }
        status.await.unwrap_or(0)
    }
}
