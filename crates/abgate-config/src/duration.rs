//! Durations as Istio accepts them: Go's `time.ParseDuration` syntax (`1m30s`, `100ms`,
//! `1.5s`, `2h`), which also covers protobuf's JSON form (`0.5s`).

use std::time::Duration;

/// Parses a duration; the error says what is wrong in words.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("duration `{text}` is negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{text}` is missing a unit (ns, us, ms, s, m, h)"))?;
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("duration `{text}` has a malformed number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(format!(
                    "duration `{text}` has unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ))
            }
        };
        rest = &rest[unit_len..];
        total_nanos += number * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(format!("duration `{text}` is too long"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_parse() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_rejected_with_a_reason() {
        assert!(parse("5").unwrap_err().contains("missing a unit"));
        assert!(parse("5sec").unwrap_err().contains("unknown unit"));
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("").is_err());
        assert!(parse("1..2s").is_err());
    }
}
