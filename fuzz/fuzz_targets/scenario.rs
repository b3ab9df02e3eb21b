//! Scenario files as users write them (or mistype them): parsing and checking refuses bad
//! files with the field and line named, and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    if let Err(e) = expiry_stream::scenario::spec::parse("fuzz.toml", &src) {
        let _ = e.to_string();
    }
});
