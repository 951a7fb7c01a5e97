//! Interface and address-object names: what is valid, and the names the
//! daemon makes up (`_a`, `_b`, ...) for addresses created without one.

use std::fmt;

use super::model::{Error, Status};

/// Linux's IFNAMSIZ, terminating NUL included.
pub const IFNAMSIZ: usize = 16;
/// The longest name after the `/` (illumos: 32 bytes with the NUL).
pub const MAX_AOBJ_NAME: usize = 31;

/// A kernel interface name as `dev_valid_name()` accepts it.
pub fn check_ifname(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if valid {
        Ok(())
    } else {
        Err(Error::with(
            Status::InvalidName,
            format!("interface '{name}'"),
        ))
    }
}

/// A name a user may give: a letter, then letters and digits.
pub fn is_user_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric())
        && name.len() <= MAX_AOBJ_NAME
}

/// A name the daemon generated: `_` and lower-case letters.
pub fn is_generated_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= MAX_AOBJ_NAME
        && name.starts_with('_')
        && name[1..].bytes().all(|b| b.is_ascii_lowercase())
}

/// `IF/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrObj {
    pub ifname: String,
    pub name: String,
}

impl AddrObj {
    /// Parses an existing object's name: user-given or generated.
    pub fn parse(text: &str) -> Result<AddrObj, Error> {
        match AddrObjArg::parse(text)? {
            AddrObjArg {
                ifname,
                name: Some(name),
            } => Ok(AddrObj { ifname, name }),
            _ => Err(invalid_aobj(text)),
        }
    }
}

impl fmt::Display for AddrObj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ifname, self.name)
    }
}

fn invalid_aobj(text: &str) -> Error {
    Error::with(Status::InvalidName, format!("address object '{text}'"))
}

/// What `create-addr` accepts: `IF/NAME`, or `IF/` / `IF` for a generated name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrObjArg {
    pub ifname: String,
    pub name: Option<String>,
}

impl AddrObjArg {
    pub fn parse(text: &str) -> Result<AddrObjArg, Error> {
        let (ifname, name) = match text.split_once('/') {
            Some((ifname, "")) => (ifname, None),
            Some((ifname, name)) => (ifname, Some(name)),
            None => (text, None),
        };
        check_ifname(ifname).map_err(|_| invalid_aobj(text))?;
        if let Some(name) = name {
            if !is_user_name(name) && !is_generated_name(name) {
                return Err(invalid_aobj(text));
            }
        }
        Ok(AddrObjArg {
            ifname: ifname.to_owned(),
            name: name.map(str::to_owned),
        })
    }
}

/// The `index`th generated name: `_a` .. `_z`, `_aa` .. `_zz`, ...
pub fn generated_name(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.reverse();
    let mut name = String::from("_");
    name.extend(letters.into_iter().map(char::from));
    name
}

/// The first generated name `taken` says is free.
pub fn first_free_name(taken: impl Fn(&str) -> bool) -> String {
    (0..)
        .map(generated_name)
        .find(|name| !taken(name))
        .unwrap_or_else(|| "_overflow".to_owned())
}

/// A hostname for DHCP option 12 (RFC 1123 labels, at most 255 bytes).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel() {
        for good in ["eth0", "veth-a.10", "x", "abcdefghijklmno"] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:1", "a b", "abcdefghijklmnop", "é"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn address_object_names() {
        assert_eq!(
            AddrObj::parse("eth0/v4").unwrap(),
            AddrObj {
                ifname: "eth0".into(),
                name: "v4".into()
            }
        );
        assert_eq!(AddrObj::parse("eth0/_b").unwrap().name, "_b");
        let max = format!("eth0/a{}", "b".repeat(MAX_AOBJ_NAME - 1));
        assert!(AddrObj::parse(&max).is_ok());
        let long = format!("eth0/a{}", "b".repeat(MAX_AOBJ_NAME));
        for bad in [
            "eth0",
            "eth0/",
            "eth0/4v",
            "eth0/v-4",
            "/v4",
            "eth0/v4/x",
            "eth0/_",
            "eth0/_A",
            &long,
        ] {
            let err = AddrObj::parse(bad).unwrap_err();
            assert_eq!(err.status, Status::InvalidName, "{bad}");
        }
    }

    #[test]
    fn create_argument_may_leave_the_name_out() {
        assert_eq!(AddrObjArg::parse("eth0").unwrap().name, None);
        assert_eq!(AddrObjArg::parse("eth0/").unwrap().name, None);
        assert_eq!(
            AddrObjArg::parse("eth0/lan").unwrap().name.as_deref(),
            Some("lan")
        );
        assert!(AddrObjArg::parse("eth0/1").is_err());
    }

    #[test]
    fn generated_names_count_like_spreadsheet_columns() {
        assert_eq!(generated_name(0), "_a");
        assert_eq!(generated_name(25), "_z");
        assert_eq!(generated_name(26), "_aa");
        assert_eq!(generated_name(27), "_ab");
        assert_eq!(generated_name(26 + 26 * 26), "_aaa");
        for i in 0..1000 {
            assert!(is_generated_name(&generated_name(i)));
        }
        assert_eq!(first_free_name(|n| n == "_a" || n == "_b"), "_c");
        assert_eq!(first_free_name(|n| n == "_b"), "_a");
    }
}
