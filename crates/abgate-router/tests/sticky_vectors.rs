//! GrowthBook's published `hash` test vectors, run against `abgate_router::sticky::hash`.
//!
//! The fixture `data/growthbook_hash_cases.json` holds only the data of the `"hash"` section of
//! `packages/sdk-js/test/cases.json` in github.com/growthbook/growthbook (commit
//! 8f1db4456915a8e7b7faf23d5632ca7219d2f469; MIT, Copyright (c) 2025 GrowthBook, Inc.):
//! entries `[seed, value, version, expected]`, with `expected` null for an unsupported
//! version. Every vector is ASCII, where hashing UTF-8 bytes (as abgate does) and UTF-16 code
//! units (as the JS SDK does) coincide, so all of them must pass unchanged.

use abgate_router::sticky::{bucket, hash};
use serde_json::Value;

/// Embedded at compile time so the test does no path lookups at run time.
const CASES: &str = include_str!("data/growthbook_hash_cases.json");

/// GrowthBook's expected values have at most 4 decimals; ours are computed the same way
/// (integer remainder divided by 1000 or 10000), so a tight tolerance suffices.
const TOLERANCE: f64 = 1e-9;

struct Case {
    seed: String,
    value: String,
    version: u32,
    expected: Option<f64>,
}

fn cases() -> Vec<Case> {
    let doc: Value = serde_json::from_str(CASES).expect("fixture is valid JSON");
    let entries = doc["hash"].as_array().expect("\"hash\" is an array");
    entries
        .iter()
        .map(|e| {
            let e = e.as_array().expect("each vector is an array");
            assert_eq!(
                e.len(),
                4,
                "vector {e:?} is [seed, value, version, expected]"
            );
            Case {
                seed: e[0].as_str().expect("seed is a string").to_owned(),
                value: e[1].as_str().expect("value is a string").to_owned(),
                version: u32::try_from(e[2].as_u64().expect("version is an integer"))
                    .expect("version fits in u32"),
                expected: if e[3].is_null() {
                    None
                } else {
                    Some(e[3].as_f64().expect("expected is a number or null"))
                },
            }
        })
        .collect()
}

#[test]
fn fixture_has_every_published_vector() {
    let cases = cases();
    assert_eq!(cases.len(), 15);
    assert_eq!(cases.iter().filter(|c| c.version == 1).count(), 7);
    assert_eq!(cases.iter().filter(|c| c.version == 2).count(), 7);
    assert_eq!(cases.iter().filter(|c| c.expected.is_none()).count(), 1);
    // The vectors are ASCII, so UTF-8 and UTF-16 hashing agree on all of them.
    assert!(cases
        .iter()
        .all(|c| c.seed.is_ascii() && c.value.is_ascii()));
}

#[test]
fn every_growthbook_hash_vector_passes() {
    let mut failures = Vec::new();
    for c in cases() {
        let got = hash(&c.seed, &c.value, c.version);
        let ok = match (got, c.expected) {
            (Some(g), Some(e)) => (g - e).abs() <= TOLERANCE,
            (None, None) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "hash({:?}, {:?}, {}) = {:?}, expected {:?}",
                c.seed, c.value, c.version, got, c.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_growthbook_hash_is_in_unit_interval() {
    for c in cases() {
        if let Some(h) = hash(&c.seed, &c.value, c.version) {
            assert!(
                (0.0..1.0).contains(&h),
                "{h} for {:?}/{:?}",
                c.seed,
                c.value
            );
        }
    }
}

#[test]
fn bucket_matches_every_v2_vector() {
    // `bucket(salt, key)` is the v2 hash in basis points, so it must agree with GrowthBook's
    // v2 vectors scaled by 10_000.
    for c in cases().into_iter().filter(|c| c.version == 2) {
        let expected = c.expected.expect("v2 vectors have a value") * 10_000.0;
        assert!(
            (f64::from(bucket(&c.seed, &c.value)) - expected).abs() < 1e-6,
            "bucket({:?}, {:?})",
            c.seed,
            c.value
        );
    }
}
