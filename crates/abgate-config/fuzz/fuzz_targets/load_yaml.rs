//! Raw bytes, read as (lossy) UTF-8 YAML, loaded as one file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    abgate_config_fuzz::exercise(&[("fuzz.yaml", text)]);
});
