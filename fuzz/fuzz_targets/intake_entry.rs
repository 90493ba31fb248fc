//! Intake stream entries (what app servers `XADD`): the input is split on NUL bytes into
//! alternating field names and values, as Redis hands a stream entry over.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let mut fields = Vec::new();
    while let Some(name) = parts.next() {
        let value = parts.next().unwrap_or_default();
        fields.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    if let Ok(paynotify::intake::IntakeEntry::Notification(doc)) =
        paynotify::intake::decode_entry(&fields)
    {
        let _ = doc.merchant();
        let _ = doc.into_notification(1_795_000_000_000, || "x".into(), None);
    }
});
