//! Property tests: every decoder that takes input from outside (the notification schema, intake
//! entries, results, tokens) refuses arbitrary and mutated bytes with an error, never a panic.
//! They run with every test run; the coverage-guided `cargo fuzz` targets in `fuzz/` cover the
//! same decoders and the websocket and device frames (`scripts/fuzz`, which CI runs too).

use proptest::prelude::*;
use serde_json::json;

const NOW: i64 = 1_795_000_000_000;

fn valid_doc() -> Vec<u8> {
    json!({
        "id": "order-1", "url": "https://merchant.example/notify", "body": {"paid": true},
        "schedule": "alipay", "headers": {"x-a": "b"}, "success": {"body": "success"}
    })
    .to_string()
    .into_bytes()
}

/// A valid document with a few bytes overwritten, inserted or removed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 1..8),
        Just(valid_doc()),
    )
        .prop_map(|(edits, mut doc)| {
            for (at, byte, op) in edits {
                let at = usize::from(at) % (doc.len() + 1);
                match op {
                    0 if at < doc.len() => doc[at] = byte,
                    1 => doc.insert(at, byte),
                    _ if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ => {}
                }
            }
            doc
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_schema_refuses_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Never a panic; and bytes that are not even a JSON object are refused, with a field.
        let parsed = paynotify::delivery::schema::parse(&bytes, NOW, || "gen".into());
        let is_object = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.is_object());
        if !is_object {
            let err = parsed.err();
            prop_assert!(err.is_some(), "accepted {:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn the_schema_handles_mutated_documents(doc in mutated()) {
        if let Ok(n) = paynotify::delivery::schema::parse(&doc, NOW, || "gen".into()) {
            // Whatever it accepts is a well-formed notification.
            prop_assert!(paynotify::delivery::schema::validate_id(&n.id).is_ok());
            prop_assert!(url::Url::parse(&n.spec.url).is_ok());
        }
    }

    #[test]
    fn intake_entries_never_panic(
        fields in proptest::collection::vec(
            (prop_oneof![Just("notification".to_string()), Just("result".to_string()), "[a-z]{0,12}"],
             proptest::collection::vec(any::<u8>(), 0..256)),
            0..4),
    ) {
        if let Ok(paynotify::intake::IntakeEntry::Notification(doc)) = paynotify::intake::decode_entry(&fields) {
            let _ = doc.merchant();
            let _ = doc.into_notification(NOW, || "x".into(), None);
        }
    }

    #[test]
    fn results_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), order in proptest::option::of("[ -~]{0,80}")) {
        let _ = paynotify::push::parse_result(order.as_deref(), &bytes);
    }

    #[test]
    fn arbitrary_tokens_never_verify(token in "[ -~]{0,120}", id in "[a-z0-9-]{1,20}") {
        let secrets = ["a-token-secret-of-enough-length".to_string()];
        for kind in [paynotify::token::Kind::Order, paynotify::token::Kind::Device] {
            prop_assert!(paynotify::token::verify(&secrets, kind, &id, &token, NOW / 1000).is_err());
        }
    }

    #[test]
    fn tampered_tokens_never_verify(flip in any::<u16>(), byte in any::<u8>()) {
        let secrets = ["a-token-secret-of-enough-length".to_string()];
        let kind = paynotify::token::Kind::Order;
        let good = paynotify::token::mint(&secrets, kind, "o-1", NOW / 1000 + 60).unwrap();
        let mut bytes = good.clone().into_bytes();
        let at = usize::from(flip) % bytes.len();
        bytes[at] = byte;
        if let Ok(tampered) = String::from_utf8(bytes) {
            if tampered != good {
                prop_assert!(paynotify::token::verify(&secrets, kind, "o-1", &tampered, NOW / 1000).is_err());
            }
        }
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    for depth in [200usize, 10_000, 100_000] {
        let doc = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(paynotify::delivery::schema::parse(doc.as_bytes(), NOW, || "x".into()).is_err());
        let nested = format!(
            "{{\"url\":\"https://m.example/\",\"body\":{}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(paynotify::delivery::schema::parse(nested.as_bytes(), NOW, || "x".into()).is_err());
        assert!(paynotify::push::parse_result(Some("o"), nested.as_bytes()).is_err());
    }
}

#[test]
fn a_token_has_one_spelling_and_signing_keys_have_a_minimum_length() {
    let secrets = ["a-token-secret-of-enough-length".to_string()];
    let kind = paynotify::token::Kind::Order;
    let good = paynotify::token::mint(&secrets, kind, "o-1", NOW / 1000 + 60).unwrap();
    assert!(paynotify::token::verify(&secrets, kind, "o-1", &good, NOW / 1000).is_ok());
    let plus = good.replacen("v1.", "v1.+", 1);
    assert!(paynotify::token::verify(&secrets, kind, "o-1", &plus, NOW / 1000).is_err());
    let padded = good.replacen("v1.", "v1.0", 1);
    assert!(paynotify::token::verify(&secrets, kind, "o-1", &padded, NOW / 1000).is_err());
    for short in ["whsec_", "whsec_AAAA"] {
        assert!(
            paynotify::delivery::signing::Signer::new(&[short.to_string()], &[]).is_err(),
            "{short}"
        );
    }
}

#[test]
fn an_oversized_result_is_refused_before_it_is_parsed() {
    let big = format!(
        "{{\"order_id\":\"o\",\"status\":\"paid\",\"data\":\"{}\"}}",
        "x".repeat(paynotify::push::MAX_RESULT_BYTES)
    );
    let e = paynotify::push::parse_result(None, big.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}
