//! Subscribe and device tokens: `<id> NUL <token>`. Nothing panics, and a token verifies only
//! if it is, byte for byte, the one minted for that id, kind and expiry (one spelling per token).
#![no_main]
use libfuzzer_sys::fuzz_target;
use paynotify::token::{expiry_of, mint, verify, Kind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (id, token) = text.split_once('\0').unwrap_or(("order-1", &text));
    let secrets = ["fuzz-token-secret-0123456789".to_string()];
    for kind in [Kind::Order, Kind::Device] {
        if verify(&secrets, kind, id, token, 1_795_000_000).is_ok() {
            let expiry = expiry_of(token).expect("a verified token has an expiry");
            let minted = mint(&secrets, kind, id, expiry).expect("minting works");
            assert_eq!(token, minted, "a second spelling of a token verified");
        }
    }
});
