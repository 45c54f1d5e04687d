//! Model servers' metrics pages, as the LLM-aware balancer reads them: any bytes parse to
//! a load or to "unknown", never a panic, and a load is always in range.
#![no_main]

use abgate_router::load::ServerLoad;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(load) = ServerLoad::parse(&text) {
        assert!((0.0..=1.0).contains(&load.kv_cache), "{load:?}");
    }
});
