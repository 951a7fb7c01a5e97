//! `sc`: the service controller client, Windows `sc` style. It finds a
//! service in whichever running svchost group hosts it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::control::{rundir, MAX_REQUEST};
use super::status::*;

const USAGE: &str = "usage: sc query|queryex [NAME] | start NAME [ARGS...] | stop NAME | \
pause NAME | continue NAME | qc NAME | qfailure NAME | list";

type Record = HashMap<String, String>;

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
    let name = args.get(1).map(String::as_str);
    let known = [
        "query",
        "queryex",
        "start",
        "stop",
        "pause",
        "continue",
        "qc",
        "qfailure",
        "list",
        "interrogate",
    ];
    if !known.contains(&verb) {
        eprintln!("sc: unknown command '{verb}'\n{USAGE}");
        return 1;
    }
    if !matches!(verb, "query" | "queryex" | "list") && name.is_none() {
        eprintln!("sc: {verb} needs a service name\n{USAGE}");
        return 1;
    }
    if args.iter().any(|a| a.contains(['\t', '\n'])) {
        eprintln!("sc: arguments may not contain tabs or newlines");
        return 1;
    }
    let sockets = group_sockets();
    let request = args.join("\t") + "\n";
    let mut records = Vec::new();
    let mut last_error = None;
    for sock in &sockets {
        match ask(sock, &request) {
            Ok(Ok(mut found)) => {
                records.append(&mut found);
                if name.is_some() {
                    break;
                }
            }
            Ok(Err(ERROR_SERVICE_DOES_NOT_EXIST)) => {}
            Ok(Err(code)) => {
                last_error = Some(code);
                break;
            }
            Err(_) => {} // a stale socket of a group that is gone
        }
    }
    if let Some(code) = last_error {
        return fail(verb, code);
    }
    if records.is_empty() && name.is_some() {
        return fail(verb, ERROR_SERVICE_DOES_NOT_EXIST);
    }
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
        "qc" => records.iter().for_each(print_config),
        "qfailure" => records.iter().for_each(print_failure),
        _ => {
            for r in &records {
                print_status(r, verb == "queryex");
            }
        }
    }
    0
}

fn fail(verb: &str, code: u32) -> i32 {
    let call = match verb {
        "start" => "StartService",
        "stop" | "pause" | "continue" | "interrogate" => "ControlService",
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
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("svchost.") && n.ends_with(".sock"))
        })
        .collect();
    found.sort();
    found
}

/// Sends a request; the inner error is the Windows code the host returned.
fn ask(sock: &PathBuf, request: &str) -> std::io::Result<Result<Vec<Record>, u32>> {
    let mut stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    let mut reply = String::new();
    stream
        .take(16 * MAX_REQUEST as u64 * 64)
        .read_to_string(&mut reply)?;
    let mut lines = reply.lines();
    match lines.next().unwrap_or("") {
        "ok" => {}
        other => {
            let code = other
                .strip_prefix("error ")
                .and_then(|c| c.parse().ok())
                .unwrap_or(ERROR_INVALID_PARAMETER);
            return Ok(Err(code));
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
    Ok(Ok(records))
}

fn field<'a>(r: &'a Record, key: &str) -> &'a str {
    r.get(key).map(String::as_str).unwrap_or("")
}

fn num(r: &Record, key: &str) -> u32 {
    field(r, key).parse().unwrap_or(0)
}

fn state_name(r: &Record) -> &'static str {
    State::from_code(num(r, "state"))
        .map(State::name)
        .unwrap_or("UNKNOWN")
}

fn print_status(r: &Record, extended: bool) {
    let status = Status {
        state: State::from_code(num(r, "state")).unwrap_or(State::Stopped),
        controls_accepted: num(r, "accepted"),
        win32_exit_code: num(r, "win32"),
        service_exit_code: num(r, "specific"),
        checkpoint: num(r, "checkpoint"),
        wait_hint_ms: num(r, "waithint"),
    };
    println!("\nSERVICE_NAME: {}", field(r, "service"));
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
    println!("        DISPLAY_NAME       : {}", field(r, "service"));
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
