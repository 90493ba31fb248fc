//! Console sessions: a signed, expiring cookie made at sign-in with an API key (every right)
//! or a `--console-read-only-keys` key (look only), and the CSRF token bound to it.
//!
//! The cookie is `v1.<key fingerprint>.<expires ms>.<nonce>.<mac>`; the MAC is HMAC-SHA256
//! under a key derived from the API key that signed in, so every node verifies it with no
//! shared state, and removing the key from the configuration ends its sessions. The CSRF token
//! is another HMAC of the nonce under the same key: a page of the console learns it from
//! `GET /console/api/session` (which another origin cannot read), and every state change must
//! send it back in `X-CSRF-Token`.
//!
//! Invariant: a session is valid only while its key is configured and its expiry is ahead;
//! its rights come from the configuration at every request, never from the cookie; every
//! comparison of a MAC or a token is constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::ops::audit::fingerprint;

/// The session cookie's name.
pub const COOKIE: &str = "paynotify_console";
/// The header every state change carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a signed-in key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// An `--api-key`: everything.
    Admin,
    /// A `--console-read-only-keys` key: look only.
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// A key that can sign in, with what it derives.
struct SignInKey {
    key: String,
    fingerprint: String,
    mac_key: [u8; 32],
    role: Role,
}

/// The signed-in viewer of one request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Viewer {
    /// `key:<fingerprint>`.
    pub who: String,
    pub role: Role,
    /// The CSRF token of this session.
    pub csrf: String,
    pub expires_at: i64,
}

/// Why a cookie is not a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// No cookie at all.
    Missing,
    /// Past its expiry.
    Expired,
    /// Malformed, forged, or made with a key that is no longer configured.
    Bad,
}

/// Makes and checks sessions for one configuration.
pub struct Sessions {
    keys: Vec<SignInKey>,
    ttl_ms: i64,
    always_secure: bool,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Sessions {
    pub fn new(config: &Config) -> Self {
        Self::with_keys(
            &config.api_keys,
            &config.console_read_only_keys,
            config.console_session_ttl,
            config.console_secure_cookies,
        )
    }

    /// Sessions for these admin and read-only keys.
    pub fn with_keys(
        admin: &[String],
        read_only: &[String],
        ttl: std::time::Duration,
        always_secure: bool,
    ) -> Self {
        let entry = |key: &String, role| SignInKey {
            key: key.clone(),
            fingerprint: fingerprint(key),
            mac_key: hmac(key.as_bytes(), &[b"paynotify console session v1"]),
            role,
        };
        let mut keys: Vec<SignInKey> = admin.iter().map(|k| entry(k, Role::Admin)).collect();
        keys.extend(read_only.iter().map(|k| entry(k, Role::ReadOnly)));
        Self {
            keys,
            ttl_ms: ttl.as_millis() as i64,
            always_secure,
        }
    }

    /// The cookie value for a sign-in with `presented` at `now_ms`, or `None` when it is not
    /// a key that can sign in. Every key is compared, in constant time.
    pub fn sign_in(&self, presented: &str, now_ms: i64) -> Option<(String, Viewer)> {
        let mut found: Option<&SignInKey> = None;
        for k in &self.keys {
            if bool::from(k.key.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(k);
            }
        }
        let k = found?;
        let nonce = B64.encode(rand::random::<[u8; 16]>());
        let expires = now_ms + self.ttl_ms;
        let body = format!("v1.{}.{expires}.{nonce}", k.fingerprint);
        let mac = B64.encode(hmac(&k.mac_key, &[body.as_bytes()]));
        let viewer = Self::viewer(k, &nonce, expires);
        Some((format!("{body}.{mac}"), viewer))
    }

    fn viewer(k: &SignInKey, nonce: &str, expires_at: i64) -> Viewer {
        Viewer {
            who: format!("key:{}", k.fingerprint),
            role: k.role,
            csrf: B64.encode(hmac(&k.mac_key, &[b"csrf.", nonce.as_bytes()])),
            expires_at,
        }
    }

    /// The viewer of a cookie value at `now_ms`.
    pub fn verify(&self, cookie: Option<&str>, now_ms: i64) -> Result<Viewer, Invalid> {
        let cookie = cookie.ok_or(Invalid::Missing)?;
        let parts: Vec<&str> = cookie.split('.').collect();
        let [version, fp, expires, nonce, mac] = parts.as_slice() else {
            return Err(Invalid::Bad);
        };
        if *version != "v1" {
            return Err(Invalid::Bad);
        }
        let expires: i64 = expires.parse().map_err(|_| Invalid::Bad)?;
        let given = B64.decode(mac).map_err(|_| Invalid::Bad)?;
        let body = format!("v1.{fp}.{expires}.{nonce}");
        let mut found: Option<&SignInKey> = None;
        for k in self.keys.iter().filter(|k| k.fingerprint == *fp) {
            let want = hmac(&k.mac_key, &[body.as_bytes()]);
            if bool::from(want.as_slice().ct_eq(&given)) {
                found = Some(k);
            }
        }
        let k = found.ok_or(Invalid::Bad)?;
        if expires <= now_ms {
            return Err(Invalid::Expired);
        }
        Ok(Self::viewer(k, nonce, expires))
    }

    /// The `Set-Cookie` value for `cookie`; `tls` when the request came over TLS.
    pub fn set_cookie(&self, cookie: &str, tls: bool) -> String {
        let secure = if self.always_secure || tls {
            "; Secure"
        } else {
            ""
        };
        format!(
            "{COOKIE}={cookie}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.ttl_ms / 1000
        )
    }

    /// The `Set-Cookie` value that ends a session in the browser.
    pub fn clear_cookie(&self) -> String {
        format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// True when `presented` is the viewer's CSRF token (constant-time).
pub fn csrf_ok(viewer: &Viewer, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(viewer.csrf.as_bytes())))
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl_s: u64) -> Sessions {
        Sessions::with_keys(
            &["admin-key-0123456789".into()],
            &["viewer-key-0123456789".into()],
            std::time::Duration::from_secs(ttl_s),
            false,
        )
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_names_its_role() {
        let s = sessions(60);
        let (cookie, v) = s.sign_in("admin-key-0123456789", 1_000).unwrap();
        assert_eq!(v.role, Role::Admin);
        let again = s.verify(Some(&cookie), 2_000).unwrap();
        assert_eq!(again.csrf, v.csrf);
        assert_eq!(
            s.verify(Some(&cookie), 61_000).unwrap_err(),
            Invalid::Expired
        );
        let (cookie, v) = s.sign_in("viewer-key-0123456789", 1_000).unwrap();
        assert_eq!(v.role, Role::ReadOnly);
        assert!(s.verify(Some(&cookie), 1_500).is_ok());
    }

    #[test]
    fn wrong_keys_forged_cookies_and_other_configurations_are_refused() {
        let s = sessions(60);
        assert!(s.sign_in("admin-key-012345678", 0).is_none());
        assert!(s.sign_in("", 0).is_none());
        let (cookie, _) = s.sign_in("admin-key-0123456789", 0).unwrap();
        // Re-dated: the MAC covers the expiry.
        let mut parts: Vec<String> = cookie.split('.').map(str::to_string).collect();
        parts[2] = "99999999999999".into();
        assert_eq!(
            s.verify(Some(&parts.join(".")), 1).unwrap_err(),
            Invalid::Bad
        );
        assert_eq!(s.verify(Some("v1.x.1.y.z"), 0).unwrap_err(), Invalid::Bad);
        assert_eq!(s.verify(None, 0).unwrap_err(), Invalid::Missing);
        // The key was removed from the configuration: its sessions end.
        let other = Sessions::with_keys(
            &["another-key-0123456789".into()],
            &[],
            std::time::Duration::from_secs(60),
            false,
        );
        assert_eq!(other.verify(Some(&cookie), 1).unwrap_err(), Invalid::Bad);
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let s = sessions(60);
        let (_, a) = s.sign_in("admin-key-0123456789", 0).unwrap();
        let (_, b) = s.sign_in("admin-key-0123456789", 0).unwrap();
        assert!(csrf_ok(&a, Some(&a.csrf)));
        assert!(!csrf_ok(&a, Some(&b.csrf)));
        assert!(!csrf_ok(&a, None));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let s = sessions(60);
        let plain = s.set_cookie("v", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(s.set_cookie("v", true).ends_with("; Secure"));
    }
}
