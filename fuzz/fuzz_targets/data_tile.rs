#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| backchannel_client::fuzz::data_tile(data));
