//! timesyncd.conf (systemd's syntax and validation) and server names.
//! Sans-IO: text in, a [`TimeConfig`] plus warnings out, or an error that
//! names the file and line.

use std::net::IpAddr;

pub const DEFAULT_PORT: u16 = 123;
pub const DEFAULT_POLL_MIN: f64 = 32.0;
pub const DEFAULT_POLL_MAX: f64 = 2048.0;
/// systemd refuses shorter minimum poll intervals (and so do we: servers
/// rate-limit clients that poll faster).
pub const LEAST_POLL_MIN: f64 = 16.0;
pub const DEFAULT_ROOT_DISTANCE_MAX: f64 = 5.0;
pub const DEFAULT_CONNECTION_RETRY: f64 = 30.0;
pub const DEFAULT_SAVE_INTERVAL: f64 = 60.0;

#[derive(Clone, Debug, PartialEq)]
pub struct TimeConfig {
    /// NTP=: `None` when the file does not set it.
    pub ntp: Option<Vec<Server>>,
    pub fallback_ntp: Option<Vec<Server>>,
    pub root_distance_max: f64,
    pub poll_min: f64,
    pub poll_max: f64,
    pub connection_retry: f64,
    /// `None`: never save the clock file periodically (infinity).
    pub save_interval: Option<f64>,
    /// The `[Server]` section.
    pub server: super::server::ServerConfig,
    /// NTS=: NTS-KE servers (`HOST[:PORT]`, port 4460 by default), used
    /// like NTP= servers but authenticated.
    pub nts: Option<Vec<Server>>,
    /// NTSTrustedCertificates=: the CAs NTS-KE servers are checked against
    /// (default: the system's).
    pub nts_trusted_certificates: Option<std::path::PathBuf>,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            ntp: None,
            fallback_ntp: None,
            root_distance_max: DEFAULT_ROOT_DISTANCE_MAX,
            poll_min: DEFAULT_POLL_MIN,
            poll_max: DEFAULT_POLL_MAX,
            connection_retry: DEFAULT_CONNECTION_RETRY,
            save_interval: Some(DEFAULT_SAVE_INTERVAL),
            server: Default::default(),
            nts: None,
            nts_trusted_certificates: None,
        }
    }
}

/// `HOST[:PORT]` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
}

/// Parses `name`, `name:port`, `1.2.3.4[:port]`, `::1`, `[::1]:port`.
pub fn parse_server(text: &str) -> Result<Server, String> {
    let bad = || format!("invalid server '{text}'");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (host, port)
    } else if text.matches(':').count() > 1 {
        // A bare IPv6 literal: no port possible.
        text.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (text, None)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("invalid port in server '{text}'")),
        },
    };
    if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
        return Err(bad());
    }
    Ok(Server {
        host: host.to_owned(),
        port,
    })
}

fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// systemd's time span syntax: `90`, `1.5min`, `1h 30min`, `500ms`;
/// a bare number is seconds. `None` for `infinity`.
pub fn parse_timespan(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(None);
    }
    let bad = || format!("invalid time span '{text}'");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "us" | "usec" | "µs" => 1e-6,
            "ms" | "msec" => 1e-3,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            "M" | "month" | "months" => 2_629_800.0,
            "y" | "year" | "years" => 31_557_600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
    }
    Ok(Some(total))
}

/// The parsed file and what was odd about it.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    pub config: TimeConfig,
    pub warnings: Vec<String>,
}

/// Parses timesyncd.conf text; `path` only names the file in messages.
pub fn parse(text: &str, path: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut section: Option<String> = None;
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, raw)) = lines.next() {
        let number = index + 1;
        // Backslash continues a line, as in systemd.
        let mut line = raw.trim().to_owned();
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, more)) => {
                    line.push(' ');
                    line.push_str(more.trim());
                }
                None => break,
            }
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("{path}:{number}: invalid section header '{line}'"))?;
            if name != "Time" && name != "Server" {
                parsed.warnings.push(format!(
                    "{path}:{number}: unknown section [{name}], ignoring"
                ));
            }
            section = Some(name.to_owned());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("{path}:{number}: expected KEY=VALUE, got '{line}'"));
        };
        let (key, value) = (key.trim(), value.trim());
        match section.as_deref() {
            Some("Time") => {}
            Some("Server") => {
                let known = parsed
                    .config
                    .server
                    .set(key, value)
                    .map_err(|e| format!("{path}:{number}: {key}=: {e}"))?;
                if !known {
                    parsed.warnings.push(format!(
                        "{path}:{number}: unknown key '{key}' in section [Server], ignoring"
                    ));
                }
                continue;
            }
            Some(_) => continue,
            None => {
                parsed.warnings.push(format!(
                    "{path}:{number}: assignment outside of a section, ignoring"
                ));
                continue;
            }
        }
        let at = |e: String| format!("{path}:{number}: {key}=: {e}");
        let c = &mut parsed.config;
        match key {
            "NTP" => append_servers(&mut c.ntp, value).map_err(at)?,
            "FallbackNTP" => append_servers(&mut c.fallback_ntp, value).map_err(at)?,
            "RootDistanceMaxSec" => c.root_distance_max = finite_span(value).map_err(at)?,
            "PollIntervalMinSec" => c.poll_min = finite_span(value).map_err(at)?,
            "PollIntervalMaxSec" => c.poll_max = finite_span(value).map_err(at)?,
            "ConnectionRetrySec" => c.connection_retry = finite_span(value).map_err(at)?,
            "SaveIntervalSec" => c.save_interval = parse_timespan(value).map_err(at)?,
            "NTS" => append_nts_servers(&mut c.nts, value).map_err(at)?,
            "NTSTrustedCertificates" => {
                c.nts_trusted_certificates = Some(value).filter(|v| !v.is_empty()).map(Into::into)
            }
            _ => parsed.warnings.push(format!(
                "{path}:{number}: unknown key '{key}' in section [Time], ignoring"
            )),
        }
    }
    validate(&mut parsed);
    Ok(parsed)
}

fn finite_span(value: &str) -> Result<f64, String> {
    parse_timespan(value)?.ok_or_else(|| "infinity is not allowed here".to_owned())
}

/// An empty assignment resets the list, as in systemd; otherwise the names
/// are appended.
fn append_servers(list: &mut Option<Vec<Server>>, value: &str) -> Result<(), String> {
    let list = list.get_or_insert_with(Vec::new);
    if value.is_empty() {
        list.clear();
        return Ok(());
    }
    for word in value.split_whitespace() {
        list.push(parse_server(word)?);
    }
    Ok(())
}

/// The NTS-KE port when `NTS=` or `--nts` names none.
pub const DEFAULT_NTS_KE_PORT: u16 = 4460;

/// Like [`parse_server`], but a server without a port gets NTS-KE's.
pub fn parse_nts_server(text: &str) -> Result<Server, String> {
    let mut server = parse_server(text)?;
    let has_port = if text.starts_with('[') {
        text.contains("]:")
    } else {
        text.matches(':').count() == 1
    };
    if !has_port {
        server.port = DEFAULT_NTS_KE_PORT;
    }
    Ok(server)
}

fn append_nts_servers(list: &mut Option<Vec<Server>>, value: &str) -> Result<(), String> {
    let list = list.get_or_insert_with(Vec::new);
    if value.is_empty() {
        list.clear();
        return Ok(());
    }
    for word in value.split_whitespace() {
        list.push(parse_nts_server(word)?);
    }
    Ok(())
}

/// systemd's range checks: out-of-range values are warned about and
/// replaced by defaults.
fn validate(parsed: &mut Parsed) {
    let c = &mut parsed.config;
    if c.poll_min < LEAST_POLL_MIN {
        parsed.warnings.push(format!(
            "invalid PollIntervalMinSec= (at least {LEAST_POLL_MIN}s), using {DEFAULT_POLL_MIN}s"
        ));
        c.poll_min = DEFAULT_POLL_MIN;
    }
    if c.poll_max < c.poll_min {
        let max = DEFAULT_POLL_MAX.max(c.poll_min * 32.0);
        parsed.warnings.push(format!(
            "PollIntervalMaxSec= is smaller than PollIntervalMinSec=, using {max}s"
        ));
        c.poll_max = max;
    }
    if c.connection_retry < 1.0 {
        parsed.warnings.push(format!(
            "invalid ConnectionRetrySec= (at least 1s), using {DEFAULT_CONNECTION_RETRY}s"
        ));
        c.connection_retry = DEFAULT_CONNECTION_RETRY;
    }
    if c.root_distance_max <= 0.0 {
        parsed.warnings.push(format!(
            "invalid RootDistanceMaxSec=, using {DEFAULT_ROOT_DISTANCE_MAX}s"
        ));
        c.root_distance_max = DEFAULT_ROOT_DISTANCE_MAX;
    }
    if c.save_interval == Some(0.0) {
        c.save_interval = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(host: &str, port: u16) -> Server {
        Server {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn servers_in_every_spelling() {
        assert_eq!(
            parse_server("pool.ntp.org").unwrap(),
            srv("pool.ntp.org", 123)
        );
        assert_eq!(
            parse_server("localhost:1123").unwrap(),
            srv("localhost", 1123)
        );
        assert_eq!(parse_server("10.0.0.1:5").unwrap(), srv("10.0.0.1", 5));
        assert_eq!(parse_server("::1").unwrap(), srv("::1", 123));
        assert_eq!(parse_server("[fe80::1]:999").unwrap(), srv("fe80::1", 999));
        assert_eq!(parse_server("[::1]").unwrap(), srv("::1", 123));
        for bad in [
            "",
            "a..b",
            "host:0",
            "host:x",
            "[::1",
            "[nothost]:1",
            "bad name",
            "-x.org",
            "[::1]x",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_spans_follow_systemd() {
        assert_eq!(parse_timespan("32").unwrap(), Some(32.0));
        assert_eq!(parse_timespan("5min").unwrap(), Some(300.0));
        assert_eq!(parse_timespan("1h 30min").unwrap(), Some(5400.0));
        assert_eq!(parse_timespan("1.5s").unwrap(), Some(1.5));
        assert_eq!(parse_timespan("500ms").unwrap(), Some(0.5));
        assert_eq!(parse_timespan("infinity").unwrap(), None);
        for bad in ["", "abc", "5 parsecs", "min", "1..2s"] {
            assert!(parse_timespan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_file_parses() {
        let text = "# comment\n[Time]\nNTP=a.example b.example:1123\nNTP=[::1]:5\n\
                    FallbackNTP=fb.example\nRootDistanceMaxSec=2\nPollIntervalMinSec=64\n\
                    PollIntervalMaxSec=1h\nConnectionRetrySec=5\nSaveIntervalSec=infinity\n";
        let p = parse(text, "t.conf").unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let c = p.config;
        assert_eq!(
            c.ntp.unwrap(),
            vec![srv("a.example", 123), srv("b.example", 1123), srv("::1", 5)]
        );
        assert_eq!(c.fallback_ntp.unwrap(), vec![srv("fb.example", 123)]);
        assert_eq!(c.root_distance_max, 2.0);
        assert_eq!((c.poll_min, c.poll_max), (64.0, 3600.0));
        assert_eq!(c.connection_retry, 5.0);
        assert_eq!(c.save_interval, None);
    }

    #[test]
    fn empty_assignment_resets_the_list() {
        let p = parse(
            "[Time]\nNTP=a.example\nNTP=\nNTP=b.example\nFallbackNTP=\n",
            "t",
        )
        .unwrap();
        assert_eq!(p.config.ntp.unwrap(), vec![srv("b.example", 123)]);
        assert_eq!(p.config.fallback_ntp, Some(vec![]));
    }

    #[test]
    fn bad_values_are_rejected_with_the_line_number() {
        let e = parse("[Time]\n\nPollIntervalMinSec=soon\n", "/etc/x.conf").unwrap_err();
        assert!(e.starts_with("/etc/x.conf:3: PollIntervalMinSec="), "{e}");
        let e = parse("[Time]\nNTP=good.example bad..name\n", "f").unwrap_err();
        assert!(e.starts_with("f:2: NTP="), "{e}");
        let e = parse("[Time]\njunk\n", "f").unwrap_err();
        assert!(e.starts_with("f:2:"), "{e}");
    }

    #[test]
    fn unknown_keys_and_sections_are_warned_about() {
        let p = parse("Foo=1\n[Time]\nFoo=bar\n[Other]\nX=1\n", "f").unwrap();
        assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
        assert!(p.warnings[1].starts_with("f:3: unknown key 'Foo'"));
    }

    #[test]
    fn out_of_range_values_fall_back_as_systemd_does() {
        let p = parse("[Time]\nPollIntervalMinSec=5\nConnectionRetrySec=0\n", "f").unwrap();
        assert_eq!(p.config.poll_min, DEFAULT_POLL_MIN);
        assert_eq!(p.config.connection_retry, DEFAULT_CONNECTION_RETRY);
        let p = parse(
            "[Time]\nPollIntervalMinSec=128\nPollIntervalMaxSec=64\n",
            "f",
        )
        .unwrap();
        assert_eq!(p.config.poll_max, 128.0 * 32.0);
        let p = parse("[Time]\nPollIntervalMinSec=16\n", "f").unwrap();
        assert_eq!(p.config.poll_min, 16.0, "16 s is the least systemd allows");
    }

    #[test]
    fn random_text_never_panics_the_parser() {
        let mut rng = crate::rng::SplitMix64::new(11);
        let pieces = [
            "[Time]",
            "\n",
            "NTP=",
            "FallbackNTP=",
            "PollIntervalMinSec=",
            "=",
            " ",
            "\\",
            "[",
            "]",
            "µs",
            "1.5",
            "min",
            "::1",
            "[::1]:",
            "#",
            "infinity",
            "\u{0}",
            "é",
        ];
        for _ in 0..5_000 {
            let n = (rng.next_u64() % 30) as usize;
            let text: String = (0..n)
                .map(|_| pieces[(rng.next_u64() % pieces.len() as u64) as usize])
                .collect();
            let _ = parse(&text, "fuzz");
            let _ = parse_server(&text);
            let _ = parse_timespan(&text);
        }
    }

    #[test]
    fn server_section_parses() {
        let p = parse(
            "[Time]\nNTP=a.example\n[Server]\nListen=127.0.0.1:1123\nAllow=10.0.0.0/8\n\
             RateLimit=interval 1 burst 2\nLocalStratum=9\nBogus=1\n",
            "f",
        )
        .unwrap();
        let s = &p.config.server;
        assert!(s.enabled);
        assert_eq!(s.listen, vec!["127.0.0.1:1123".parse().unwrap()]);
        assert_eq!(s.local_stratum, Some(9));
        assert_eq!(s.rate_limit.unwrap().burst, 2);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        let e = parse("[Server]\nListen=nowhere:1\n", "f").unwrap_err();
        assert!(e.starts_with("f:2: Listen="), "{e}");
    }

    #[test]
    fn continuation_lines_join() {
        let p = parse("[Time]\nNTP=a.example \\\n  b.example\n", "f").unwrap();
        assert_eq!(p.config.ntp.unwrap().len(), 2);
    }

    #[test]
    fn nts_servers_and_their_trusted_certificates() {
        let p = parse(
            "[Time]\nNTS=nts.example [::1] [::1]:5000 10.0.0.1:4461\nNTSTrustedCertificates=/etc/ca.pem\n",
            "f",
        )
        .unwrap();
        let ports: Vec<u16> = p.config.nts.unwrap().iter().map(|s| s.port).collect();
        assert_eq!(ports, [4460, 4460, 5000, 4461]);
        assert_eq!(
            p.config.nts_trusted_certificates.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }
}
