//! One HTTP attempt at a merchant's notify URL, and what its result means.
//!
//! Invariant: the address that is checked against the private-range guard is the address that
//! is connected to: the guard lives inside the DNS resolver the HTTP client uses, and IP-literal
//! URLs (which skip the resolver) are checked before the request. Redirects are never followed
//! and at most [`MAX_RESPONSE_BYTES`] of a response are read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::delivery::schema::Spec;
use crate::delivery::signing::Signer;

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

/// DNS resolver that drops non-public addresses unless private targets are allowed.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allow_private {
                return Ok(Box::new(all.into_iter()) as Addrs);
            }
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                if let Some(first) = all.first() {
                    return Err(Box::new(PrivateTarget {
                        host,
                        addr: first.ip(),
                    }) as _);
                }
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
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
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Sends attempts. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    signer: Arc<Signer>,
    allow_private: bool,
}

impl Deliverer {
    /// A pooled client; `signer` adds Standard Webhooks headers to every attempt.
    pub fn new(
        signer: Option<Signer>,
        allow_private: bool,
        idle_per_host: usize,
    ) -> Result<Self, DeliverError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // An HTTP(S)_PROXY in the environment would make the guard check the proxy's
            // address instead of the merchant's: never use one.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .user_agent(concat!("paynotify/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            signer: Arc::new(signer.unwrap_or_default()),
            allow_private,
        })
    }

    /// Makes one attempt at `url` (the parsed `spec.url`), signed with `merchant`'s secrets
    /// when it has a merchant (else the node's). Never fails: every problem is an
    /// [`AttemptResult`] with a verdict.
    pub async fn attempt(
        &self,
        id: &str,
        spec: &Spec,
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
        let headers = self.headers(id, spec, merchant);
        let request = self
            .client
            .post(url)
            .headers(headers)
            .timeout(Duration::from_millis(spec.timeout_ms))
            .body(spec.body.clone());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(private) = find_private(&e) {
                    let reason = private.to_string();
                    return done(None, Some(reason.clone()), None, Verdict::Dead(reason));
                }
                return done(
                    None,
                    Some(describe(&e)),
                    None,
                    Verdict::Retry {
                        retry_after_ms: None,
                    },
                );
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let (body, read_error) = read_capped(response).await;
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

    fn headers(&self, id: &str, spec: &Spec, merchant: Option<&[Vec<u8>]>) -> HeaderMap {
        let mut headers = HeaderMap::new();
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
        let signed = self
            .signer
            .headers(id, timestamp, spec.body.as_bytes(), merchant);
        if let Some(signed) = signed {
            for (name, value) in signed {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
        }
        headers
    }
}

fn find_private(e: &reqwest::Error) -> Option<&PrivateTarget> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(p) = err.downcast_ref::<PrivateTarget>() {
            return Some(p);
        }
        source = err.source();
    }
    None
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_connect() {
        format!("connect failed: {text}")
    } else {
        text
    }
}

async fn read_capped(mut response: reqwest::Response) -> (Vec<u8>, Option<String>) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_RESPONSE_BYTES {
                    return (body, None);
                }
            }
            Ok(None) => return (body, None),
            Err(e) => {
                return (
                    body,
                    Some(format!("reading the response: {}", describe(&e))),
                )
            }
        }
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
