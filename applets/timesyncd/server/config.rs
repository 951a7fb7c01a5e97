//! The `[Server]` section of timesyncd.conf and the options that enable
//! the server: `Listen=ADDR[:PORT]` (several), `Allow=`/`Deny=` subnets,
//! `RateLimit=` (chrony's `interval N burst N leak N`), `LocalStratum=`,
//! and NTS: `NTSCertificate=`/`NTSKey=` (PEM), `NTSPort=`,
//! `NTSKeyRotation=`, `NTSNTPServer=`.
//! Sans-IO: key and value in, the setting or an error out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use super::access::{Access, Cidr};
use super::ratelimit::RateLimit;

pub const NTP_PORT: u16 = 123;
/// How often the NTS master key is replaced (chrony's `ntsrotate` default:
/// a week). Cookies made with the previous key stay good.
pub const DEFAULT_NTS_ROTATION: f64 = 7.0 * 86_400.0;
/// chrony refuses shorter rotation periods too: clients polling at
/// chrony's maximum of 36 h would lose their cookies.
pub const LEAST_NTS_ROTATION: f64 = 60.0;

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// `-l`, or any `Listen=` line.
    pub enabled: bool,
    /// Empty: every address, IPv4 and IPv6, port 123.
    pub listen: Vec<SocketAddr>,
    /// `-I IFACE`: bind the server's sockets to this interface.
    pub interface: Option<String>,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// Whether the file said `Allow=` at all (busybox `-l` alone serves
    /// everyone; a `[Server]` section serves only what it lists).
    pub allow_given: bool,
    pub rate_limit: Option<RateLimit>,
    /// chrony's `local stratum N`: serve our own clock at this stratum when
    /// no server is selected.
    pub local_stratum: Option<u8>,
    /// The NTS-KE server's certificate chain and key (PEM): NTS is
    /// offered when both are given.
    pub nts_certificate: Option<PathBuf>,
    pub nts_key: Option<PathBuf>,
    /// NTS-KE's TCP port (4460), on each listening address.
    pub nts_port: u16,
    /// Seconds between master key rotations; `None` never.
    pub nts_rotation: Option<f64>,
    /// Sent in NTPv4 server negotiation: where clients should send NTP,
    /// when not to the NTS-KE server's address.
    pub nts_ntp_server: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            enabled: false,
            listen: Vec::new(),
            interface: None,
            allow: Vec::new(),
            deny: Vec::new(),
            allow_given: false,
            rate_limit: None,
            local_stratum: None,
            nts_certificate: None,
            nts_key: None,
            nts_port: super::super::nts::ke::PORT,
            nts_rotation: Some(DEFAULT_NTS_ROTATION),
            nts_ntp_server: None,
        }
    }
}

impl ServerConfig {
    /// The certificate and key when NTS is to be offered; an error when
    /// only one of them is given.
    pub fn nts_credentials(&self) -> Result<Option<(PathBuf, PathBuf)>, String> {
        match (&self.nts_certificate, &self.nts_key) {
            (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("NTSCertificate= needs NTSKey= (or --nts-key)".into()),
            (None, Some(_)) => Err("NTSKey= needs NTSCertificate= (or --nts-cert)".into()),
        }
    }

    pub fn access(&self) -> Access {
        if !self.allow_given && self.deny.is_empty() {
            return Access::everyone();
        }
        Access {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        }
    }

    /// The addresses to bind.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if self.listen.is_empty() {
            vec![
                (Ipv4Addr::UNSPECIFIED, NTP_PORT).into(),
                (Ipv6Addr::UNSPECIFIED, NTP_PORT).into(),
            ]
        } else {
            self.listen.clone()
        }
    }

    /// One `[Server]` assignment. Unknown keys are `Ok(false)`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "Listen" => {
                if value.is_empty() {
                    self.listen.clear();
                }
                for word in value.split_whitespace() {
                    self.listen.push(parse_listen(word)?);
                }
                self.enabled = true;
            }
            "Allow" | "Deny" => {
                let list = if key == "Allow" {
                    self.allow_given = true;
                    &mut self.allow
                } else {
                    &mut self.deny
                };
                if value.is_empty() {
                    list.clear();
                }
                for word in value.split_whitespace() {
                    list.push(match word {
                        "all" => Cidr::parse("0.0.0.0/0")?,
                        w => Cidr::parse(w)?,
                    });
                    if word == "all" {
                        list.push(Cidr::parse("::/0")?);
                    }
                }
            }
            "RateLimit" => self.rate_limit = RateLimit::parse(value)?,
            "LocalStratum" => {
                self.local_stratum = match value {
                    "" | "no" | "off" => None,
                    v => match v.parse::<u8>() {
                        Ok(n) if (1..=15).contains(&n) => Some(n),
                        _ => return Err(format!("invalid stratum '{v}' (1 to 15)")),
                    },
                }
            }
            "NTSCertificate" => self.nts_certificate = path(value),
            "NTSKey" => self.nts_key = path(value),
            "NTSPort" => {
                self.nts_port = match value.parse::<u16>() {
                    Ok(port) if port > 0 => port,
                    _ => return Err(format!("invalid port '{value}'")),
                }
            }
            "NTSKeyRotation" => {
                self.nts_rotation = match super::super::config::parse_timespan(value)? {
                    None | Some(0.0) => None,
                    Some(secs) if secs >= LEAST_NTS_ROTATION => Some(secs),
                    Some(_) => {
                        return Err(format!(
                            "rotation period '{value}' under {LEAST_NTS_ROTATION} s"
                        ))
                    }
                }
            }
            "NTSNTPServer" => {
                self.nts_ntp_server = match value {
                    "" => None,
                    v if v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()) => {
                        Some(v.to_owned())
                    }
                    v => return Err(format!("invalid server name '{v}'")),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn path(value: &str) -> Option<PathBuf> {
    Some(value).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address; port 123 when
/// none is given.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("invalid port in listen address '{text}'"));
        }
        return Ok(sa);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, NTP_PORT)),
        Err(_) => Err(format!("invalid listen address '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_in_every_spelling() {
        assert_eq!(
            parse_listen("127.0.0.1:1123").unwrap(),
            "127.0.0.1:1123".parse().unwrap()
        );
        assert_eq!(
            parse_listen("192.0.2.1").unwrap(),
            "192.0.2.1:123".parse().unwrap()
        );
        assert_eq!(parse_listen("::").unwrap(), "[::]:123".parse().unwrap());
        assert_eq!(parse_listen("[::1]").unwrap(), "[::1]:123".parse().unwrap());
        assert_eq!(parse_listen("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        for bad in ["", "host:123", "1.2.3.4:0", "1.2.3.4:x", "[::1"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_set_and_reset() {
        let mut c = ServerConfig::default();
        assert!(c.set("Listen", "127.0.0.1:1123 [::1]:1123").unwrap());
        assert!(c.enabled && c.listen.len() == 2);
        c.set("Allow", "192.168.0.0/16 10.1.2.3").unwrap();
        c.set("Deny", "192.168.9.0/24").unwrap();
        c.set("RateLimit", "interval 2 burst 4").unwrap();
        c.set("LocalStratum", "10").unwrap();
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.rate_limit.unwrap().burst, 4);
        assert_eq!(c.local_stratum, Some(10));
        let access = c.access();
        assert!(access.permits("192.168.1.1".parse().unwrap()));
        assert!(!access.permits("192.168.9.1".parse().unwrap()));
        assert!(!access.permits("172.16.0.1".parse().unwrap()));
        c.set("Allow", "").unwrap();
        assert!(c.allow.is_empty() && c.allow_given);
        assert!(!c.access().permits("192.168.1.1".parse().unwrap()));
        assert!(!c.set("Colour", "blue").unwrap());
        assert!(c.set("LocalStratum", "16").is_err());
        assert!(c.set("Allow", "10.0.0.0/40").is_err());
        c.set("Allow", "all").unwrap();
        assert!(c.access().permits("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn nts_keys() {
        let mut c = ServerConfig::default();
        assert_eq!(c.nts_port, 4460);
        assert_eq!(c.nts_rotation, Some(DEFAULT_NTS_ROTATION));
        assert_eq!(c.nts_credentials(), Ok(None));
        c.set("NTSCertificate", "/etc/nts/cert.pem").unwrap();
        assert!(c.nts_credentials().unwrap_err().contains("NTSKey="));
        c.set("NTSKey", "/etc/nts/key.pem").unwrap();
        assert_eq!(
            c.nts_credentials(),
            Ok(Some((
                "/etc/nts/cert.pem".into(),
                "/etc/nts/key.pem".into()
            )))
        );
        c.set("NTSCertificate", "").unwrap();
        assert!(c.nts_credentials().unwrap_err().contains("NTSCertificate="));
        c.set("NTSPort", "14460").unwrap();
        assert_eq!(c.nts_port, 14460);
        for bad in ["0", "70000", "x", ""] {
            assert!(c.set("NTSPort", bad).is_err(), "{bad}");
        }
        c.set("NTSKeyRotation", "1d").unwrap();
        assert_eq!(c.nts_rotation, Some(86_400.0));
        c.set("NTSKeyRotation", "infinity").unwrap();
        assert_eq!(c.nts_rotation, None);
        c.set("NTSKeyRotation", "0").unwrap();
        assert_eq!(c.nts_rotation, None);
        assert!(c.set("NTSKeyRotation", "10s").is_err());
        c.set("NTSNTPServer", "ntp.example").unwrap();
        assert_eq!(c.nts_ntp_server.as_deref(), Some("ntp.example"));
        assert!(c.set("NTSNTPServer", "two words").is_err());
    }

    #[test]
    fn busybox_minus_l_alone_serves_everyone() {
        let c = ServerConfig {
            enabled: true,
            ..ServerConfig::default()
        };
        assert!(c.access().permits("203.0.113.9".parse().unwrap()));
        assert_eq!(c.listen_addrs().len(), 2);
    }
}
