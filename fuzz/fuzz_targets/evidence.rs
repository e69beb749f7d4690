#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| backchannel_core::fuzz::evidence(data));
