//! Per-host rates of the fetcher (pure): parsing `--host-rate` / `--default-host-rate`,
//! and which rate and metrics bucket a host falls under.
//!
//! Rates are `N/s`, `N/m` or `N/h` (`N` may be fractional: `0.5/s`). Host patterns are an
//! exact host (`api.example.com`, `127.0.0.1`) or `*.suffix`, which matches every name
//! below `suffix` but not `suffix` itself. An exact pattern beats a wildcard, a longer
//! wildcard beats a shorter one, and `--default-host-rate` covers every other host. A
//! bare `*` is refused: say `--default-host-rate`.
//!
//! Per-host metrics are bucketed by the `--host-rate` pattern naming the host, or `other`
//! ([`RateTable::bucket_of`]); the `host_rate` gauge of a bucket shows the rate last in
//! force for one of its hosts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tributary::runtime::metrics::{OTHER_HOSTS, metrics};

use super::limiter::Gcra;

/// Requests per second, finite and positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    pub fn per_second(self) -> f64 {
        self.0
    }

    /// The GCRA of this rate: interval 1/rate and no burst tolerance, so requests are
    /// spaced evenly and any window of `w` seconds holds at most `w × rate + 1` of them
    /// (an origin counting per second sees the limit, not the limit plus a burst).
    pub fn gcra(self) -> Gcra {
        Gcra {
            interval: Duration::from_secs_f64(1.0 / self.0),
            tolerance: Duration::ZERO,
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("bad rate {s:?}: {why} (say e.g. 20/s, 300/m, 0.5/s)");
        let (count, unit) = s.trim().split_once('/').ok_or_else(|| bad("no unit"))?;
        let count: f64 = count.trim().parse().map_err(|_| bad("not a number"))?;
        let per = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad("the unit must be s, m or h")),
        };
        let rate = count / per;
        if !rate.is_finite() || rate <= 0.0 || rate > 1_000_000.0 {
            return Err(bad("must be above zero and at most 1000000/s"));
        }
        Ok(Rate(rate))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// Which hosts a rate applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.suffix`: names ending in `.suffix`.
    Below(String),
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, host) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, s.clone()),
        };
        if s == "*" {
            return Err("a bare `*` is not a host pattern; use --default-host-rate".into());
        }
        if host.is_empty()
            || host.contains(['*', '/', '=', ',', ' '])
            || host.starts_with('.')
            || host.contains("..")
        {
            return Err(format!(
                "bad host pattern {s:?} (say example.com or *.example.com)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Below(host)
        } else {
            HostPattern::Exact(host)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Below(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// `--host-rate`: `host=rate` pairs, comma-separated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostRates(pub Vec<(HostPattern, Rate)>);

impl FromStr for HostRates {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rates: Vec<(HostPattern, Rate)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (host, rate) = part
                .split_once('=')
                .ok_or_else(|| format!("bad host rate {part:?} (say example.com=20/s)"))?;
            let pattern = HostPattern::parse(host)?;
            if rates.iter().any(|(p, _)| *p == pattern) {
                return Err(format!("host pattern {:?} given twice", host.trim()));
            }
            rates.push((pattern, rate.parse()?));
        }
        Ok(HostRates(rates))
    }
}

/// Every limit of a fetcher: the per-host rates and the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateTable {
    pub hosts: HostRates,
    pub default: Option<Rate>,
}

impl RateTable {
    pub fn is_empty(&self) -> bool {
        self.hosts.0.is_empty() && self.default.is_none()
    }

    /// The rate of `host` (lowercase, no port), if it has one.
    pub fn rate_of(&self, host: &str) -> Option<Rate> {
        self.pattern_of(host).map(|(_, rate)| rate).or(self.default)
    }

    /// The `--host-rate` pattern naming `host`, and its rate.
    fn pattern_of(&self, host: &str) -> Option<(&HostPattern, Rate)> {
        let host = host.trim_end_matches('.');
        let mut best: Option<(usize, &HostPattern, Rate)> = None;
        for (pattern, rate) in &self.hosts.0 {
            match pattern {
                HostPattern::Exact(h) if h == host => return Some((pattern, *rate)),
                HostPattern::Below(suffix)
                    if host.len() > suffix.len() + 1
                        && host.ends_with(suffix.as_str())
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                        && best.is_none_or(|(len, _, _)| suffix.len() > len) =>
                {
                    best = Some((suffix.len(), pattern, *rate));
                }
                _ => {}
            }
        }
        best.map(|(_, pattern, rate)| (pattern, rate))
    }

    /// The metrics bucket of `host`: the `--host-rate` pattern naming it, or
    /// [`OTHER_HOSTS`] (never the host itself, so the label set stays bounded).
    pub fn bucket_of(&self, host: &str) -> String {
        self.pattern_of(host)
            .map_or_else(|| OTHER_HOSTS.to_string(), |(p, _)| p.to_string())
    }

    /// Publishes every bucket's configured rate in the `host_rate` gauge.
    pub fn publish_rates(&self) {
        for (pattern, rate) in &self.hosts.0 {
            metrics().set_host_rate(&pattern.to_string(), rate.per_second());
        }
        if let Some(rate) = self.default {
            metrics().set_host_rate(OTHER_HOSTS, rate.per_second());
        }
    }
}

/// The host of a URL, lowercase, without the port.
pub fn host_of(url: &url::Url) -> Option<String> {
    url.host_str().map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> f64 {
        s.parse::<Rate>().unwrap().per_second()
    }

    #[test]
    fn rates_parse() {
        assert_eq!(rate("20/s"), 20.0);
        assert_eq!(rate("300/m"), 5.0);
        assert_eq!(rate("0.5/s"), 0.5);
        assert_eq!(rate(" 7200/h "), 2.0);
        for bad in [
            "20", "20/d", "x/s", "0/s", "-1/s", "inf/s", "NaN/s", "/s", "",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        let g = "50/s".parse::<Rate>().unwrap().gcra();
        assert_eq!(g.interval, Duration::from_millis(20));
        assert_eq!(g.tolerance, Duration::ZERO);
        let g = "0.5/s".parse::<Rate>().unwrap().gcra();
        assert_eq!(g.interval, Duration::from_secs(2));
    }

    #[test]
    fn host_rates_parse() {
        let r: HostRates = "Example.com=20/s, *.example.org=5/s,127.0.0.1=50/s"
            .parse()
            .unwrap();
        assert_eq!(
            r.0.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            vec![
                HostPattern::Exact("example.com".into()),
                HostPattern::Below("example.org".into()),
                HostPattern::Exact("127.0.0.1".into()),
            ]
        );
        assert_eq!("".parse::<HostRates>().unwrap(), HostRates::default());
        for bad in [
            "*=5/s",
            "example.com",
            "example.com=fast",
            "a.*.com=1/s",
            "*.=1/s",
            "=1/s",
            "http://x.com=1/s",
            "x.com=1/s,X.com=2/s",
        ] {
            assert!(bad.parse::<HostRates>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookup_prefers_exact_then_longest_wildcard_then_default() {
        let table = RateTable {
            hosts: "*.example.org=5/s,*.api.example.org=2/s,www.example.org=9/s"
                .parse()
                .unwrap(),
            default: None,
        };
        let of = |h| table.rate_of(h).map(Rate::per_second);
        assert_eq!(of("www.example.org"), Some(9.0));
        assert_eq!(of("a.example.org"), Some(5.0));
        assert_eq!(of("v1.api.example.org"), Some(2.0));
        assert_eq!(of("api.example.org"), Some(5.0));
        assert_eq!(of("example.org"), None);
        assert_eq!(of("badexample.org"), None);
        assert_eq!(of("a.example.org."), Some(5.0));
        let table = RateTable {
            default: Some("10/s".parse().unwrap()),
            ..table
        };
        assert_eq!(table.rate_of("other.net").map(Rate::per_second), Some(10.0));
        assert_eq!(table.bucket_of("v1.api.example.org"), "*.api.example.org");
        assert_eq!(table.bucket_of("www.example.org"), "www.example.org");
        assert_eq!(table.bucket_of("other.net"), "other");
        let url = url::Url::parse("http://A.Example.org:8080/x").unwrap();
        assert_eq!(table.bucket_of(&host_of(&url).unwrap()), "*.example.org");
        assert!(!table.is_empty());
        assert!(RateTable::default().is_empty());
    }
}
