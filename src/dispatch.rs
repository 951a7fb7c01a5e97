//! busybox-style dispatch: the basename of argv[0] names the applet
//! (`/sbin/nbd`), else the first argument does (`toolbox nbd ...`).

use std::ffi::OsString;
use std::path::Path;

use crate::applets::{self, Applet, Entry, APPLETS};

const EXIT_NOT_FOUND: i32 = 127;

pub fn main(args: Vec<OsString>) -> i32 {
    let invoked = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(applet) = applets::find(&invoked) {
        return run(applet, &args);
    }
    if !invoked.is_empty() && !invoked.starts_with("toolbox") {
        eprintln!("toolbox: applet not found: {invoked}");
        return EXIT_NOT_FOUND;
    }
    let rest = &args[args.len().min(1)..];
    let Some(first) = rest.first() else {
        print_usage();
        return 0;
    };
    let first = first.to_string_lossy();
    match first.as_ref() {
        "--help" | "-h" => {
            print_usage();
            0
        }
        "--list" | "-l" => {
            for applet in APPLETS {
                println!("{}", applet.name);
            }
            0
        }
        "--version" | "-V" => {
            println!("toolbox {}", env!("CARGO_PKG_VERSION"));
            0
        }
        "--install" => crate::install::main(&rest[1..]),
        name => match applets::find(name) {
            Some(applet) => run(applet, rest),
            None => {
                eprintln!("toolbox: applet not found: {name}");
                EXIT_NOT_FOUND
            }
        },
    }
}

/// `args[0]` is the applet's name as invoked.
fn run(applet: &Applet, args: &[OsString]) -> i32 {
    match applet.entry {
        Entry::Command(main) => main(args),
        Entry::Service(parse) => match parse(args) {
            Ok(launch) => crate::runtime::run_standalone(applet.name, launch),
            Err(code) => code,
        },
    }
}

fn print_usage() {
    println!(
        "toolbox {}: system daemons in one binary\n\n\
         Usage: toolbox APPLET [ARGS...]   (or run a link named APPLET)\n       \
         toolbox --list | --help | --version\n       \
         toolbox --install [-s] [--force] DIR\n\n\
         Applets:",
        env!("CARGO_PKG_VERSION")
    );
    let width = APPLETS.iter().map(|a| a.name.len()).max().unwrap_or(0);
    for applet in APPLETS {
        println!("  {:width$}  {}", applet.name, applet.summary);
    }
}
