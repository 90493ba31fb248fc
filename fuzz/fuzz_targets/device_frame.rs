//! Device frames: the input is a stretch of the TCP stream, decoded line by line as the
//! listener does (the `/device` websocket decodes each message the same way).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = paynotify::devices::decode_frame(line);
    }
    let _ = paynotify::devices::decode_frame(data);
});
