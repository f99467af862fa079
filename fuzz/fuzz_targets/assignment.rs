#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtc_fuzz_targets::assignment(data));
