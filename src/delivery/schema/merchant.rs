//! What a merchant's record does to the notifications that name it: its defaults fill the
//! fields a notification leaves out, and its `allowed_urls` bound where the notification may go.
//!
//! Invariant: a notification naming a merchant is accepted only with that merchant's rules in
//! hand, and only when its URL starts with one of the merchant's allowed URLs (both in the `url`
//! crate's normal form, so `https://M1.example` and `https://m1.example/` are the same prefix,
//! and a prefix always ends inside the path: `https://m1.example/` never admits
//! `https://m1.example.evil/`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{from_object, object_of, NewNotification, SchemaError, MAX_HEADERS};

/// What a merchant's record supplies to its notifications when they leave a field out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defaults {
    /// Delays in ms (as [`super::Spec::schedule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<u64>>,
    /// The expected response body (as [`super::Spec::success_body`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Headers sent with every notification; a notification's own header of the same name wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// The merchant a document names and the rules that apply to it.
#[derive(Debug, Clone, Copy)]
pub struct MerchantRules<'a> {
    pub id: &'a str,
    /// Normalized URL prefixes (see [`normalize_prefix`]).
    pub allowed_urls: &'a [String],
    pub defaults: &'a Defaults,
}

/// A notification document, parsed but not yet checked: the merchant it names is looked up
/// (in Redis) between [`Document::parse`] and [`Document::into_notification`].
#[derive(Debug, Clone)]
pub struct Document(Map<String, Value>);

impl Document {
    /// Checks size and shape (a JSON object within [`super::MAX_DOCUMENT_BYTES`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, SchemaError> {
        object_of(bytes).map(Self)
    }

    /// The merchant the document names, if any.
    pub fn merchant(&self) -> Result<Option<&str>, SchemaError> {
        match self.0.get("merchant") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id)) => {
                super::validate_id(id).map_err(|m| SchemaError::field_err("merchant", m))?;
                Ok(Some(id))
            }
            Some(_) => Err(SchemaError::field_err(
                "merchant",
                "must be a merchant id string",
            )),
        }
    }

    /// Validates and normalizes the notification; `merchant` must be the rules of the merchant
    /// [`merchant`](Self::merchant) names (`None` when it names none).
    pub fn into_notification(
        self,
        now_ms: i64,
        make_id: impl FnOnce() -> String,
        merchant: Option<MerchantRules<'_>>,
    ) -> Result<NewNotification, SchemaError> {
        from_object(self.0, now_ms, make_id, merchant)
    }
}

/// The merchant id to store and the defaults to apply; refuses a document whose `merchant` is
/// not the one whose rules were looked up.
pub(super) fn apply(
    map: &mut Map<String, Value>,
    merchant: Option<MerchantRules<'_>>,
) -> Result<(Option<String>, Defaults), SchemaError> {
    let named = match map.remove("merchant") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => {
            return Err(SchemaError::field_err(
                "merchant",
                "must be a merchant id string",
            ))
        }
    };
    match (named, merchant) {
        (None, None) => Ok((None, Defaults::default())),
        (Some(id), Some(rules)) if id == rules.id => Ok((Some(id), rules.defaults.clone())),
        (Some(id), _) => Err(SchemaError::field_err(
            "merchant",
            format!("no merchant {id:?} is registered (POST /v1/merchants)"),
        )),
        (None, Some(_)) => Err(SchemaError::field_err("merchant", "is required")),
    }
}

/// Refuses a URL outside the merchant's allowed prefixes.
pub(super) fn check_url(url: &str, merchant: Option<MerchantRules<'_>>) -> Result<(), SchemaError> {
    let Some(rules) = merchant else {
        return Ok(());
    };
    let normal = url::Url::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_default();
    if rules
        .allowed_urls
        .iter()
        .any(|prefix| normal.starts_with(prefix.as_str()))
    {
        return Ok(());
    }
    Err(SchemaError::field_err(
        "url",
        format!(
            "is not under any allowed URL of merchant {:?} ({})",
            rules.id,
            rules.allowed_urls.join(", ")
        ),
    ))
}

/// A merchant's header defaults overlaid with the notification's own headers.
pub(super) fn merge_headers(
    defaults: &Defaults,
    own: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SchemaError> {
    if defaults.headers.is_empty() {
        return Ok(own);
    }
    let mut merged = defaults.headers.clone();
    merged.extend(own);
    if merged.len() > MAX_HEADERS {
        return Err(SchemaError::field_err(
            "headers",
            format!(
                "has {} entries with the merchant's defaults; the limit is {MAX_HEADERS}",
                merged.len()
            ),
        ));
    }
    Ok(merged)
}

/// An allowed-URL prefix in normal form: an http(s) URL with a host and no credentials, query
/// or fragment; its path always ends the host part (`https://m1.example` becomes
/// `https://m1.example/`).
pub fn normalize_prefix(text: &str) -> Result<String, String> {
    let parsed = super::parse_url(Some(Value::String(text.to_string())))
        .map_err(|e| e.to_string())
        .and_then(|s| url::Url::parse(&s).map_err(|e| e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn with(
        doc: &str,
        allowed: &[&str],
        defaults: &Defaults,
    ) -> Result<NewNotification, SchemaError> {
        let allowed: Vec<String> = allowed
            .iter()
            .map(|a| normalize_prefix(a).unwrap())
            .collect();
        let d = Document::parse(doc.as_bytes())?;
        let id = d.merchant()?.map(str::to_string);
        let rules = id.as_deref().map(|id| MerchantRules {
            id,
            allowed_urls: &allowed,
            defaults,
        });
        d.into_notification(NOW, || "gen".into(), rules)
    }

    #[test]
    fn allowed_urls_are_prefixes_in_normal_form() {
        let d = Defaults::default();
        let ok = |url: &str| {
            with(
                &format!(r#"{{"merchant":"m1","url":"{url}"}}"#),
                &["https://M1.example"],
                &d,
            )
        };
        assert!(ok("https://m1.example/notify").is_ok());
        assert!(ok("https://M1.EXAMPLE/x?y=1").is_ok());
        for bad in [
            "https://m1.example.evil/notify",
            "https://m1.example:8443/notify",
            "http://m1.example/notify",
            "https://evil.example/?https://m1.example/",
        ] {
            assert_eq!(ok(bad).unwrap_err().field(), Some("url"), "{bad}");
        }
        let path = with(
            r#"{"merchant":"m1","url":"https://m1.example/pay/other"}"#,
            &["https://m1.example/pay/notify"],
            &d,
        );
        assert_eq!(path.unwrap_err().field(), Some("url"));
        assert!(normalize_prefix("https://m1.example/?a=1").is_err());
        assert!(normalize_prefix("ftp://m1.example/").is_err());
    }

    #[test]
    fn merchant_defaults_fill_what_the_notification_leaves_out() {
        let d = Defaults {
            schedule: Some(vec![0, 1000]),
            success: Some("success".into()),
            timeout_ms: Some(3000),
            headers: [
                ("x-a".to_string(), "1".to_string()),
                ("x-b".to_string(), "2".to_string()),
            ]
            .into(),
        };
        let n = with(
            r#"{"merchant":"m1","url":"https://m1.example/n"}"#,
            &["https://m1.example/"],
            &d,
        )
        .unwrap();
        assert_eq!(n.spec.schedule, vec![0, 1000]);
        assert_eq!(n.spec.success_body.as_deref(), Some("success"));
        assert_eq!(n.spec.timeout_ms, 3000);
        assert_eq!(n.spec.merchant.as_deref(), Some("m1"));
        let n = with(
            r#"{"merchant":"m1","url":"https://m1.example/n","schedule":"standard","success":"2xx","timeout_ms":50,"headers":{"X-B":"own"}}"#,
            &["https://m1.example/"],
            &d,
        )
        .unwrap();
        assert_eq!(n.spec.schedule.len(), 8);
        assert_eq!(n.spec.success_body, None);
        assert_eq!(n.spec.timeout_ms, 50);
        assert_eq!(n.spec.headers["x-a"], "1");
        assert_eq!(n.spec.headers["x-b"], "own");
    }

    #[test]
    fn a_merchant_without_its_rules_is_refused() {
        let err = super::super::parse(
            br#"{"merchant":"m9","url":"https://x.example/"}"#,
            NOW,
            String::new,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("merchant"));
        assert!(err.to_string().contains("m9"), "{err}");
    }
}
