//! The HTTP/1.1 client attempts go out on: hyper-util's pooled client over a connector whose
//! DNS resolver is the private-range guard, with rustls (ring, the webpki roots) for https.
//!
//! Invariant: every connection this client opens goes to an address the guard let through.
//! Host names are resolved only by [`GuardedResolver`], at connect time, and the addresses it
//! returns are the ones connected to (no second lookup, so no DNS-rebinding gap); IP literals,
//! which the connector uses without resolving, are refused by the caller before the request
//! (`Deliverer::literal_refusal`). No proxy is ever used, redirects are never followed (the
//! client has no redirect layer), and a pooled connection is only reused for the same scheme
//! and authority.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{is_public, PrivateTarget, MAX_RESPONSE_BYTES};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client: http and https, HTTP/1.1 only.
pub(super) type HttpClient = Client<ConnectTimeout, Full<Bytes>>;

/// How long a new connection (TCP, then the TLS handshake) may take, whatever the attempt's
/// own timeout; the attempt's deadline still bounds it from above.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the client; `roots` are the CAs https servers are checked against (the webpki roots
/// in production).
pub(super) fn build(
    allow_private: bool,
    idle_per_host: usize,
    roots: rustls::RootCertStore,
) -> Result<HttpClient, rustls::Error> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
    // The https connector below hands https URIs to this one for the TCP part.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // The TCP keepalive and user timeout settings the client had before (reqwest's defaults),
    // so a merchant that vanishes from a pooled connection is noticed.
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    #[cfg(target_os = "linux")]
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    let https = HttpsConnector::from((http, Arc::new(tls_config(roots)?)));
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(idle_per_host)
        .build(ConnectTimeout(https)))
}

/// TLS 1.2 and 1.3 with ring, certificates checked against `roots`, SNI on, ALPN `http/1.1`.
fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The CAs of the webpki roots (Mozilla's list), as `reqwest`'s `rustls-tls` used.
pub(super) fn webpki_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// The https-or-http connector with [`CONNECT_TIMEOUT`] over the whole of a new connection.
#[derive(Clone)]
pub(super) struct ConnectTimeout(HttpsConnector<HttpConnector<GuardedResolver>>);

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl tower_service::Service<http::Uri> for ConnectTimeout {
    type Response = <HttpsConnector<HttpConnector<GuardedResolver>> as tower_service::Service<
        http::Uri,
    >>::Response;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )) as BoxError),
            }
        })
    }
}

/// DNS resolver that drops non-public addresses unless private targets are allowed; a name
/// with only non-public addresses fails with [`PrivateTarget`].
#[derive(Clone)]
pub(super) struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            if allow_private {
                return Ok(all.into_iter());
            }
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                if let Some(first) = all.first() {
                    return Err(Box::new(PrivateTarget {
                        host: host.to_string(),
                        addr: first.ip(),
                    }) as BoxError);
                }
            }
            Ok(public.into_iter())
        })
    }
}

/// The guard's refusal, if that is why the request failed.
pub(super) fn find_private<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a PrivateTarget> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(p) = err.downcast_ref::<PrivateTarget>() {
            return Some(p);
        }
        source = err.source();
    }
    None
}

/// Whether a timeout (of the OS, or of [`CONNECT_TIMEOUT`]) is among the causes.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// `e` and its causes, `: `-joined, after `head`.
fn chain(mut text: String, e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A failed request as the attempt record says it (the words the reqwest-based client used:
/// `timed out`, or `connect failed: error sending request for url (…): client error
/// (Connect): …` with every cause).
pub(super) fn describe(e: &hyper_util::client::legacy::Error, url: &http::Uri) -> String {
    if is_timeout(e) {
        return "timed out".into();
    }
    let text = chain(format!("error sending request for url ({url})"), e);
    if e.is_connect() {
        format!("connect failed: {text}")
    } else {
        text
    }
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of `body`, until `deadline`; a read error (or the
/// deadline) ends the read with what was read so far and the error's description.
pub(super) async fn read_capped<B>(
    body: &mut B,
    deadline: Pin<&mut tokio::time::Sleep>,
) -> (Vec<u8>, Option<String>)
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut deadline = deadline;
    let mut read = Vec::new();
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = &mut deadline => return (read, Some("reading the response: timed out".into())),
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                let room = MAX_RESPONSE_BYTES - read.len();
                read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if read.len() >= MAX_RESPONSE_BYTES {
                    return (read, None);
                }
            }
            None => return (read, None),
            Some(Err(e)) => {
                let text = if is_timeout(&e) {
                    "timed out".to_string()
                } else {
                    chain("error decoding response body".into(), &e)
                };
                return (read, Some(format!("reading the response: {text}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The client on the wire, against a raw TCP (or TLS) server that records what arrives.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::{AttemptResult, Deliverer, Verdict, MAX_RESPONSE_BYTES};
    use crate::delivery::schema::Spec;

    /// Every request's head (request line and headers, as sent) and body.
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A server on `listener` that answers each request with `answer` (keep-alive), and counts
    /// the connections it accepted.
    struct Server {
        port: u16,
        seen: Seen,
        connections: Arc<AtomicUsize>,
    }

    async fn server(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        answer: &'static [u8],
    ) -> Server {
        let port = listener.local_addr().unwrap().port();
        let seen = Seen::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (seen, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                answer_all(stream, answer, seen).await;
                            }
                        }
                        None => answer_all(tcp, answer, seen).await,
                    }
                });
            }
        });
        Server {
            port,
            seen,
            connections,
        }
    }

    async fn answer_all<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, answer: &[u8], seen: Seen) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[head_end..head_end + length].to_vec();
            buf.drain(..head_end + length);
            seen.lock().unwrap().push((head, body));
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    }

    fn spec(doc: serde_json::Value) -> Spec {
        crate::delivery::schema::parse(doc.to_string().as_bytes(), 0, || "n1".into())
            .unwrap()
            .spec
    }

    async fn attempt(d: &Deliverer, doc: serde_json::Value) -> AttemptResult {
        let spec = spec(doc);
        let url = url::Url::parse(&spec.url).unwrap();
        d.attempt("n1", &spec, spec.body.clone(), url, None).await
    }

    fn plain(allow_private: bool) -> Deliverer {
        Deliverer::new(None, allow_private, 8).unwrap()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn posts_with_the_headers_and_body_and_keeps_the_connection() {
        let srv = server(TcpListener::bind("127.0.0.1:0").await.unwrap(), None, OK).await;
        let signer = crate::delivery::signing::Signer::new(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            &[],
        )
        .unwrap();
        let d = Deliverer::new(signer, true, 8).unwrap();
        let url = format!("http://localhost:{}/notify/here?a=1&b=%20", srv.port);
        for _ in 0..3 {
            let doc = serde_json::json!({"url": url, "body": {"paid": true},
                "headers": {"X-Shop": "s1"}});
            let r = attempt(&d, doc).await;
            assert_eq!(r.verdict, Verdict::Delivered, "{r:?}");
            assert_eq!(r.status, Some(200));
            assert_eq!(r.excerpt.as_deref(), Some("ok"));
        }
        assert_eq!(srv.connections.load(Ordering::SeqCst), 1, "kept alive");
        let seen = srv.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        let (head, body) = &seen[0];
        assert!(
            head.starts_with("POST /notify/here?a=1&b=%20 HTTP/1.1\r\n"),
            "{head}"
        );
        let lower = head.to_ascii_lowercase();
        for line in [
            "content-type: application/json\r\n".to_string(),
            "x-shop: s1\r\n".into(),
            "webhook-id: n1\r\n".into(),
            concat!("user-agent: paynotify/", env!("CARGO_PKG_VERSION"), "\r\n").into(),
            "accept: */*\r\n".into(),
            format!("host: localhost:{}\r\n", srv.port),
            "content-length: 13\r\n".into(),
        ] {
            assert!(lower.contains(&line), "{line} missing in {head}");
        }
        assert!(lower.contains("webhook-signature: v1,"), "{head}");
        assert!(lower.contains("webhook-timestamp: "), "{head}");
        assert_eq!(body, br#"{"paid":true}"#);
    }

    #[tokio::test]
    async fn ipv6_literals_are_reached_when_allowed_and_refused_otherwise() {
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            return; // no IPv6 loopback here
        };
        let srv = server(listener, None, OK).await;
        let url = format!("http://[::1]:{}/v6", srv.port);
        let r = attempt(&plain(true), serde_json::json!({"url": url})).await;
        assert_eq!(r.verdict, Verdict::Delivered, "{r:?}");
        let head = srv.seen.lock().unwrap()[0].0.clone();
        assert!(
            head.contains(&format!("host: [::1]:{}\r\n", srv.port)),
            "{head}"
        );
        let r = attempt(&plain(false), serde_json::json!({"url": url})).await;
        assert!(matches!(&r.verdict, Verdict::Dead(m) if m.contains("private target refused")));
        assert_eq!(srv.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_are_refused_at_connect() {
        let srv = server(TcpListener::bind("127.0.0.1:0").await.unwrap(), None, OK).await;
        let url = format!("http://localhost:{}/", srv.port);
        let r = attempt(&plain(false), serde_json::json!({"url": url})).await;
        let Verdict::Dead(reason) = &r.verdict else {
            panic!("{r:?}")
        };
        assert!(
            reason.starts_with("private target refused: localhost resolves only to non-public"),
            "{reason}"
        );
        assert_eq!(r.error.as_deref(), Some(reason.as_str()));
        assert_eq!(srv.connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn refused_connections_and_timeouts_are_retried_with_their_reason() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = attempt(
            &plain(true),
            serde_json::json!({"url": format!("http://127.0.0.1:{port}/x")}),
        )
        .await;
        assert_eq!(
            r.verdict,
            Verdict::Retry {
                retry_after_ms: None
            }
        );
        let error = r.error.unwrap();
        assert!(
            error.starts_with(&format!(
                "connect failed: error sending request for url (http://127.0.0.1:{port}/x): \
                 client error (Connect): tcp connect error: "
            )),
            "{error}"
        );
        // No answer at all: the attempt's timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/", silent.local_addr().unwrap().port());
        let r = attempt(
            &plain(true),
            serde_json::json!({"url": url, "timeout_ms": 150}),
        )
        .await;
        assert_eq!(r.error.as_deref(), Some("timed out"));
        assert!((150..1500).contains(&r.latency_ms), "{r:?}");
        // Headers, then a body that stops: the same timeout covers the read.
        const STALLS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
        let srv = server(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            None,
            STALLS,
        )
        .await;
        let url = format!("http://127.0.0.1:{}/", srv.port);
        let r = attempt(
            &plain(true),
            serde_json::json!({"url": url, "timeout_ms": 150}),
        )
        .await;
        assert_eq!(r.status, Some(200));
        assert_eq!(r.error.as_deref(), Some("reading the response: timed out"));
        assert_eq!(r.excerpt.as_deref(), Some("abc"));
        assert!((150..1500).contains(&r.latency_ms), "{r:?}");
    }

    #[tokio::test]
    async fn retry_after_is_read_and_large_bodies_are_capped() {
        const LATER: &[u8] =
            b"HTTP/1.1 503 Busy\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\nbusy";
        let srv = server(TcpListener::bind("127.0.0.1:0").await.unwrap(), None, LATER).await;
        let url = format!("http://127.0.0.1:{}/", srv.port);
        let r = attempt(&plain(true), serde_json::json!({"url": url})).await;
        assert_eq!(
            r.verdict,
            Verdict::Retry {
                retry_after_ms: Some(7000)
            }
        );
        assert_eq!(r.error.as_deref(), Some("HTTP 503"));
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut v = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n".to_vec();
            let head = v.len();
            v.extend_from_slice(b"success");
            v.resize(head + MAX_RESPONSE_BYTES, b' ');
            v.resize(head + 1_000_000, b'x');
            v
        });
        let srv = server(TcpListener::bind("127.0.0.1:0").await.unwrap(), None, big).await;
        let url = format!("http://127.0.0.1:{}/", srv.port);
        let r = attempt(
            &plain(true),
            serde_json::json!({"url": url, "success": {"body": "success"}}),
        )
        .await;
        // Only the first MAX_RESPONSE_BYTES are read ("success" and spaces; the x's after
        // them would fail the success rule).
        assert_eq!(r.verdict, Verdict::Delivered, "{r:?}");
        assert_eq!(
            r.excerpt.map(|e| e.len()),
            Some(super::super::EXCERPT_BYTES)
        );
    }

    /// A CA, and a TLS acceptor with a certificate it signed for localhost and 127.0.0.1.
    fn pki() -> (CertificateDer<'static>, tokio_rustls::TlsAcceptor) {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        (
            ca.der().clone(),
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        )
    }

    #[tokio::test]
    async fn https_is_verified_against_the_roots_and_pooled() {
        let (ca, acceptor) = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let srv = server(listener, Some(acceptor), OK).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let trusting = Deliverer::with_roots(None, true, 8, roots).unwrap();
        for host in ["localhost", "127.0.0.1", "localhost"] {
            let url = format!("https://{host}:{}/tls?x=y", srv.port);
            let r = attempt(&trusting, serde_json::json!({"url": url, "body": "paid"})).await;
            assert_eq!(r.verdict, Verdict::Delivered, "{host}: {r:?}");
        }
        // One connection per authority: localhost:port twice, 127.0.0.1:port once.
        assert_eq!(srv.connections.load(Ordering::SeqCst), 2);
        let head = srv.seen.lock().unwrap()[0].0.clone();
        assert!(head.starts_with("POST /tls?x=y HTTP/1.1\r\n"), "{head}");
        // The production roots do not know this CA: a TLS error, retried.
        let url = format!("https://localhost:{}/tls", srv.port);
        let r = attempt(&plain(true), serde_json::json!({"url": url})).await;
        assert_eq!(
            r.verdict,
            Verdict::Retry {
                retry_after_ms: None
            }
        );
        let error = r.error.unwrap();
        assert!(error.starts_with("connect failed: "), "{error}");
        assert!(
            error.contains("invalid peer certificate: UnknownIssuer"),
            "{error}"
        );
        // Plain HTTP to the TLS port: not a response.
        let url = format!("http://localhost:{}/tls", srv.port);
        let r = attempt(
            &trusting,
            serde_json::json!({"url": url, "timeout_ms": 2000}),
        )
        .await;
        assert!(r.status.is_none() && r.error.is_some(), "{r:?}");
    }
}
