//! The lines an isolated plugin's process and svchost exchange
//! (`isolate = process`; see `isolate`): parsed and printed without I/O.
//!
//! Child → parent: `status STATE ACCEPTED WIN32 SPECIFIC CHECKPOINT
//! WAITHINT` and a final `exit WIN32 SPECIFIC MESSAGE`; parent → child: a
//! control code per line.

use super::status::{State, Status};

/// Longest line either side sends or accepts.
pub const MAX_LINE: usize = 1024;

/// One line of the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Status(Status),
    Exit {
        win32: u32,
        specific: u32,
        message: String,
    },
}

impl Message {
    pub fn encode(&self) -> String {
        match self {
            Message::Status(s) => format!(
                "status {} {} {} {} {} {}\n",
                s.state as u32,
                s.controls_accepted,
                s.win32_exit_code,
                s.service_exit_code,
                s.checkpoint,
                s.wait_hint_ms
            ),
            Message::Exit {
                win32,
                specific,
                message,
            } => {
                let mut message = message.replace(['\n', '\r'], " ");
                let mut end = message.len().min(MAX_LINE / 2);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                format!("exit {win32} {specific} {message}\n")
            }
        }
    }

    /// Parses one line (without its newline); None for anything malformed.
    pub fn decode(line: &str) -> Option<Message> {
        let (kind, rest) = line.split_once(' ')?;
        match kind {
            "status" => {
                let numbers: Vec<u32> = rest
                    .split(' ')
                    .map(|w| w.parse().ok())
                    .collect::<Option<_>>()?;
                let [state, accepted, win32, specific, checkpoint, wait_hint] = numbers[..] else {
                    return None;
                };
                Some(Message::Status(Status {
                    state: State::from_code(state)?,
                    controls_accepted: accepted,
                    win32_exit_code: win32,
                    service_exit_code: specific,
                    checkpoint,
                    wait_hint_ms: wait_hint,
                }))
            }
            "exit" => {
                let mut words = rest.splitn(3, ' ');
                let win32 = words.next()?.parse().ok()?;
                let specific = words.next()?.parse().ok()?;
                Some(Message::Exit {
                    win32,
                    specific,
                    message: words.next().unwrap_or("").to_owned(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let status = Status {
            state: State::StopPending,
            controls_accepted: 5,
            win32_exit_code: 1066,
            service_exit_code: 7,
            checkpoint: 2,
            wait_hint_ms: 3000,
        };
        for m in [
            Message::Status(status),
            Message::Exit {
                win32: 127,
                specific: 0,
                message: "x.so: entry point 'Main' not found".into(),
            },
            Message::Exit {
                win32: 0,
                specific: 0,
                message: String::new(),
            },
        ] {
            let line = m.encode();
            assert!(line.ends_with('\n'));
            assert_eq!(Message::decode(line.trim_end_matches('\n')), Some(m));
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let line = Message::Exit {
            win32: 1,
            specific: 2,
            message: "é".repeat(MAX_LINE),
        }
        .encode();
        assert!(line.len() <= MAX_LINE && line.ends_with("é\n"), "{line}");
    }

    #[test]
    fn exit_messages_stay_on_one_line() {
        let line = Message::Exit {
            win32: 1,
            specific: 2,
            message: "a\nb\rc".into(),
        }
        .encode();
        assert_eq!(line, "exit 1 2 a b c\n");
    }

    #[test]
    fn malformed_lines_are_refused() {
        for line in [
            "",
            "status",
            "status 4 1 0 0 0",
            "status 4 1 0 0 0 0 0",
            "status 9 1 0 0 0 0",
            "status 4 1 0 0 0 x",
            "status -1 1 0 0 0 0",
            "status 4 1 0 0 0 99999999999",
            "exit",
            "exit 1",
            "exit x 1 m",
            "frob 1 2 3",
        ] {
            assert_eq!(Message::decode(line), None, "{line:?}");
        }
    }
}
