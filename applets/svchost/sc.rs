//! `sc`: the service controller client, Windows `sc` style. It finds a
//! service in whichever running svchost group hosts it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::control::{rundir, MAX_REQUEST};
use super::status::*;

const USAGE: &str = "usage: sc query|queryex [NAME] [state= active|inactive|all] | \
start NAME [ARGS...] | stop NAME | pause NAME | continue NAME | \
control NAME paramchange|stop|pause|continue|interrogate | qc NAME | qfailure NAME | list";

type Record = HashMap<String, String>;

/// How long a group gets to answer. Groups are asked at once, so one that
/// hangs (stopped, deadlocked) costs this much, not a 30 s read timeout
/// per group.
const GROUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Which services a bare `sc query` lists (`state= active|inactive|all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateFilter {
    Active,
    Inactive,
    All,
}

impl StateFilter {
    fn keeps(self, r: &Record) -> bool {
        let stopped = num(r, "state") == State::Stopped as u32;
        match self {
            StateFilter::Active => !stopped,
            StateFilter::Inactive => stopped,
            StateFilter::All => true,
        }
    }
}

/// `sc query|queryex [NAME] [state= active|inactive|all] [type= service|all]`,
/// Windows spelling (the value after `state=` is its own word), with
/// `state=all` accepted too.
fn query_arguments(words: &[String]) -> Result<(Option<String>, StateFilter), String> {
    let mut name = None;
    let mut filter = StateFilter::Active;
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let Some((key, value)) = word.split_once('=') else {
            if name.replace(word.clone()).is_some() {
                return Err(format!("unexpected argument '{word}'"));
            }
            continue;
        };
        let value = if value.is_empty() {
            words
                .next()
                .ok_or_else(|| format!("{key}= needs a value"))?
                .as_str()
        } else {
            value
        };
        match (
            key.to_ascii_lowercase().as_str(),
            value.to_ascii_lowercase().as_str(),
        ) {
            ("state", "active") => filter = StateFilter::Active,
            ("state", "inactive") => filter = StateFilter::Inactive,
            ("state", "all") => filter = StateFilter::All,
            // Everything svchost hosts is a WIN32_SHARE_PROCESS service.
            ("type", "service" | "all") => {}
            ("state", other) | ("type", other) => {
                return Err(format!("invalid {key}= value '{other}'"))
            }
            (other, _) => return Err(format!("unknown option '{other}='")),
        }
    }
    Ok((name, filter))
}

pub fn main(argv: &[OsString]) -> i32 {
    let args: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(verb) = args.first().map(String::as_str) else {
        eprintln!("{USAGE}");
        return 1;
    };
    let known = [
        "query",
        "queryex",
        "start",
        "stop",
        "pause",
        "continue",
        "control",
        "qc",
        "qfailure",
        "list",
        "interrogate",
    ];
    if !known.contains(&verb) {
        eprintln!("sc: unknown command '{verb}'\n{USAGE}");
        return 1;
    }
    if args.iter().any(|a| a.contains(['\t', '\n'])) {
        eprintln!("sc: arguments may not contain tabs or newlines");
        return 1;
    }
    let (name, filter) = match verb {
        "query" | "queryex" => match query_arguments(&args[1..]) {
            Ok(parsed) => parsed,
            Err(e) => {
                eprintln!("sc: {verb}: {e}\n{USAGE}");
                return 1;
            }
        },
        // `sc list` shows every service, as it always has.
        _ => (args.get(1).cloned(), StateFilter::All),
    };
    if !matches!(verb, "query" | "queryex" | "list") && name.is_none() {
        eprintln!("sc: {verb} needs a service name\n{USAGE}");
        return 1;
    }
    if verb == "control" {
        match args.get(2) {
            Some(word) if super::control::control_code(word).is_some() => {}
            Some(word) => {
                eprintln!("sc: control: unknown control '{word}'\n{USAGE}");
                return 1;
            }
            None => {
                eprintln!("sc: control needs a control (paramchange, ...)\n{USAGE}");
                return 1;
            }
        }
    }
    let groups = group_sockets();
    let (records, unresponsive) = match &name {
        None => {
            let answers = ask_all(&groups, &format!("{verb}\n"), false);
            let mut records = Vec::new();
            let mut unresponsive = Vec::new();
            for (group, answer) in answers {
                match answer {
                    Answer::Records(mut found) => records.append(&mut found),
                    Answer::Error(code) => return fail(verb, code),
                    Answer::Stale => {}
                    Answer::Silent(why) => unresponsive.push((group, why)),
                }
            }
            (records, unresponsive)
        }
        Some(name) => {
            // Find the group hosting the service, asking all at once; then
            // send anything that changes state to that group alone.
            let answers = ask_all(&groups, &format!("query\t{name}\n"), true);
            let mut host = None;
            let mut unresponsive = Vec::new();
            for (group, answer) in answers {
                match answer {
                    Answer::Records(found) if host.is_none() => host = Some((group, found)),
                    Answer::Records(_) => {}
                    Answer::Error(ERROR_SERVICE_DOES_NOT_EXIST) | Answer::Stale => {}
                    Answer::Error(code) => return fail(verb, code),
                    Answer::Silent(why) => unresponsive.push((group, why)),
                }
            }
            let Some((group, found)) = host else {
                for (group, why) in &unresponsive {
                    eprintln!("sc: group {} did not answer: {why}", group_name(group));
                }
                // It may live in the group that does not answer.
                return fail(
                    verb,
                    if unresponsive.is_empty() {
                        ERROR_SERVICE_DOES_NOT_EXIST
                    } else {
                        ERROR_SERVICE_REQUEST_TIMEOUT
                    },
                );
            };
            if matches!(verb, "query") {
                (found, Vec::new())
            } else {
                let request = args.join("\t") + "\n";
                match ask_all(std::slice::from_ref(&group), &request, false).pop() {
                    Some((_, Answer::Records(records))) => (records, Vec::new()),
                    Some((_, Answer::Error(code))) => return fail(verb, code),
                    Some((_, Answer::Stale)) => return fail(verb, ERROR_SERVICE_DOES_NOT_EXIST),
                    Some((_, Answer::Silent(why))) => {
                        eprintln!("sc: group {} did not answer: {why}", group_name(&group));
                        return fail(verb, ERROR_SERVICE_REQUEST_TIMEOUT);
                    }
                    None => return fail(verb, ERROR_SERVICE_REQUEST_TIMEOUT),
                }
            }
        }
    };
    let records: Vec<&Record> = records
        .iter()
        .filter(|r| name.is_some() || filter.keeps(r))
        .collect();
    match verb {
        "list" => {
            for r in &records {
                println!(
                    "{:<20} {:<12} {}",
                    field(r, "service"),
                    field(r, "group"),
                    state_name(r)
                );
            }
        }
        "qc" => records.iter().for_each(|r| print_config(r)),
        "qfailure" => records.iter().for_each(|r| print_failure(r)),
        _ => {
            for r in &records {
                print_status(r, verb == "queryex", name.is_none());
            }
        }
    }
    if unresponsive.is_empty() {
        return 0;
    }
    for (group, why) in &unresponsive {
        println!(
            "\n[SC] group {} FAILED {ERROR_SERVICE_REQUEST_TIMEOUT}:\n\n{} ({why})\n",
            group_name(group),
            error_text(ERROR_SERVICE_REQUEST_TIMEOUT)
        );
    }
    1
}

fn fail(verb: &str, code: u32) -> i32 {
    let call = match verb {
        "start" => "StartService",
        "stop" | "pause" | "continue" | "interrogate" | "control" => "ControlService",
        "qc" => "QueryServiceConfig",
        "qfailure" => "QueryServiceConfig2",
        _ => "EnumQueryServicesStatus:OpenService",
    };
    let call = if code == ERROR_SERVICE_DOES_NOT_EXIST || code == ERROR_ACCESS_DENIED {
        if verb == "query" || verb == "queryex" {
            "EnumQueryServicesStatus:OpenService"
        } else {
            "OpenService"
        }
    } else {
        call
    };
    println!("[SC] {call} FAILED {code}:\n\n{}\n", error_text(code));
    1
}

fn group_sockets() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(rundir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| group_of(p).is_some())
        .collect();
    found.sort();
    found
}

/// GROUP of `svchost.GROUP.sock`.
fn group_of(sock: &Path) -> Option<&str> {
    sock.file_name()?
        .to_str()?
        .strip_prefix("svchost.")?
        .strip_suffix(".sock")
        .filter(|g| !g.is_empty())
}

fn group_name(sock: &Path) -> String {
    group_of(sock).unwrap_or("?").to_owned()
}

/// What one group said.
#[derive(Debug)]
enum Answer {
    Records(Vec<Record>),
    /// The Windows code the host returned.
    Error(u32),
    /// Nobody listens there: the socket of a group that is gone.
    Stale,
    /// The group is there but did not answer in time (or broke off).
    Silent(String),
}

/// Asks every group at once; answers in the order of `socks`, within
/// GROUP_TIMEOUT however many groups hang. `until_found`: stop at the first
/// group that has records (looking a service up), the rest unasked.
fn ask_all(socks: &[PathBuf], request: &str, until_found: bool) -> Vec<(PathBuf, Answer)> {
    let (tx, rx) = std::sync::mpsc::channel();
    for (index, sock) in socks.iter().enumerate() {
        let worker = tx.clone();
        let sock = sock.clone();
        let request = request.to_owned();
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = worker.send((index, ask(&sock, &request)));
            });
        if let Err(e) = spawned {
            let _ = tx.send((index, Answer::Silent(format!("cannot ask: {e}"))));
        }
    }
    drop(tx);
    let mut answers: Vec<Option<Answer>> = socks.iter().map(|_| None).collect();
    let deadline = Instant::now() + GROUP_TIMEOUT;
    while answers.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((index, answer)) => {
                let found = matches!(answer, Answer::Records(_));
                answers[index] = Some(answer);
                if found && until_found {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    socks
        .iter()
        .cloned()
        .zip(answers)
        .map(|(sock, answer)| {
            let answer = answer.unwrap_or_else(|| {
                Answer::Silent(format!("no answer within {}s", GROUP_TIMEOUT.as_secs()))
            });
            (sock, answer)
        })
        .collect()
}

fn ask(sock: &Path, request: &str) -> Answer {
    let mut stream = match UnixStream::connect(sock) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
            return Answer::Stale
        }
        Err(e) => return Answer::Silent(e.to_string()),
    };
    let exchanged = (|| {
        stream.set_read_timeout(Some(GROUP_TIMEOUT))?;
        stream.set_write_timeout(Some(GROUP_TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        let mut reply = String::new();
        stream
            .take(16 * MAX_REQUEST as u64 * 64)
            .read_to_string(&mut reply)?;
        Ok::<_, std::io::Error>(reply)
    })();
    match exchanged {
        Ok(reply) => parse_reply(&reply),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Answer::Silent(format!("no answer within {}s", GROUP_TIMEOUT.as_secs()))
        }
        Err(e) => Answer::Silent(e.to_string()),
    }
}

fn parse_reply(reply: &str) -> Answer {
    let mut lines = reply.lines();
    match lines.next().unwrap_or("") {
        "ok" => {}
        "" => return Answer::Silent("closed without an answer".into()),
        other => {
            let code = other
                .strip_prefix("error ")
                .and_then(|c| c.parse().ok())
                .unwrap_or(ERROR_INVALID_PARAMETER);
            return Answer::Error(code);
        }
    }
    let mut records = Vec::new();
    let mut current = Record::new();
    for line in lines {
        if line.is_empty() {
            if !current.is_empty() {
                records.push(std::mem::take(&mut current));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            current.insert(k.to_owned(), v.to_owned());
        }
    }
    if !current.is_empty() {
        records.push(current);
    }
    Answer::Records(records)
}

fn field<'a>(r: &'a Record, key: &str) -> &'a str {
    r.get(key).map(String::as_str).unwrap_or("")
}

/// A group file gives no display names: the service's name stands in (a
/// host that sends `display=` wins).
fn display_name(r: &Record) -> &str {
    match field(r, "display") {
        "" => field(r, "service"),
        display => display,
    }
}

fn num(r: &Record, key: &str) -> u32 {
    field(r, key).parse().unwrap_or(0)
}

fn state_name(r: &Record) -> &'static str {
    State::from_code(num(r, "state"))
        .map(State::name)
        .unwrap_or("UNKNOWN")
}

/// `enumerated`: part of a bare `sc query`, which names each service's
/// DISPLAY_NAME too, as Windows does.
fn print_status(r: &Record, extended: bool, enumerated: bool) {
    let status = Status {
        state: State::from_code(num(r, "state")).unwrap_or(State::Stopped),
        controls_accepted: num(r, "accepted"),
        win32_exit_code: num(r, "win32"),
        service_exit_code: num(r, "specific"),
        checkpoint: num(r, "checkpoint"),
        wait_hint_ms: num(r, "waithint"),
    };
    println!("\nSERVICE_NAME: {}", field(r, "service"));
    if enumerated {
        println!("DISPLAY_NAME: {}", display_name(r));
    }
    println!(
        "        TYPE               : {:<2}  WIN32_SHARE_PROCESS",
        format!("{:x}", num(r, "type"))
    );
    println!(
        "        STATE              : {}  {}",
        status.state as u32,
        status.state.name()
    );
    println!("                                {}", status.controls_text());
    println!(
        "        WIN32_EXIT_CODE    : {}  (0x{:x})",
        status.win32_exit_code, status.win32_exit_code
    );
    println!(
        "        SERVICE_EXIT_CODE  : {}  (0x{:x})",
        status.service_exit_code, status.service_exit_code
    );
    println!("        CHECKPOINT         : 0x{:x}", status.checkpoint);
    println!("        WAIT_HINT          : 0x{:x}", status.wait_hint_ms);
    if extended {
        println!("        PID                : {}", num(r, "pid"));
        println!("        FLAGS              :");
    }
    let message = field(r, "message");
    if !message.is_empty() {
        println!("        MESSAGE            : {message}");
    }
}

fn print_config(r: &Record) {
    let start = match field(r, "start") {
        "auto" => "2   AUTO_START",
        _ => "3   DEMAND_START",
    };
    println!("[SC] QueryServiceConfig SUCCESS\n");
    println!("SERVICE_NAME: {}", field(r, "service"));
    println!(
        "        TYPE               : {:<2}  WIN32_SHARE_PROCESS",
        format!("{:x}", num(r, "type"))
    );
    println!("        START_TYPE         : {start}");
    println!("        ERROR_CONTROL      : 1   NORMAL");
    println!("        BINARY_PATH_NAME   : {}", field(r, "binary"));
    println!("        LOAD_ORDER_GROUP   : {}", field(r, "group"));
    println!("        TAG                : 0");
    println!("        DISPLAY_NAME       : {}", display_name(r));
    println!("        DEPENDENCIES       :");
    println!("        SERVICE_START_NAME : LocalSystem");
}

fn print_failure(r: &Record) {
    println!("[SC] QueryServiceConfig2 SUCCESS\n");
    println!("SERVICE_NAME: {}", field(r, "service"));
    println!(
        "        RESET_PERIOD (in seconds)    : {}",
        field(r, "reset")
    );
    println!("        REBOOT_MESSAGE               :");
    println!("        COMMAND_LINE                 :");
    let actions: Vec<String> = field(r, "actions")
        .split_whitespace()
        .map(|a| match a.split_once('/') {
            Some(("restart", ms)) => format!("RESTART -- Delay = {ms} milliseconds."),
            _ => "NONE".to_string(),
        })
        .collect();
    for (i, a) in actions.iter().enumerate() {
        if i == 0 {
            println!("        FAILURE_ACTIONS              : {a}");
        } else {
            println!("                                       {a}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn query_takes_windows_state_and_type_options() {
        let parse = |t: &str| query_arguments(&words(t));
        assert_eq!(parse(""), Ok((None, StateFilter::Active)));
        assert_eq!(parse("state= all"), Ok((None, StateFilter::All)));
        assert_eq!(parse("state=all"), Ok((None, StateFilter::All)));
        assert_eq!(
            parse("type= service state= inactive"),
            Ok((None, StateFilter::Inactive))
        );
        assert_eq!(
            parse("disk1"),
            Ok((Some("disk1".into()), StateFilter::Active))
        );
        assert!(parse("state=").is_err());
        assert!(parse("state= sleepy").is_err());
        assert!(parse("bufsize= 10").is_err());
        assert!(parse("a b").is_err());
    }

    #[test]
    fn the_state_filter_keeps_what_it_names() {
        let record =
            |state: State| Record::from([("state".to_owned(), (state as u32).to_string())]);
        let (running, stopped) = (record(State::Running), record(State::Stopped));
        let pending = record(State::StopPending);
        assert!(StateFilter::Active.keeps(&running) && StateFilter::Active.keeps(&pending));
        assert!(!StateFilter::Active.keeps(&stopped));
        assert!(StateFilter::Inactive.keeps(&stopped) && !StateFilter::Inactive.keeps(&running));
        assert!(StateFilter::All.keeps(&stopped) && StateFilter::All.keeps(&running));
    }

    #[test]
    fn replies_parse_into_records_errors_or_silence() {
        match parse_reply("ok\nservice=a\nstate=4\n\nservice=b\nstate=1\n") {
            Answer::Records(r) => assert_eq!(r.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_reply("error 1060\n"), Answer::Error(1060)));
        assert!(matches!(parse_reply(""), Answer::Silent(_)));
        assert_eq!(
            group_of(Path::new("/run/toolbox/svchost.storage.sock")),
            Some("storage")
        );
        assert_eq!(group_of(Path::new("/run/toolbox/svchost..sock")), None);
    }
}
