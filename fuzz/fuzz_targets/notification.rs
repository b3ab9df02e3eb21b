//! Keyspace notification channels and payloads: parsing never panics, and a parsed
//! keyevent notification re-formats to the channel it came from.
#![no_main]
use expiry_stream::core::parse_notification;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (channel, payload) = (&data[..cut], data.get(cut + 1..).unwrap_or_default());
    if let Some(n) = parse_notification(channel, payload) {
        if channel.starts_with(b"__keyevent@") {
            let mut again = format!("__keyevent@{}__:", n.db).into_bytes();
            again.extend_from_slice(&n.event);
            assert_eq!(parse_notification(&again, &n.key), Some(n));
        }
    }
});
