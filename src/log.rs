//! Logging: tracing events as one line each, to stderr in the foreground, to
//! syslog (`/dev/log`, facility daemon, tagged `applet[pid]`) when
//! daemonized, or nowhere. `LOGGING=none|syslog|stderr` overrides, as in
//! busybox.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::num::NonZeroU64;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{self, Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

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
    let subscriber = match target {
        LogTarget::None => return,
        LogTarget::Stderr => LineSubscriber::new(level, Some(name), Sink::Stderr),
        // The prefix is left to syslog's tag there.
        LogTarget::Syslog => match Syslog::connect(name) {
            Some(syslog) => LineSubscriber::new(level, None, Sink::Syslog(syslog)),
            None => return,
        },
    };
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Where finished lines go.
enum Sink {
    /// One write per line.
    Stderr,
    Syslog(Syslog),
    #[cfg(test)]
    Memory(Arc<Mutex<Vec<String>>>),
}

/// A span the subscriber keeps: its label (svchost's `service` span names
/// the service an event belongs to) and how many handles are alive.
struct SpanEntry {
    id: u64,
    label: String,
    refs: usize,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// tracing's `Subscriber`, written for this one job: a level filter and one
/// line per event. (tracing-subscriber's registry and fmt layer did the same
/// for some 100 KiB more of every build.)
struct LineSubscriber {
    max: LevelFilter,
    /// `name: ` before each line.
    prefix: Option<String>,
    sink: Sink,
    next_id: AtomicU64,
    spans: Mutex<Vec<SpanEntry>>,
}

impl LineSubscriber {
    fn new(level: Level, prefix: Option<&str>, sink: Sink) -> LineSubscriber {
        LineSubscriber {
            max: LevelFilter::from_level(level),
            prefix: prefix.map(str::to_owned),
            sink,
            next_id: AtomicU64::new(1),
            spans: Mutex::new(Vec::new()),
        }
    }

    fn spans(&self) -> std::sync::MutexGuard<'_, Vec<SpanEntry>> {
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `prefix: span: warning: message key=value`, without the newline.
    fn format(&self, event: &Event<'_>) -> String {
        let mut line = String::with_capacity(128);
        if let Some(prefix) = &self.prefix {
            line.push_str(prefix);
            line.push_str(": ");
        }
        // `svchost: disk1: message`.
        ENTERED.with(|entered| {
            let entered = entered.borrow();
            if entered.is_empty() {
                return;
            }
            let spans = self.spans();
            for id in entered.iter() {
                if let Some(span) = spans.iter().find(|s| s.id == *id) {
                    line.push_str(&span.label);
                    line.push_str(": ");
                }
            }
        });
        match *event.metadata().level() {
            Level::ERROR => line.push_str("error: "),
            Level::WARN => line.push_str("warning: "),
            _ => {}
        }
        event.record(&mut FieldWriter::new(&mut line));
        line
    }
}

impl Subscriber for LineSubscriber {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut fields = String::new();
        attrs.record(&mut FieldWriter::new(&mut fields));
        let label = if fields.is_empty() {
            attrs.metadata().name().to_owned()
        } else {
            match fields.strip_prefix("name=") {
                Some(rest) => rest.to_owned(),
                None => fields,
            }
        };
        self.spans().push(SpanEntry { id, label, refs: 1 });
        Id::from_non_zero_u64(NonZeroU64::new(id).unwrap_or(NonZeroU64::MIN))
    }

    fn record(&self, span: &Id, values: &span::Record<'_>) {
        let mut spans = self.spans();
        if let Some(entry) = spans.iter_mut().find(|s| s.id == span.into_u64()) {
            let mut more = String::new();
            values.record(&mut FieldWriter::new(&mut more));
            if !more.is_empty() {
                entry.label.push(' ');
                entry.label.push_str(&more);
            }
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let line = self.format(event);
        match &self.sink {
            Sink::Stderr => {
                let mut line = line;
                line.push('\n');
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::Syslog(syslog) => syslog.send(severity(event.metadata().level()), &line),
            #[cfg(test)]
            Sink::Memory(lines) => lines.lock().unwrap().push(line),
        }
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|entered| entered.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            if let Some(at) = entered.iter().rposition(|id| *id == span.into_u64()) {
                entered.remove(at);
            }
        });
    }

    fn clone_span(&self, span: &Id) -> Id {
        if let Some(entry) = self.spans().iter_mut().find(|s| s.id == span.into_u64()) {
            entry.refs += 1;
        }
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        let mut spans = self.spans();
        let Some(at) = spans.iter().position(|s| s.id == span.into_u64()) else {
            return false;
        };
        spans[at].refs -= 1;
        if spans[at].refs == 0 {
            spans.swap_remove(at);
            true
        } else {
            false
        }
    }
}

/// Fields as tracing-subscriber's default format writes them: the message
/// bare (control characters escaped, so a peer cannot steer a terminal),
/// then `key=value` with values in their `Debug` form, space-separated.
struct FieldWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> FieldWriter<'a> {
    fn new(out: &'a mut String) -> FieldWriter<'a> {
        FieldWriter { out, first: true }
    }

    fn pad(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(' ');
        }
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"))
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pad();
        let _ = match field.name() {
            "message" => write!(Escaping(self.out), "{value:?}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.out, "{name}={value:?}")
            }
        };
    }
}

/// Writes control characters that steer terminals as escapes.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for ch in s.chars() {
            match ch {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}' => {
                    let _ = write!(self.0, "\\x{:02x}", ch as u32);
                }
                _ => self.0.push(ch),
            }
        }
        Ok(())
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

impl Syslog {
    /// Sends one line as one datagram: `<priority>tag: line`.
    fn send(&self, severity: u8, line: &str) {
        let mut datagram = Vec::with_capacity(line.len() + 32);
        let _ = write!(datagram, "<{}>{}: ", LOG_DAEMON | severity, self.tag);
        datagram.extend_from_slice(line.trim_end_matches('\n').as_bytes());
        let _ = self.sock.send(&datagram);
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
        syslog.send(severity(&Level::WARN), "warning: disk full\n");
        let mut buf = [0u8; 128];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<28>nbd[42]: warning: disk full");
    }

    fn capture(level: Level, prefix: Option<&str>) -> (LineSubscriber, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = LineSubscriber::new(level, prefix, Sink::Memory(lines.clone()));
        (subscriber, lines)
    }

    #[test]
    fn lines_carry_level_word_message_and_fields() {
        let (subscriber, lines) = capture(Level::INFO, None);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(peer = %"192.0.2.1", port = 123u16, "no reply from {}", "ntp1");
            tracing::error!(text = "quoted", "bad packet");
            tracing::info!("plain");
            tracing::debug!("filtered out");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "warning: no reply from ntp1 peer=192.0.2.1 port=123",
                "error: bad packet text=\"quoted\"",
                "plain",
            ]
        );
    }

    #[test]
    fn spans_name_the_service_and_nest() {
        let (subscriber, lines) = capture(Level::INFO, None);
        tracing::subscriber::with_default(subscriber, || {
            let disk = tracing::info_span!("service", name = %"disk1");
            let inner = tracing::info_span!("conn");
            disk.in_scope(|| {
                tracing::info!("started");
                inner.in_scope(|| tracing::warn!("slow"));
            });
            tracing::info!("outside");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            ["disk1: started", "disk1: conn: warning: slow", "outside"]
        );
    }

    #[test]
    fn closed_spans_are_forgotten() {
        let (subscriber, _) = capture(Level::INFO, None);
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("service", name = %"a");
            let copy = span.clone();
            drop(span);
            drop(copy);
        });
        let subscriber = dispatch.downcast_ref::<LineSubscriber>().unwrap();
        assert!(subscriber.spans().is_empty());
    }

    #[test]
    fn terminal_escapes_in_messages_are_escaped() {
        let (subscriber, lines) = capture(Level::INFO, None);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("name {}", "x\x1b[2Jy");
        });
        assert_eq!(*lines.lock().unwrap(), ["name x\\x1b[2Jy"]);
    }

    #[test]
    fn stderr_lines_start_with_the_applet_name() {
        let (subscriber, lines) = capture(Level::WARN, Some("timesyncd"));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("clock stepped");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            ["timesyncd: warning: clock stepped"]
        );
    }
}
