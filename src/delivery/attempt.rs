//! One HTTP attempt at a merchant's notify URL, and what its result means.
//!
//! Invariant: the address that is checked against the private-range guard is the address that
//! is connected to: the guard lives inside the DNS resolver the HTTP client uses (`client.rs`:
//! hyper-util's pooled HTTP/1.1 client, rustls for https), and IP-literal URLs (which skip the
//! resolver) are checked before the request. Redirects are never followed, at most
//! [`MAX_RESPONSE_BYTES`] of a response are read, and the notification's `timeout_ms` bounds
//! the whole attempt: connecting, sending and reading the response.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;

use crate::delivery::schema::Spec;
use crate::delivery::signing::Signer;

mod client;

/// Most response bytes read from a merchant.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Response bytes kept in the attempt record.
pub const EXCERPT_BYTES: usize = 512;
/// Upper bound on a `Retry-After` we honour.
pub const MAX_RETRY_AFTER_MS: u64 = 3600 * 1000;

/// Whether an address is on the public internet (not loopback, private, link-local, CGNAT,
/// unique-local, multicast, documentation or otherwise reserved), including IPv4 embedded in
/// IPv6 (mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let seg = ip.segments();
    // NAT64 64:ff9b::/96 and 6to4 2002::/16 carry an IPv4 address.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ));
    }
    if seg[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site local fec0::/10
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo 2001::/32 (tunnels to an IPv4 host)
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (seg[0] == 0x100 && seg[1..4] == [0, 0, 0]) // discard-only 100::/64
        || seg[0..4] == [0, 0, 0, 0] && seg[4] == 0xffff && seg[5] == 0 // IPv4-translated ::ffff:0:0:0/96
        || seg[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible and reserved ::/96
}

/// The private-target refusal, raised inside DNS resolution.
#[derive(Debug, thiserror::Error)]
#[error("private target refused: {host} resolves only to non-public addresses ({addr}); set --allow-private-targets to permit")]
pub struct PrivateTarget {
    host: String,
    addr: IpAddr,
}

/// What an attempt means for the notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The merchant has it.
    Delivered,
    /// Try again on the schedule; `retry_after_ms` is the merchant's `Retry-After`, if any.
    Retry { retry_after_ms: Option<u64> },
    /// Never try again, for this reason.
    Dead(String),
}

/// The observable result of one attempt (stored in the attempt log).
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub started_ms: i64,
    pub latency_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub excerpt: Option<String>,
    pub verdict: Verdict,
}

/// Errors building the HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("building the HTTP client's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The `User-Agent` of every attempt.
const USER_AGENT_VALUE: &str = concat!("paynotify/", env!("CARGO_PKG_VERSION"));

/// Sends attempts. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    client: client::HttpClient,
    signer: Arc<Signer>,
    allow_private: bool,
}

impl Deliverer {
    /// A pooled client (at most `idle_per_host` idle connections per destination, each kept
    /// 60 s); `signer` adds Standard Webhooks headers to every attempt.
    pub fn new(
        signer: Option<Signer>,
        allow_private: bool,
        idle_per_host: usize,
    ) -> Result<Self, DeliverError> {
        Self::with_roots(signer, allow_private, idle_per_host, client::webpki_roots())
    }

    /// [`Deliverer::new`] trusting `roots` for https instead of the webpki roots (tests).
    pub fn with_roots(
        signer: Option<Signer>,
        allow_private: bool,
        idle_per_host: usize,
        roots: rustls::RootCertStore,
    ) -> Result<Self, DeliverError> {
        Ok(Self {
            client: client::build(allow_private, idle_per_host, roots)?,
            signer: Arc::new(signer.unwrap_or_default()),
            allow_private,
        })
    }

    /// Makes one attempt at `url` (the parsed `spec.url`) with `body` (`spec.body`, moved in so
    /// it is sent without a copy), signed with `merchant`'s secrets when it has a merchant
    /// (else the node's). `spec.timeout_ms` bounds all of it: connecting, sending, and reading
    /// the response. Never fails: every problem is an [`AttemptResult`] with a verdict.
    pub async fn attempt(
        &self,
        id: &str,
        spec: &Spec,
        body: String,
        url: url::Url,
        merchant: Option<&[Vec<u8>]>,
    ) -> AttemptResult {
        let started_ms = crate::util::now_ms();
        let started = Instant::now();
        let done = |status, error: Option<String>, excerpt, verdict| AttemptResult {
            started_ms,
            latency_ms: started.elapsed().as_millis() as u64,
            status,
            error,
            excerpt,
            verdict,
        };
        if let Some(reason) = self.literal_refusal(&url) {
            return done(None, Some(reason.clone()), None, Verdict::Dead(reason));
        }
        let retry = Verdict::Retry {
            retry_after_ms: None,
        };
        // The serialization of a parsed `Url` is ASCII and percent-encoded, as a `Uri` wants
        // it; the `Uri` takes the string's buffer over rather than copying it.
        let uri = match http::Uri::from_maybe_shared(Bytes::from(String::from(url))) {
            Ok(uri) => uri,
            Err(e) => {
                return done(
                    None,
                    Some(format!("invalid URL for a request: {e}")),
                    None,
                    retry,
                )
            }
        };
        let headers = self.headers(id, spec, body.as_bytes(), merchant);
        let mut request = http::Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers;
        let deadline = tokio::time::sleep(Duration::from_millis(spec.timeout_ms));
        tokio::pin!(deadline);
        let response = tokio::select! {
            biased;
            response = self.client.request(request) => response,
            () = &mut deadline => return done(None, Some("timed out".into()), None, retry),
        };
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                if let Some(private) = client::find_private(&e) {
                    let reason = private.to_string();
                    return done(None, Some(reason.clone()), None, Verdict::Dead(reason));
                }
                return done(None, Some(client::describe(&e, &uri)), None, retry);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let (body, read_error) = client::read_capped(response.body_mut(), deadline).await;
        let excerpt = excerpt(&body);
        let verdict = classify(status, &body, spec.success_body.as_deref(), retry_after);
        let error = read_error.or(match &verdict {
            Verdict::Delivered => None,
            Verdict::Dead(reason) => Some(reason.clone()),
            Verdict::Retry { .. } if (200..300).contains(&status) => {
                Some("response body did not match the success rule".into())
            }
            Verdict::Retry { .. } => Some(format!("HTTP {status}")),
        });
        done(Some(status), error, excerpt, verdict)
    }

    fn literal_refusal(&self, url: &url::Url) -> Option<String> {
        if self.allow_private {
            return None;
        }
        let ip = match url.host()? {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(_) => return None,
        };
        (!is_public(ip)).then(|| {
            format!("private target refused: {ip} is not a public address; set --allow-private-targets to permit")
        })
    }

    /// The request headers: the content type, the notification's own headers (which may
    /// replace it), the signature headers, then `user-agent` and `accept: */*` where not set. Static names and values are not copied; computed values hand
    /// their buffer over.
    fn headers(
        &self,
        id: &str,
        spec: &Spec,
        body: &[u8],
        merchant: Option<&[Vec<u8>]>,
    ) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(6 + spec.headers.len());
        let content_type = if spec.json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        for (name, value) in &spec.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        let timestamp = crate::util::now_ms() / 1000;
        if let Some(signed) = self.signer.headers(id, timestamp, body, merchant) {
            for (name, value) in signed {
                // The names are the three fixed `webhook-*` names of signing.rs.
                if let Ok(v) = HeaderValue::try_from(value) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            }
        }
        // Last and only where the notification's headers did not set them, as before.
        headers
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(USER_AGENT_VALUE));
        headers
            .entry(ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        headers
    }
}

fn excerpt(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let cut = &body[..body.len().min(EXCERPT_BYTES)];
    Some(String::from_utf8_lossy(cut).into_owned())
}

/// Parses `Retry-After` (seconds or an HTTP date) into ms, bounded by [`MAX_RETRY_AFTER_MS`].
pub fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    let ms = if let Ok(secs) = value.parse::<u64>() {
        secs.saturating_mul(1000)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    Some(ms.min(MAX_RETRY_AFTER_MS))
}

/// Decides what a response means.
pub fn classify(
    status: u16,
    body: &[u8],
    success_body: Option<&str>,
    retry_after_ms: Option<u64>,
) -> Verdict {
    match status {
        200..=299 => match success_body {
            Some(expected) if String::from_utf8_lossy(body).trim() != expected => Verdict::Retry {
                retry_after_ms: None,
            },
            _ => Verdict::Delivered,
        },
        410 => Verdict::Dead("the merchant answered 410 Gone".into()),
        429 | 503 => Verdict::Retry { retry_after_ms },
        _ => Verdict::Retry {
            retry_after_ms: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "64:ff9b:1::a00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
            "::ffff:0:7f00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn classify_follows_the_rules() {
        assert_eq!(classify(200, b"", None, None), Verdict::Delivered);
        assert_eq!(classify(204, b"", None, None), Verdict::Delivered);
        assert_eq!(
            classify(200, b" success\n", Some("success"), None),
            Verdict::Delivered
        );
        assert!(matches!(
            classify(200, b"fail", Some("success"), None),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(302, b"", None, None),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(500, b"", None, Some(5)),
            Verdict::Retry {
                retry_after_ms: None
            }
        ));
        assert_eq!(
            classify(429, b"", None, Some(5000)),
            Verdict::Retry {
                retry_after_ms: Some(5000)
            }
        );
        assert!(matches!(classify(410, b"", None, None), Verdict::Dead(_)));
    }

    #[test]
    fn retry_after_is_bounded() {
        assert_eq!(parse_retry_after("5"), Some(5000));
        assert_eq!(parse_retry_after("999999999"), Some(MAX_RETRY_AFTER_MS));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
