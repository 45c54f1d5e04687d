//! `abgate stats` as scripts use it: one JSON object, exit 0, or exit 2 with a reason.
//! Expected values are GrowthBook's (growthbook/growthbook @
//! 8f1db4456915a8e7b7faf23d5632ca7219d2f469): `packages/back-end/test/stats.test.ts` for
//! SRM and `packages/stats/tests/frequentist/test_tests.py` for comparisons, the latter
//! unrounded as gbstats at that commit computes them.

use std::process::{Command, Output};

use serde_json::Value;

fn abgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_abgate"))
        .arg("stats")
        .args(args)
        .output()
        .expect("abgate runs")
}

fn json_of(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

fn close(v: &Value, key: &str, want: f64) {
    let got = num(v, key);
    assert!((got - want).abs() <= 1e-9, "{key}: {got} vs {want}");
}

#[test]
fn srm_prints_growthbook_p_value() {
    let v = json_of(&abgate(&[
        "srm",
        "--observed",
        "1000,1200",
        "--weights",
        "0.5,0.5",
    ]));
    // stats.test.ts: 0.000020079 (9 decimals); gbstats check_srm: 2.007865612426481e-05.
    assert!((num(&v, "p_value") - 0.000020079).abs() < 5e-10);
    close(&v, "p_value", 2.007865612426481e-05);
    // Each arm is 100 from its expected 1100: 2 · 100²/1100.
    close(&v, "chi_squared", 2.0 * 100.0 * 100.0 / 1100.0);
    assert_eq!(v["df"], 1);
    assert_eq!(v["expected"], serde_json::json!([1100.0, 1100.0]));
}

#[test]
fn srm_three_arms_with_uneven_weights() {
    let v = json_of(&abgate(&[
        "srm",
        "--observed",
        "500,500,600",
        "--weights",
        "0.34,0.33,0.33",
    ]));
    close(&v, "p_value", 0.0005926379315273186);
    assert_eq!(v["df"], 2);
}

#[test]
fn compare_sequential_relative_means() {
    // test_tests.py test_sequential_test_runs.
    let v = json_of(&abgate(&[
        "compare",
        "--a",
        "3000,1396.87,52377.9767",
        "--b",
        "3461,2422.7,134698.29",
        "--relative",
        "--sequential",
        "--tuning",
        "1000",
    ]));
    close(&v, "estimate", 0.5033610858562358);
    close(&v, "se", 0.3334122146400735);
    close(&v, "ci_lower", -0.5584405051077315);
    close(&v, "ci_upper", 1.5651626768202032);
    close(&v, "p_value", 1.0);
}

#[test]
fn compare_fixed_horizon_absolute_means() {
    // test_tests.py test_two_sided_ttest_absolute.
    let v = json_of(&abgate(&[
        "compare",
        "--a",
        "3407,1396.87,52377.9767",
        "--b",
        "3461,2422.7,134698.29",
    ]));
    close(&v, "estimate", 0.29);
    close(&v, "se", 0.12478363158758794);
    close(&v, "ci_lower", 0.04537789255929012);
    close(&v, "ci_upper", 0.5346221074407098);
    close(&v, "p_value", 0.020158402643587037);
}

#[test]
fn compare_proportions_sequential_relative() {
    // test_tests.py test_sequential_test_runs_prop (default tuning 5000).
    let v = json_of(&abgate(&[
        "compare",
        "--a",
        "3000,1396,1396",
        "--b",
        "3461,2422,2422",
        "--proportion",
        "--relative",
        "--sequential",
    ]));
    close(&v, "estimate", 0.5038633516821496);
    close(&v, "ci_lower", 0.4009784966859415);
    close(&v, "ci_upper", 0.6067482066783576);
    assert!(num(&v, "p_value") < 1e-40);
}

#[test]
fn compare_one_sided_has_open_end() {
    // test_tests.py TestOneSidedGreaterTTest.test_one_sided_ttest_absolute.
    let v = json_of(&abgate(&[
        "compare",
        "--a",
        "3000,1396.87,52377.9767",
        "--b",
        "3461,2422.7,134698.29",
        "--one-sided",
        "greater",
    ]));
    close(&v, "ci_lower", 0.020791480063255735);
    assert!(v["ci_upper"].is_null());
    close(&v, "p_value", 0.03554272489873023);
}

#[test]
fn bad_input_exits_2_with_a_reason() {
    for args in [
        &[
            "compare",
            "--a",
            "3000,1396.87",
            "--b",
            "3461,2422.7,134698.29",
        ][..],
        &["compare", "--a", "x,1,1", "--b", "3,1,1"],
        &[
            "compare",
            "--a",
            "3000,10,11",
            "--b",
            "3000,12,12",
            "--proportion",
        ],
        &[
            "compare", "--a", "3000,1,1", "--b", "3000,2,2", "--alpha", "1.5",
        ],
        &[
            "compare", "--a", "3000,1,1", "--b", "3000,2,2", "--tuning", "100",
        ],
        &["compare", "--a", "1,1,1", "--b", "3000,2,2"],
        &["srm", "--observed", "1000", "--weights", "0.5,0.5"],
        &["srm", "--observed", "10,x", "--weights", "0.5,0.5"],
    ] {
        let out = abgate(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
