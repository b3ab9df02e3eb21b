//! Configuration from outside the process: the fault spec (`EXPIRY_STREAM_FAULTS`) and the
//! Redis backend choice (`EXPIRY_STREAM_REDIS`) are refused with a reason, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = expiry_stream::fault::parse(&s);
    let _ = expiry_stream::provision::Choice::parse(&s);
});
