//! Payment results (`POST /v1/orders/{id}/result` bodies and intake `result` fields), with the
//! order id from the path and without it (intake: the id is in the document).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = paynotify::push::parse_result(Some("order-1"), data);
    let _ = paynotify::push::parse_result(None, data);
});
