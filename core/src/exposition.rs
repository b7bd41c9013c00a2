//! The two Prometheus text expositions and the choice between them. Our metrics are encoded as
//! OpenMetrics (what `prometheus-client` writes); a scraper that did not ask for OpenMetrics in
//! its `Accept` header gets the classic text format 0.0.4 instead, converted here. The two differ
//! only in a few places: the classic format names a counter family after its `_total` samples,
//! has no `# UNIT`, no `# EOF`, no exemplars and no `_created` samples, and writes timestamps in
//! milliseconds. Gauges and histograms read the same in both.

/// `Content-Type` of an OpenMetrics answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of a classic Prometheus text answer.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    Classic,
}

impl Exposition {
    /// OpenMetrics when the `Accept` header names `application/openmetrics-text` (with a
    /// non-zero quality); the classic format otherwise, also with no `Accept` at all.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let names_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';');
                let media = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if names_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Classic => CLASSIC_CONTENT_TYPE,
        }
    }

    /// `openmetrics` (an OpenMetrics exposition, as encoded) in this format.
    pub fn render(self, openmetrics: String) -> String {
        match self {
            Self::OpenMetrics => openmetrics,
            Self::Classic => openmetrics_to_classic(&openmetrics),
        }
    }
}

/// Converts an OpenMetrics text exposition to the classic Prometheus text format 0.0.4: counter
/// families are named after their `_total` samples in `# HELP` and `# TYPE`, `info` and
/// `stateset` families become gauges, `unknown` becomes `untyped`, `gaugehistogram` becomes
/// `histogram`; `# UNIT`, `# EOF`, `_created` samples and exemplars are left out; timestamps turn
/// from seconds into milliseconds. Lines it does not understand pass unchanged.
pub fn openmetrics_to_classic(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // The family whose samples follow, and how its samples are renamed in the classic format.
    let mut family = Family::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            family.start(name);
            family.help = Some(unescape_help(help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            family.start(name);
            family.kind = Some(kind.trim().to_owned());
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        family.write_header(&mut out);
        if let Some(sample) = classic_sample(line, &family) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    family.write_header(&mut out);
    out
}

/// The metadata of the family being read, written out before its first sample.
#[derive(Default)]
struct Family {
    name: String,
    help: Option<String>,
    kind: Option<String>,
    written: bool,
}

impl Family {
    fn start(&mut self, name: &str) {
        if self.name != name {
            *self = Self {
                name: name.to_owned(),
                ..Self::default()
            };
        }
    }

    fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("unknown")
    }

    /// The family's name in the classic format: a counter's is its samples' name.
    fn classic_name(&self) -> String {
        match self.kind() {
            "counter" if !self.name.ends_with("_total") => format!("{}_total", self.name),
            "info" if !self.name.ends_with("_info") => format!("{}_info", self.name),
            _ => self.name.clone(),
        }
    }

    fn classic_kind(&self) -> &str {
        match self.kind() {
            "info" | "stateset" => "gauge",
            "gaugehistogram" => "histogram",
            "unknown" => "untyped",
            other => other,
        }
    }

    fn write_header(&mut self, out: &mut String) {
        if self.written || (self.help.is_none() && self.kind.is_none()) {
            return;
        }
        self.written = true;
        let name = self.classic_name();
        if let Some(help) = &self.help {
            out.push_str(&format!("# HELP {name} {help}\n"));
        }
        if self.kind.is_some() {
            out.push_str(&format!("# TYPE {name} {}\n", self.classic_kind()));
        }
    }
}

/// OpenMetrics escapes `\`, newline and `"` in help text; the classic format only the first two.
fn unescape_help(help: &str) -> String {
    help.replace("\\\"", "\"")
}

/// One sample line in the classic format, or `None` for a sample the classic format has no
/// place for (`_created`).
fn classic_sample(line: &str, family: &Family) -> Option<String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.ends_with("_created") && name != family.name {
        return None;
    }
    let labels_end = if line[name_end..].starts_with('{') {
        name_end + closing_brace(&line[name_end..])? + 1
    } else {
        name_end
    };
    let mut rest = line[labels_end..].split_whitespace();
    let value = rest.next()?;
    // What follows the value: an optional timestamp, then `# {…} v [t]` for an exemplar.
    let timestamp = rest.next().filter(|t| *t != "#");
    let mut sample = String::with_capacity(line.len());
    sample.push_str(&line[..labels_end]);
    sample.push(' ');
    sample.push_str(value);
    if let Some(t) = timestamp.and_then(seconds_to_millis) {
        sample.push(' ');
        sample.push_str(&t);
    }
    Some(sample)
}

/// The index of the `}` that closes the label set at the start of `s`, skipping quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// An OpenMetrics timestamp (seconds, maybe fractional) as classic milliseconds.
fn seconds_to_millis(t: &str) -> Option<String> {
    let seconds: f64 = t.parse().ok()?;
    let millis = (seconds * 1000.0).round();
    millis.is_finite().then(|| format!("{}", millis as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family as MetricFamily;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        class: String,
        code: String,
    }

    /// A registry like the sidecar's: labelled counters, a plain counter, a gauge, a
    /// histogram with a unit, an info metric; encoded by prometheus-client as OpenMetrics.
    fn encoded() -> String {
        let mut r = Registry::with_prefix("stead");
        let requests = MetricFamily::<Labels, Counter>::default();
        r.register("requests", "Requests answered", requests.clone());
        requests
            .get_or_create(&Labels {
                class: "Counter".into(),
                code: "200".into(),
            })
            .inc_by(3);
        requests
            .get_or_create(&Labels {
                class: "Odd \"one\" \\ here".into(),
                code: "500".into(),
            })
            .inc();
        let alarms = Counter::<u64>::default();
        r.register("alarms_fired", "Alarms delivered", alarms.clone());
        alarms.inc_by(7);
        let open = Gauge::<i64>::default();
        r.register("objects_open", "Object databases open", open.clone());
        open.set(12);
        let latency = Histogram::new([0.005, 0.05]);
        r.register_with_unit(
            "turn_duration",
            "Time a turn took",
            Unit::Seconds,
            latency.clone(),
        );
        latency.observe(0.001);
        latency.observe(0.01);
        latency.observe(1.0);
        r.register(
            "build",
            "The running version",
            Info::new(vec![("version".to_owned(), "0.1.0".to_owned())]),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn counters_are_typed_and_described_under_their_total_name() {
        let open = encoded();
        // What a classic parser could not read: HELP/TYPE on the family name, no `_total`.
        assert!(open.contains("# TYPE stead_requests counter\n"), "{open}");
        assert!(open.contains("# EOF"), "{open}");
        let classic = openmetrics_to_classic(&open);
        let expected = "\
# HELP stead_requests_total Requests answered.
# TYPE stead_requests_total counter
stead_requests_total{class=\"Counter\",code=\"200\"} 3
stead_requests_total{class=\"Odd \\\"one\\\" \\\\ here\",code=\"500\"} 1
# HELP stead_alarms_fired_total Alarms delivered.
# TYPE stead_alarms_fired_total counter
stead_alarms_fired_total 7
# HELP stead_objects_open Object databases open.
# TYPE stead_objects_open gauge
stead_objects_open 12
# HELP stead_turn_duration_seconds Time a turn took.
# TYPE stead_turn_duration_seconds histogram
stead_turn_duration_seconds_sum 1.011
stead_turn_duration_seconds_count 3
stead_turn_duration_seconds_bucket{le=\"0.005\"} 1
stead_turn_duration_seconds_bucket{le=\"0.05\"} 2
stead_turn_duration_seconds_bucket{le=\"+Inf\"} 3
# HELP stead_build_info The running version.
# TYPE stead_build_info gauge
stead_build_info{version=\"0.1.0\"} 1
";
        // `prometheus-client` keeps a family's label sets in a hash map: their order varies.
        assert_eq!(
            samples_sorted_within_families(&classic),
            samples_sorted_within_families(expected),
            "from:\n{open}"
        );
    }

    /// `text` with each run of consecutive sample lines sorted, metadata lines kept in place.
    fn samples_sorted_within_families(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut run: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                run.sort_unstable();
                out.extend(run.drain(..).map(str::to_owned));
                out.push(line.to_owned());
            } else {
                run.push(line);
            }
        }
        run.sort_unstable();
        out.extend(run.into_iter().map(str::to_owned));
        out
    }

    #[test]
    fn gauges_and_histograms_read_the_same_in_both_formats() {
        let open = encoded();
        let classic = openmetrics_to_classic(&open);
        for line in open.lines().filter(|l| {
            l.contains("stead_objects_open") || l.contains("stead_turn_duration_seconds")
        }) {
            if line.starts_with("# UNIT") {
                assert!(!classic.contains(line), "{line} kept:\n{classic}");
            } else {
                assert!(classic.contains(line), "{line} changed:\n{classic}");
            }
        }
    }

    #[test]
    fn exemplars_created_samples_and_eof_are_left_out_and_timestamps_turn_into_millis() {
        let open = "\
# HELP rpc RPCs.
# TYPE rpc counter
rpc_total{path=\"/a # b {c}\"} 5 # {trace_id=\"abc\"} 1.0 1700000000.5
rpc_created{path=\"/a # b {c}\"} 1700000000.25
# HELP temp Temperature \"now\".
# TYPE temp gauge
temp 21.5 1700000000.125
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le=\"1.0\"} 2 # {trace_id=\"x\"} 0.5
lat_bucket{le=\"+Inf\"} 2
lat_count 2
lat_sum 0.9
lat_created 1700000000
# TYPE mystery unknown
mystery 1
# EOF
";
        let expected = "\
# HELP rpc_total RPCs.
# TYPE rpc_total counter
rpc_total{path=\"/a # b {c}\"} 5
# HELP temp Temperature \"now\".
# TYPE temp gauge
temp 21.5 1700000000125
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le=\"1.0\"} 2
lat_bucket{le=\"+Inf\"} 2
lat_count 2
lat_sum 0.9
# TYPE mystery untyped
mystery 1
";
        assert_eq!(openmetrics_to_classic(open), expected);
    }

    #[test]
    fn openmetrics_only_when_the_scraper_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        assert_eq!(
            Exposition::negotiate(Some("Application/OpenMetrics-Text")),
            Exposition::OpenMetrics
        );
        assert_eq!(Exposition::negotiate(None), Exposition::Classic);
        assert_eq!(Exposition::negotiate(Some("*/*")), Exposition::Classic);
        assert_eq!(
            Exposition::negotiate(Some("text/plain;version=0.0.4")),
            Exposition::Classic
        );
        assert_eq!(
            Exposition::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Exposition::Classic
        );
        assert_eq!(
            Exposition::Classic.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let open = encoded();
        assert_eq!(Exposition::OpenMetrics.render(open.clone()), open);
        assert!(!Exposition::Classic.render(open).contains("# EOF"));
    }
}
