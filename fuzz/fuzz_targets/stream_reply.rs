//! Raw RESP bytes as a Redis server (or a proxy in between) might send them: parsing an
//! XREADGROUP/XAUTOCLAIM/XRANGE reply into entries never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = redis::parse_redis_value(data) {
        let _ = expiry_stream::store::parse_xread(&v);
        let _ = expiry_stream::store::parse_entries(&v);
    }
});
