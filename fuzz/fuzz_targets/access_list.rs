#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| backchannel_statement::fuzz::access_list(data));
