//! THE applet table: one row per applet, gated by the applet's Cargo feature.
//! Adding an applet means writing its module and adding one row here.

use std::ffi::OsString;

use crate::service::Launch;

/// How an applet is entered.
pub enum Entry {
    /// A daemon: its argument parser returns a [`Launch`] (a service plus how
    /// to host it), or the exit code after it has printed why it cannot.
    Service(fn(&[OsString]) -> Result<Launch, i32>),
    /// A plain command (a control client): runs to completion, returns the exit code.
    Command(fn(&[OsString]) -> i32),
}

pub struct Applet {
    pub name: &'static str,
    pub summary: &'static str,
    pub entry: Entry,
}

pub static APPLETS: &[Applet] = &[
    #[cfg(feature = "init")]
    Applet {
        name: "init",
        summary: "PID 1 for an initramfs: mounts, modules, /etc/rc.toolbox",
        entry: Entry::Command(crate::init::main),
    },
    #[cfg(feature = "nbd")]
    Applet {
        name: "nbd",
        summary: "Network Block Device server (qemu-nbd compatible)",
        entry: Entry::Service(crate::nbd::parse),
    },
    #[cfg(feature = "zcip")]
    Applet {
        name: "zcip",
        summary: "IPv4 link-local address manager (busybox zcip compatible)",
        entry: Entry::Service(crate::zcip::parse),
    },
    #[cfg(feature = "svchost")]
    Applet {
        name: "svchost",
        summary: "host several services in one process (Windows svchost)",
        entry: Entry::Service(crate::svchost::parse),
    },
    #[cfg(feature = "svchost")]
    Applet {
        name: "sc",
        summary: "query and control svchost services (Windows sc)",
        entry: Entry::Command(crate::svchost::sc_main),
    },
    #[cfg(feature = "ipmgmtd")]
    Applet {
        name: "ipmgmtd",
        summary: "IP configuration daemon: named addresses, persistent settings",
        entry: Entry::Service(crate::ipmgmtd::parse),
    },
    #[cfg(feature = "ipmgmtd")]
    Applet {
        name: "ipadm",
        summary: "Configure IP interfaces, addresses and properties (via ipmgmtd)",
        entry: Entry::Command(crate::ipmgmtd::ipadm_main),
    },
    #[cfg(feature = "timesyncd")]
    Applet {
        name: "timesyncd",
        summary: "SNTP client daemon keeping the clock in step (systemd-timesyncd, busybox ntpd)",
        entry: Entry::Service(crate::timesyncd::parse),
    },
];

pub fn find(name: &str) -> Option<&'static Applet> {
    APPLETS.iter().find(|a| a.name == name)
}
