#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| backchannel_crypto::fuzz::signature(data));
