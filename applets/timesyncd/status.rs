//! The daemon's state as a small key=value file (written atomically after
//! every change), and `--status`, which prints it the way
//! `timedatectl timesync-status` does.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

pub const DEFAULT_PATH: &str = "/run/toolbox/timesyncd.state";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceLine {
    pub name: String,
    pub address: String,
    pub state: String,
    pub reach: u8,
    pub stratum: u8,
    pub offset: Option<f64>,
    pub delay: Option<f64>,
    pub note: String,
    /// How selection judged it: `selected`, `candidate`, `falseticker`,
    /// `spike` (its newest sample was filtered out) or empty.
    pub selection: String,
    /// NTS sources only: `authenticated` once a reply passed NTS, else
    /// `not authenticated`; empty for plain NTP.
    pub nts: String,
    /// NTS replies dropped (failed authentication or not our identifier).
    pub nts_rejected: u64,
    pub nts_cookies: usize,
}

impl SourceLine {
    /// chronyc `sources`' mark for the selection state.
    pub fn mark(&self) -> char {
        match self.selection.as_str() {
            "selected" => '*',
            "candidate" => '+',
            "falseticker" => 'x',
            "spike" => '~',
            _ => '?',
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub pid: u32,
    pub synchronized: bool,
    pub adjusting: bool,
    pub server_name: String,
    pub server_address: String,
    pub stratum: u8,
    pub offset: f64,
    pub delay: f64,
    pub jitter: f64,
    pub poll_interval: f64,
    pub poll_min: f64,
    pub poll_max: f64,
    pub packet_count: u64,
    pub leap: String,
    pub frequency_ppm: f64,
    pub selection: String,
    pub sources: Vec<SourceLine>,
}

impl Snapshot {
    /// The sd_notify STATUS= text, in systemd-timesyncd's words.
    pub fn notify_text(&self) -> String {
        if self.synchronized {
            format!(
                "Synchronized to time server {} ({}).",
                self.server_address, self.server_name
            )
        } else if let Some(s) = self.sources.iter().find(|s| s.state == "active") {
            format!("Connecting to time server {} ({}).", s.address, s.name)
        } else {
            "Idle.".to_owned()
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let yes = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(out, "pid={}", self.pid);
        let _ = writeln!(out, "synchronized={}", yes(self.synchronized));
        let _ = writeln!(out, "adjusting={}", yes(self.adjusting));
        let _ = writeln!(out, "server_name={}", self.server_name);
        let _ = writeln!(out, "server_address={}", self.server_address);
        let _ = writeln!(out, "stratum={}", self.stratum);
        let _ = writeln!(out, "offset={:+.9}", self.offset);
        let _ = writeln!(out, "delay={:.9}", self.delay);
        let _ = writeln!(out, "jitter={:.9}", self.jitter);
        let _ = writeln!(out, "poll_interval={}", self.poll_interval);
        let _ = writeln!(out, "poll_min={}", self.poll_min);
        let _ = writeln!(out, "poll_max={}", self.poll_max);
        let _ = writeln!(out, "packet_count={}", self.packet_count);
        let _ = writeln!(out, "leap={}", self.leap);
        let _ = writeln!(out, "frequency_ppm={:+.3}", self.frequency_ppm);
        let _ = writeln!(out, "selection={}", self.selection);
        for s in &self.sources {
            let num = |v: Option<f64>| v.map(|x| format!("{x:+.9}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "source={}|{}|{}|{:o}|{}|{}|{}|{}",
                s.name,
                s.address,
                s.state,
                s.reach,
                s.stratum,
                num(s.offset),
                num(s.delay),
                s.note.replace(['|', '\n'], " ")
            );
            // Its own key, so that older readers skip it.
            if !s.selection.is_empty() {
                let _ = writeln!(out, "selection_of_source={}", s.selection);
            }
            if !s.nts.is_empty() {
                let _ = writeln!(
                    out,
                    "nts_of_source={}|{}|{}",
                    s.nts, s.nts_cookies, s.nts_rejected
                );
            }
        }
        out
    }

    /// Parses what [`Snapshot::encode`] wrote; unknown keys are skipped so
    /// an older `--status` reads a newer daemon's file.
    pub fn decode(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let f = || value.parse::<f64>().unwrap_or(0.0);
            match key {
                "pid" => s.pid = value.parse().unwrap_or(0),
                "synchronized" => s.synchronized = value == "yes",
                "adjusting" => s.adjusting = value == "yes",
                "server_name" => s.server_name = value.to_owned(),
                "server_address" => s.server_address = value.to_owned(),
                "stratum" => s.stratum = value.parse().unwrap_or(0),
                "offset" => s.offset = f(),
                "delay" => s.delay = f(),
                "jitter" => s.jitter = f(),
                "poll_interval" => s.poll_interval = f(),
                "poll_min" => s.poll_min = f(),
                "poll_max" => s.poll_max = f(),
                "packet_count" => s.packet_count = value.parse().unwrap_or(0),
                "leap" => s.leap = value.to_owned(),
                "frequency_ppm" => s.frequency_ppm = f(),
                "selection" => s.selection = value.to_owned(),
                "selection_of_source" => {
                    if let Some(last) = s.sources.last_mut() {
                        last.selection = value.to_owned();
                    }
                }
                "nts_of_source" => {
                    let mut parts = value.split('|');
                    if let Some(last) = s.sources.last_mut() {
                        last.nts = parts.next().unwrap_or_default().to_owned();
                        last.nts_cookies = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                        last.nts_rejected = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    }
                }
                "source" => {
                    let fields: Vec<&str> = value.splitn(8, '|').collect();
                    if fields.len() == 8 {
                        let opt = |v: &str| v.parse::<f64>().ok();
                        s.sources.push(SourceLine {
                            name: fields[0].to_owned(),
                            address: fields[1].to_owned(),
                            state: fields[2].to_owned(),
                            reach: u8::from_str_radix(fields[3], 8).unwrap_or(0),
                            stratum: fields[4].parse().unwrap_or(0),
                            offset: opt(fields[5]),
                            delay: opt(fields[6]),
                            note: fields[7].to_owned(),
                            ..SourceLine::default()
                        });
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// `timedatectl timesync-status`-style text.
    pub fn render(&self, running: bool) -> String {
        let mut out = String::new();
        let server = if self.server_address.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{} ({})", self.server_address, self.server_name)
        };
        let _ = writeln!(out, "       Server: {server}");
        if !self.server_address.is_empty() {
            let _ = writeln!(out, "      Stratum: {}", self.stratum);
            let _ = writeln!(out, "       Offset: {}", format_offset(self.offset));
            let _ = writeln!(out, "        Delay: {}", format_duration(self.delay));
            let _ = writeln!(out, "       Jitter: {}", format_duration(self.jitter));
        }
        let _ = writeln!(
            out,
            "Poll interval: {} (min: {}; max {})",
            format_duration(self.poll_interval),
            format_duration(self.poll_min),
            format_duration(self.poll_max)
        );
        let _ = writeln!(out, " Packet count: {}", self.packet_count);
        let _ = writeln!(out, "         Leap: {}", self.leap);
        if self.adjusting {
            let _ = writeln!(out, "    Frequency: {:+.3}ppm", self.frequency_ppm);
        } else {
            let _ = writeln!(out, "    Adjusting: no (measuring only)");
        }
        let _ = writeln!(
            out,
            " Synchronized: {}",
            if self.synchronized { "yes" } else { "no" }
        );
        if !self.selection.is_empty() {
            let _ = writeln!(out, "    Selection: {}", self.selection);
        }
        if !running {
            let _ = writeln!(out, "       Daemon: not running (pid {})", self.pid);
        }
        if !self.sources.is_empty() {
            let _ = writeln!(
                out,
                "\nSources (* selected, + candidate, x falseticker, ~ spike filtered, ? not considered):"
            );
            for s in &self.sources {
                let selection = if s.selection.is_empty() {
                    "-"
                } else {
                    &s.selection
                };
                let _ = write!(
                    out,
                    "{} {:<24} {:<24} {:<12} {:<11}",
                    s.mark(),
                    s.name,
                    s.address,
                    s.state,
                    selection
                );
                if s.reach != 0 {
                    let _ = write!(out, " reach {:03o} stratum {}", s.reach, s.stratum);
                }
                if let (Some(o), Some(d)) = (s.offset, s.delay) {
                    let _ = write!(
                        out,
                        " offset {} delay {}",
                        format_offset(o),
                        format_duration(d)
                    );
                }
                if !s.nts.is_empty() {
                    let _ = write!(
                        out,
                        " NTS {}, {} cookies, {} rejected",
                        s.nts, s.nts_cookies, s.nts_rejected
                    );
                }
                if !s.note.is_empty() {
                    let _ = write!(out, " ({})", s.note);
                }
                let _ = writeln!(out);
            }
        }
        out
    }
}

/// Writes the snapshot atomically (temp file and rename).
pub fn write(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, snapshot.encode())?;
    std::fs::rename(&tmp, path)
}

/// `12us`, `1.234ms`, `2.500s`, `34min 8s`.
pub fn format_duration(secs: f64) -> String {
    let a = secs.abs();
    if a < 1e-3 {
        format!("{:.0}us", secs * 1e6)
    } else if a < 1.0 {
        format!("{:.3}ms", secs * 1e3)
    } else if a < 60.0 {
        let text = format!("{secs:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text}s")
    } else {
        let total = a.round() as u64;
        let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
        let mut parts = Vec::new();
        if h > 0 {
            parts.push(format!("{h}h"));
        }
        if m > 0 {
            parts.push(format!("{m}min"));
        }
        if s > 0 {
            parts.push(format!("{s}s"));
        }
        parts.join(" ")
    }
}

pub fn format_offset(secs: f64) -> String {
    let text = format_duration(secs);
    if secs >= 0.0 {
        format!("+{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            pid: 42,
            synchronized: true,
            adjusting: false,
            server_name: "localhost".into(),
            server_address: "127.0.0.1:123".into(),
            stratum: 2,
            offset: 0.000012,
            delay: 0.000412,
            jitter: 0.00001,
            poll_interval: 64.0,
            poll_min: 32.0,
            poll_max: 2048.0,
            packet_count: 5,
            leap: "normal".into(),
            frequency_ppm: 0.0,
            selection: String::new(),
            sources: vec![SourceLine {
                name: "localhost".into(),
                address: "127.0.0.1:123".into(),
                state: "active".into(),
                reach: 0o377,
                stratum: 2,
                offset: Some(0.000012),
                delay: Some(0.000412),
                note: String::new(),
                selection: "selected".into(),
                nts: "authenticated".into(),
                nts_cookies: 8,
                nts_rejected: 1,
            }],
        }
    }

    #[test]
    fn round_trips_through_the_file_format() {
        let s = sample();
        assert_eq!(Snapshot::decode(&s.encode()), s);
    }

    #[test]
    fn renders_like_timedatectl() {
        let text = sample().render(true);
        assert!(
            text.contains("       Server: 127.0.0.1:123 (localhost)"),
            "{text}"
        );
        assert!(
            text.contains("Poll interval: 1min 4s (min: 32s; max 34min 8s)"),
            "{text}"
        );
        assert!(text.contains(" Synchronized: yes"), "{text}");
        assert!(text.contains("       Offset: +12us"), "{text}");
        assert!(text.contains("reach 377"), "{text}");
        assert!(
            text.contains(" NTS authenticated, 8 cookies, 1 rejected"),
            "{text}"
        );
        assert!(
            text.contains(
                "* localhost                127.0.0.1:123            active       selected"
            ),
            "{text}"
        );
    }

    #[test]
    fn every_selection_state_has_its_mark_and_survives_the_file() {
        let mut s = sample();
        let base = s.sources[0].clone();
        s.sources = ["selected", "candidate", "falseticker", "spike", ""]
            .iter()
            .map(|sel| SourceLine {
                selection: sel.to_string(),
                ..base.clone()
            })
            .collect();
        let marks: Vec<char> = s.sources.iter().map(SourceLine::mark).collect();
        assert_eq!(marks, ['*', '+', 'x', '~', '?']);
        assert_eq!(Snapshot::decode(&s.encode()), s);
        // An older reader's view: the key it does not know is skipped.
        let old: String = s
            .encode()
            .lines()
            .filter(|l| !l.starts_with("selection_of_source="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Snapshot::decode(&old).sources.len(), 5);
    }

    #[test]
    fn notify_texts_follow_systemd() {
        let mut s = sample();
        assert_eq!(
            s.notify_text(),
            "Synchronized to time server 127.0.0.1:123 (localhost)."
        );
        s.synchronized = false;
        assert_eq!(
            s.notify_text(),
            "Connecting to time server 127.0.0.1:123 (localhost)."
        );
        s.sources.clear();
        assert_eq!(s.notify_text(), "Idle.");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(0.000412), "412us");
        assert_eq!(format_duration(0.0015), "1.500ms");
        assert_eq!(format_duration(32.0), "32s");
        assert_eq!(format_duration(2048.0), "34min 8s");
        assert_eq!(format_offset(-0.3), "-300.000ms");
    }
}
