//! The notification schema (`POST /v1/notifications` bodies and intake `notification` fields):
//! any bytes give a notification or a schema error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = 1_795_000_000_000;
    if let Ok(n) = paynotify::delivery::schema::parse(data, now, || "fuzz-id".to_string()) {
        // What was accepted has a valid id.
        assert!(paynotify::delivery::schema::validate_id(&n.id).is_ok());
    }
});
