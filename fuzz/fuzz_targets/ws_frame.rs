//! Browser websocket frames (`/ws`): subscribe, unsubscribe and ping, or a `bad_frame` error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = paynotify::push::session::parse_client_frame(text);
    }
});
