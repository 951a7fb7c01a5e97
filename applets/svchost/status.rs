//! The Windows service status record (SERVICE_STATUS) and its names, as
//! `sc` prints them.

pub const SERVICE_WIN32_SHARE_PROCESS: u32 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Stopped = 1,
    StartPending = 2,
    StopPending = 3,
    Running = 4,
    ContinuePending = 5,
    PausePending = 6,
    Paused = 7,
}

impl State {
    pub fn from_code(code: u32) -> Option<State> {
        Some(match code {
            1 => State::Stopped,
            2 => State::StartPending,
            3 => State::StopPending,
            4 => State::Running,
            5 => State::ContinuePending,
            6 => State::PausePending,
            7 => State::Paused,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Stopped => "STOPPED",
            State::StartPending => "START_PENDING",
            State::StopPending => "STOP_PENDING",
            State::Running => "RUNNING",
            State::ContinuePending => "CONTINUE_PENDING",
            State::PausePending => "PAUSE_PENDING",
            State::Paused => "PAUSED",
        }
    }
}

// Controls a service accepts (SERVICE_ACCEPT_*).
pub const ACCEPT_STOP: u32 = 0x1;
pub const ACCEPT_PAUSE_CONTINUE: u32 = 0x2;
pub const ACCEPT_SHUTDOWN: u32 = 0x4;
/// The service rereads its configuration when asked (SIGHUP to svchost,
/// `sc control NAME paramchange`).
pub const ACCEPT_PARAMCHANGE: u32 = 0x8;

// Control codes sent to a service (SERVICE_CONTROL_*).
pub const CONTROL_STOP: u32 = 1;
pub const CONTROL_PAUSE: u32 = 2;
pub const CONTROL_CONTINUE: u32 = 3;
pub const CONTROL_INTERROGATE: u32 = 4;
pub const CONTROL_SHUTDOWN: u32 = 5;
pub const CONTROL_PARAMCHANGE: u32 = 6;

// Win32 error codes used in exit codes and sc messages.
pub const ERROR_FILE_NOT_FOUND: u32 = 2;
pub const ERROR_ACCESS_DENIED: u32 = 5;
pub const ERROR_INVALID_PARAMETER: u32 = 87;
pub const ERROR_MOD_NOT_FOUND: u32 = 126;
pub const ERROR_PROC_NOT_FOUND: u32 = 127;
pub const ERROR_SERVICE_REQUEST_TIMEOUT: u32 = 1053;
pub const ERROR_INVALID_SERVICE_CONTROL: u32 = 1052;
pub const ERROR_SERVICE_ALREADY_RUNNING: u32 = 1056;
pub const ERROR_SERVICE_DOES_NOT_EXIST: u32 = 1060;
pub const ERROR_SERVICE_CANNOT_ACCEPT_CTRL: u32 = 1061;
pub const ERROR_SERVICE_NOT_ACTIVE: u32 = 1062;
pub const ERROR_SERVICE_SPECIFIC_ERROR: u32 = 1066;
pub const ERROR_PROCESS_ABORTED: u32 = 1067;

/// The text Windows gives for an error code.
pub fn error_text(code: u32) -> &'static str {
    match code {
        ERROR_FILE_NOT_FOUND => "The system cannot find the file specified.",
        ERROR_ACCESS_DENIED => "Access is denied.",
        ERROR_INVALID_PARAMETER => "The parameter is incorrect.",
        ERROR_MOD_NOT_FOUND => "The specified module could not be found.",
        ERROR_PROC_NOT_FOUND => "The specified procedure could not be found.",
        ERROR_INVALID_SERVICE_CONTROL => "The requested control is not valid for this service.",
        ERROR_SERVICE_REQUEST_TIMEOUT => {
            "The service did not respond to the start or control request in a timely fashion."
        }
        ERROR_SERVICE_ALREADY_RUNNING => "An instance of the service is already running.",
        ERROR_SERVICE_DOES_NOT_EXIST => {
            "The specified service does not exist as an installed service."
        }
        ERROR_SERVICE_CANNOT_ACCEPT_CTRL => {
            "The service cannot accept control messages at this time."
        }
        ERROR_SERVICE_NOT_ACTIVE => "The service has not been started.",
        ERROR_SERVICE_SPECIFIC_ERROR => "The service has returned a service-specific error code.",
        ERROR_PROCESS_ABORTED => "The process terminated unexpectedly.",
        _ => "Unknown error.",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub controls_accepted: u32,
    pub win32_exit_code: u32,
    pub service_exit_code: u32,
    pub checkpoint: u32,
    pub wait_hint_ms: u32,
}

impl Status {
    pub fn stopped() -> Status {
        Status {
            state: State::Stopped,
            controls_accepted: 0,
            win32_exit_code: 0,
            service_exit_code: 0,
            checkpoint: 0,
            wait_hint_ms: 0,
        }
    }

    /// `(STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)` as sc prints it.
    pub fn controls_text(&self) -> String {
        let c = self.controls_accepted;
        format!(
            "({}, {}, {})",
            if c & ACCEPT_STOP != 0 {
                "STOPPABLE"
            } else {
                "NOT_STOPPABLE"
            },
            if c & ACCEPT_PAUSE_CONTINUE != 0 {
                "PAUSABLE"
            } else {
                "NOT_PAUSABLE"
            },
            if c & ACCEPT_SHUTDOWN != 0 {
                "ACCEPTS_SHUTDOWN"
            } else {
                "IGNORES_SHUTDOWN"
            },
        )
    }
}
