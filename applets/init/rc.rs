//! `/etc/rc.toolbox`: the boot commands, parsed without I/O.
//!
//! One command a line, run in order. Words are split as a shell splits
//! them, without any expansion (svchost's `args =` rules): whitespace
//! separates, `'...'` is literal, `"..."` keeps spaces and honours `\"` and
//! `\\`, a backslash outside quotes escapes the next character. Blank lines
//! and lines whose first non-blank character is `#` are skipped. A last
//! word `&` starts the command without waiting for it. The lines
//! `poweroff`, `reboot` and `halt` are done by init itself.

use crate::words;

/// What init does when it finishes the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    PowerOff,
    Reboot,
    Halt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fork and exec `argv` (searched in PATH); wait for it unless `background`.
    Run { argv: Vec<String>, background: bool },
    /// Stop every process, sync, and power off / reboot / halt.
    Finish(Finish),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based, for messages.
    pub line: usize,
    pub action: Action,
}

/// The steps of an rc file, and one message per line that could not be
/// parsed (those lines are skipped; the rest still runs).
pub fn parse(text: &str) -> (Vec<Step>, Vec<String>) {
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut argv = match words::split(trimmed) {
            Ok(argv) => argv,
            Err(e) => {
                errors.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let background = argv.last().is_some_and(|w| w == "&");
        if background {
            argv.pop();
        }
        let finish = match argv.as_slice() {
            [only] if only == "poweroff" => Some(Finish::PowerOff),
            [only] if only == "reboot" => Some(Finish::Reboot),
            [only] if only == "halt" => Some(Finish::Halt),
            _ => None,
        };
        let action = match finish {
            Some(finish) if !background => Action::Finish(finish),
            Some(_) => {
                errors.push(format!(
                    "line {line}: '{trimmed}' cannot run in the background"
                ));
                continue;
            }
            None if argv.is_empty() => {
                errors.push(format!("line {line}: '&' without a command"));
                continue;
            }
            None => Action::Run { argv, background },
        };
        steps.push(Step { line, action });
    }
    (steps, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str], background: bool) -> Action {
        Action::Run {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            background,
        }
    }

    #[test]
    fn commands_are_split_like_a_shell_and_comments_skipped() {
        let text = "# boot\n\n  nbd --fork -D 'a disk' /srv/d.img\n\
                    timesyncd -q -s \"10.0.2.2:123\"\n\tsvchost -k net &\npoweroff\n";
        let (steps, errors) = parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            steps,
            [
                Step {
                    line: 3,
                    action: run(&["nbd", "--fork", "-D", "a disk", "/srv/d.img"], false)
                },
                Step {
                    line: 4,
                    action: run(&["timesyncd", "-q", "-s", "10.0.2.2:123"], false)
                },
                Step {
                    line: 5,
                    action: run(&["svchost", "-k", "net"], true)
                },
                Step {
                    line: 6,
                    action: Action::Finish(Finish::PowerOff)
                },
            ]
        );
    }

    #[test]
    fn finish_words_only_count_alone() {
        let (steps, _) = parse("reboot\nhalt\npoweroff -f\n/bin/poweroff\n");
        assert_eq!(steps[0].action, Action::Finish(Finish::Reboot));
        assert_eq!(steps[1].action, Action::Finish(Finish::Halt));
        // With arguments or a path it is an ordinary program.
        assert_eq!(steps[2].action, run(&["poweroff", "-f"], false));
        assert_eq!(steps[3].action, run(&["/bin/poweroff"], false));
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_still_runs() {
        let (steps, errors) = parse("echo 'oops\n&\npoweroff &\ntrue\n");
        assert_eq!(
            errors,
            [
                "line 1: unterminated single quote",
                "line 2: '&' without a command",
                "line 3: 'poweroff &' cannot run in the background",
            ]
        );
        assert_eq!(
            steps,
            [Step {
                line: 4,
                action: run(&["true"], false)
            }]
        );
    }
}
