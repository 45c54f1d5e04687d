//! Istio-looking YAML generated from the fuzz input (see `abgate_config_fuzz::gen`), so
//! that mutations land in validation and analysis rather than in the YAML parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: abgate_config_fuzz::gen::Generated| {
    let files: Vec<(&str, String)> = input
        .files
        .iter()
        .enumerate()
        .map(|(i, text)| {
            (
                ["fuzz-0.yaml", "fuzz-1.yaml", "fuzz-2.yaml"][i.min(2)],
                text.clone(),
            )
        })
        .collect();
    abgate_config_fuzz::exercise(&files);
});
