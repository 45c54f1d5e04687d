//! Numbers and times as reasons and reports print them.

/// `x` with at most `decimals` decimals, trailing zeros dropped: `720`, `811.7`, `0.95`.
pub(crate) fn num(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Milliseconds: `812 ms`, `811.7 ms`.
pub(crate) fn ms(x: f64) -> String {
    format!("{} ms", num(x, 1))
}

/// A rate such as a success rate: `0.95`, `0.9123`.
pub(crate) fn rate(x: f64) -> String {
    num(x, 4)
}

/// A fraction as a percentage: `16.7%`.
pub(crate) fn pct(x: f64) -> String {
    format!("{}%", num(x * 100.0, 1))
}

/// A fraction as a percentage with two decimals, for small rates: `0.25%`, `8%`.
pub(crate) fn pct2(x: f64) -> String {
    format!("{}%", num(x * 100.0, 2))
}

/// `x` × 100 with at most `decimals` decimals and its sign: `+12.3`, `-4.1`, `0`.
fn signed_hundredths(x: f64, decimals: usize) -> String {
    let s = num(x * 100.0, decimals);
    match s.as_str() {
        "0" | "-0" => "0".to_owned(),
        _ if x > 0.0 => format!("+{s}"),
        _ => s,
    }
}

/// A relative difference with its sign: `+12.3%`, `-4.1%`, `0%`.
pub(crate) fn signed_pct(x: f64) -> String {
    format!("{}%", signed_hundredths(x, 1))
}

/// A difference of rates in percentage points with its sign: `+7.89 points`.
pub(crate) fn signed_points(x: f64) -> String {
    format!("{} points", signed_hundredths(x, 2))
}

/// A p-value: four decimals, or two significant digits below 0.0001: `0.0312`, `1.2e-7`.
pub(crate) fn pval(p: f64) -> String {
    if p >= 1e-4 || p == 0.0 {
        num(p, 4)
    } else {
        format!("{p:.1e}")
    }
}

/// A split: `v1-0 70%, v1-1 30%`.
pub(crate) fn split(names: &[&str], weights: &[u32]) -> String {
    names
        .iter()
        .zip(weights)
        .map(|(n, w)| format!("{n} {w}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration in ms, to the second: `0s`, `45s`, `5m00s`, `24h00m00s`.
pub(crate) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Unix ms as UTC ISO 8601, to the second: `2026-05-01T12:00:00Z`.
pub(crate) fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_drop_trailing_zeros() {
        assert_eq!(ms(720.0), "720 ms");
        assert_eq!(ms(811.74), "811.7 ms");
        assert_eq!(rate(0.95), "0.95");
        assert_eq!(rate(0.91234), "0.9123");
        assert_eq!(pct(0.1667), "16.7%");
        assert_eq!(num(1.2, 3), "1.2");
        assert_eq!(pct2(0.0025), "0.25%");
        assert_eq!(signed_pct(0.1234), "+12.3%");
        assert_eq!(signed_pct(-0.041), "-4.1%");
        assert_eq!(signed_pct(-0.0001), "0%");
        assert_eq!(signed_points(0.0789), "+7.89 points");
        assert_eq!(signed_points(-0.00001), "0 points");
        assert_eq!(pval(0.03121), "0.0312");
        assert_eq!(pval(1.234e-7), "1.2e-7");
        assert_eq!(pval(1.0), "1");
    }

    #[test]
    fn durations_and_dates() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(300_000), "5m00s");
        assert_eq!(duration(86_400_000), "24h00m00s");
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_709_251_200_000), "2024-03-01T00:00:00Z");
        assert_eq!(iso(951_782_400_000 + 3_661_000), "2000-02-29T01:01:01Z");
    }
}
