//! Stream entry fields from anywhere (another program's XADD, a corrupted entry): decoding
//! never panics, and what it accepts round-trips.
#![no_main]
use expiry_stream::core::{decode_entry, encode_entry, event_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fields are NUL-separated name/value pairs: the fuzzer can reach every shape.
    let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    let fields: Vec<(Vec<u8>, Vec<u8>)> =
        parts.chunks(2).map(|c| (c[0].to_vec(), c.get(1).map(|v| v.to_vec()).unwrap_or_default())).collect();
    if let Ok(ev) = decode_entry(&fields, 1 << 16) {
        assert_eq!(ev.event_id, event_id(&ev.key, ev.deadline_ms));
        assert_eq!(decode_entry(&encode_entry(&ev), 1 << 16), Ok(ev));
    }
});
