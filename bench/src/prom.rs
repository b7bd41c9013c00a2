//! Just enough of the Prometheus text format: sum a counter over matching label sets, and
//! estimate quantiles from the buckets of a histogram the way `histogram_quantile` does.

/// `key="value"` pairs of a sample.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample line: name, labels, value.
fn parse_line(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut s = body;
        loop {
            s = s.trim_start_matches([',', ' ']);
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = s.split_once("=\"")?;
            // the value ends at the first `"` not escaped by a backslash
            let bytes = after.as_bytes();
            let mut i = 0;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            labels.push((key.trim(), after.get(..i)?));
            s = after.get(i + 1..)?;
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn has_labels(labels: &[(&str, &str)], wanted: &[(&str, &str)]) -> bool {
    wanted.iter().all(|w| labels.contains(w))
}

/// Sum of the samples named `name` whose labels include `wanted` (0 when there are none).
pub fn sum(text: &str, name: &str, wanted: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_line)
        .filter(|(n, l, _)| *n == name && has_labels(l, wanted))
        .map(|(_, _, v)| v)
        .sum()
}

/// Cumulative buckets `(le, count)` of histogram `name` (without `_bucket`), summed over every
/// other label, sorted by `le`.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (n, labels, v) in text.lines().filter_map(parse_line) {
        if n != bucket {
            continue;
        }
        let Some(le) = labels.iter().find(|(k, _)| *k == "le") else {
            continue;
        };
        let le = if le.1 == "+Inf" {
            f64::INFINITY
        } else {
            match le.1.parse() {
                Ok(x) => x,
                Err(_) => continue,
            }
        };
        match out.iter_mut().find(|(l, _)| *l == le) {
            Some(b) => b.1 += v,
            None => out.push((le, v)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after - before`, bucket by bucket (for the observations made between two scrapes).
pub fn delta(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0.0, |b| b.1);
            (le, n - b)
        })
        .collect()
}

/// The `q` quantile (0..=1) of cumulative buckets, interpolating linearly inside the bucket
/// that holds it (from 0 for the first bucket), like Prometheus' `histogram_quantile`; when it
/// falls in the `+Inf` bucket the answer is the highest finite bound (a lower bound). `None`
/// without observations. The answer is only as precise as the bucket bounds.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank && count > below {
            if le.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP stead_alarms_fired_total alarm events delivered
# TYPE stead_alarms_fired_total counter
stead_alarms_fired_total{result="success"} 9990
stead_alarms_fired_total{result="failure"} 3
stead_requests_total{class="Counter",code="200"} 12
stead_requests_total{class="-",code="404"} 1
stead_alarm_lag_seconds_bucket{le="0.005"} 0
stead_alarm_lag_seconds_bucket{le="0.01"} 100
stead_alarm_lag_seconds_bucket{le="0.1"} 500
stead_alarm_lag_seconds_bucket{le="1"} 1000
stead_alarm_lag_seconds_bucket{le="+Inf"} 1000
stead_alarm_lag_seconds_sum 120.5
stead_alarm_lag_seconds_count 1000
"#;

    #[test]
    fn counters() {
        let fired = sum(TEXT, "stead_alarms_fired_total", &[("result", "success")]);
        assert_eq!(fired, 9990.0);
        assert_eq!(sum(TEXT, "stead_alarms_fired_total", &[]), 9993.0);
        assert_eq!(sum(TEXT, "stead_requests_total", &[("code", "200")]), 12.0);
        assert_eq!(sum(TEXT, "stead_nothing", &[]), 0.0);
        assert_eq!(sum(TEXT, "stead_alarm_lag_seconds_count", &[]), 1000.0);
        let odd = r#"m{a="x,\"y\"}",b="z"} 2 1700000000"#;
        assert_eq!(sum(odd, "m", &[("b", "z")]), 2.0);
    }

    #[test]
    fn quantiles_from_buckets() {
        let b = buckets(TEXT, "stead_alarm_lag_seconds");
        assert_eq!(b.len(), 5);
        assert_eq!(b[4], (f64::INFINITY, 1000.0));
        // rank 500 is the last of the (0.01, 0.1] bucket
        assert!((quantile(&b, 0.5).unwrap() - 0.1).abs() < 1e-9);
        // rank 50 is half way through the (0.005, 0.01] bucket
        assert!((quantile(&b, 0.05).unwrap() - 0.0075).abs() < 1e-9);
        // rank 990: 490 of the 500 in (0.1, 1]
        assert!((quantile(&b, 0.99).unwrap() - (0.1 + 0.9 * 490.0 / 500.0)).abs() < 1e-9);
        assert_eq!(quantile(&b, 1.0), Some(1.0));
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        // everything above the last finite bound: that bound is all we know
        assert_eq!(
            quantile(&[(1.0, 0.0), (f64::INFINITY, 4.0)], 0.5),
            Some(1.0)
        );
    }

    #[test]
    fn deltas_between_scrapes() {
        let before = [(0.1, 5.0), (1.0, 5.0), (f64::INFINITY, 5.0)];
        let after = [(0.1, 7.0), (1.0, 10.0), (f64::INFINITY, 12.0)];
        assert_eq!(
            delta(&after, &before),
            [(0.1, 2.0), (1.0, 5.0), (f64::INFINITY, 7.0)]
        );
    }
}
