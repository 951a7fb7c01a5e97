//! Logging: tracing events as one line each, to stderr in the foreground, to
//! syslog (`/dev/log`, facility daemon, tagged `applet[pid]`) when
//! daemonized, or nowhere. `LOGGING=none|syslog|stderr` overrides, as in
//! busybox.

use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::service::LogTarget;

/// The target chosen by the `LOGGING` environment variable, if it names one.
pub fn target_from_env() -> Option<LogTarget> {
    match std::env::var("LOGGING").ok()?.as_str() {
        "none" => Some(LogTarget::None),
        "syslog" => Some(LogTarget::Syslog),
        "stderr" => Some(LogTarget::Stderr),
        _ => None,
    }
}

/// `base` raised by one step per `-v`.
pub fn level_for(base: Level, verbosity: u8) -> Level {
    const ORDER: [Level; 5] = [
        Level::ERROR,
        Level::WARN,
        Level::INFO,
        Level::DEBUG,
        Level::TRACE,
    ];
    let start = ORDER.iter().position(|l| *l == base).unwrap_or(1);
    ORDER[(start + verbosity as usize).min(ORDER.len() - 1)]
}

/// Installs the process-wide subscriber. Only the host (standalone runtime or
/// svchost) calls this, never a service. A second call is a no-op.
pub fn init(name: &str, level: Level, target: LogTarget) {
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let result = match target {
        LogTarget::None => return,
        LogTarget::Stderr => tracing_subscriber::fmt()
            .with_max_level(filter)
            .event_format(LineFormat {
                prefix: Some(name.to_owned()),
            })
            .with_writer(std::io::stderr)
            .try_init(),
        LogTarget::Syslog => match Syslog::connect(name) {
            Some(syslog) => tracing_subscriber::fmt()
                .with_max_level(filter)
                .event_format(LineFormat { prefix: None })
                .with_writer(syslog)
                .try_init(),
            None => return,
        },
    };
    let _ = result;
}

/// `name: warning: message key=value` (the prefix is left to syslog's tag there).
struct LineFormat {
    prefix: Option<String>,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some(prefix) = &self.prefix {
            write!(writer, "{prefix}: ")?;
        }
        // Spans name the service an event belongs to (svchost hosts several):
        // `svchost: disk1: message`.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                match ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    Some(fields) if !fields.is_empty() => {
                        let text = fields.as_str();
                        let text = text.strip_prefix("name=").unwrap_or(text);
                        write!(writer, "{text}: ")?
                    }
                    _ => write!(writer, "{}: ", span.name())?,
                }
            }
        }
        match *event.metadata().level() {
            Level::ERROR => write!(writer, "error: ")?,
            Level::WARN => write!(writer, "warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Writes each event as one datagram to /dev/log.
#[derive(Clone)]
struct Syslog {
    sock: Arc<UnixDatagram>,
    tag: Arc<str>,
}

impl Syslog {
    fn connect(name: &str) -> Option<Syslog> {
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect("/dev/log").ok()?;
        Some(Syslog {
            sock: Arc::new(sock),
            tag: format!("{name}[{}]", std::process::id()).into(),
        })
    }
}

const LOG_DAEMON: u8 = 3 << 3;

fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One syslog message, sent when the formatter drops it.
pub struct SyslogLine {
    syslog: Syslog,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        let _ = self.syslog.sock.send(&self.buf);
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        self.line(6)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        self.line(severity(meta.level()))
    }
}

impl Syslog {
    fn line(&self, severity: u8) -> SyslogLine {
        let mut buf = Vec::with_capacity(128);
        let _ = write!(buf, "<{}>{}: ", LOG_DAEMON | severity, self.tag);
        SyslogLine {
            syslog: self.clone(),
            buf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_v_raises_the_level() {
        assert_eq!(level_for(Level::WARN, 0), Level::WARN);
        assert_eq!(level_for(Level::WARN, 1), Level::INFO);
        assert_eq!(level_for(Level::WARN, 2), Level::DEBUG);
        assert_eq!(level_for(Level::WARN, 9), Level::TRACE);
        assert_eq!(level_for(Level::INFO, 1), Level::DEBUG);
    }

    #[test]
    fn syslog_lines_carry_priority_and_tag() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let syslog = Syslog {
            sock: Arc::new(a),
            tag: "nbd[42]".into(),
        };
        {
            let mut line = syslog.line(severity(&Level::WARN));
            line.write_all(b"warning: disk full\n").unwrap();
        }
        let mut buf = [0u8; 128];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<28>nbd[42]: warning: disk full");
    }
}
