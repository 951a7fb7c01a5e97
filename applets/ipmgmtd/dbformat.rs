//! The line format of ipadm.conf and aobjmap.conf, as illumos writes them:
//! one entry a line, `name=value;` pairs, `#` comments; plus our version
//! header line (`# ipadm.conf version=2`).

use std::fmt;

/// A line's pairs, in order.
pub type Pairs = Vec<(String, String)>;

/// The longest line either file may hold; longer ones are refused, not cut.
pub const MAX_LINE: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    TooLong,
    Empty,
    MissingEquals(String),
    BadName(String),
    BadValue(String),
    Duplicate(String),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            LineError::Empty => f.write_str("empty entry"),
            LineError::MissingEquals(p) => write!(f, "'{p}' is not name=value"),
            LineError::BadName(n) => write!(f, "bad name '{n}'"),
            LineError::BadValue(v) => write!(f, "bad value '{v}'"),
            LineError::Duplicate(n) => write!(f, "'{n}' given twice"),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| !c.is_control() && c != ';' && c != '=')
}

/// Parses `a=1;b=2;` (the final `;` may be missing).
pub fn parse_line(line: &str) -> Result<Pairs, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    let body = line.trim();
    let body = body.strip_suffix(';').unwrap_or(body);
    if body.is_empty() {
        return Err(LineError::Empty);
    }
    let mut pairs: Pairs = Vec::new();
    for part in body.split(';') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| LineError::MissingEquals(part.to_owned()))?;
        if !valid_name(name) {
            return Err(LineError::BadName(name.to_owned()));
        }
        if !valid_value(value) {
            return Err(LineError::BadValue(value.to_owned()));
        }
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(LineError::Duplicate(name.to_owned()));
        }
        pairs.push((name.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

/// Formats pairs as a line, without the newline. Values are checked by
/// whoever built them; a value that could break the format is dropped to
/// empty here rather than corrupting the file.
pub fn format_line(pairs: &[(String, String)]) -> String {
    let mut line = String::new();
    for (name, value) in pairs {
        line.push_str(name);
        line.push('=');
        if valid_value(value) {
            line.push_str(value);
        }
        line.push(';');
    }
    line
}

/// The header that names a file's kind and format version.
pub fn header(kind: &str, version: u32) -> String {
    format!("# {kind} version={version}")
}

/// The version a header line declares for `kind`, if the line is one.
pub fn parse_header(kind: &str, line: &str) -> Option<u32> {
    let rest = line.strip_prefix("# ")?.strip_prefix(kind)?;
    rest.trim().strip_prefix("version=")?.parse().ok()
}

/// Looks a name up in pairs.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether a string may be stored as a value.
pub fn storable(value: &str) -> bool {
    valid_value(value) && value.len() < MAX_LINE / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn round_trip() {
        let p = pairs(&[("_ifname", "eth0"), ("_family", "inet"), ("x", "")]);
        let line = format_line(&p);
        assert_eq!(line, "_ifname=eth0;_family=inet;x=;");
        assert_eq!(parse_line(&line).unwrap(), p);
        assert_eq!(
            parse_line("a=1;b=2").unwrap(),
            pairs(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(
            parse_line("_ipv4addr=10.0.0.1,;").unwrap(),
            pairs(&[("_ipv4addr", "10.0.0.1,")])
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(parse_line(""), Err(LineError::Empty));
        assert_eq!(parse_line(";"), Err(LineError::Empty));
        assert_eq!(
            parse_line("abc"),
            Err(LineError::MissingEquals("abc".into()))
        );
        assert_eq!(
            parse_line("a=1;;b=2"),
            Err(LineError::MissingEquals("".into()))
        );
        assert_eq!(parse_line("a b=1;"), Err(LineError::BadName("a b".into())));
        assert_eq!(parse_line("=1;"), Err(LineError::BadName("".into())));
        assert_eq!(parse_line("a=x=y;"), Err(LineError::BadValue("x=y".into())));
        assert_eq!(
            parse_line("a=1;a=2;"),
            Err(LineError::Duplicate("a".into()))
        );
        assert_eq!(
            parse_line(&"a=1;".repeat(MAX_LINE)),
            Err(LineError::TooLong)
        );
        assert_eq!(
            parse_line("a=\u{7};"),
            Err(LineError::BadValue("\u{7}".into()))
        );
    }

    #[test]
    fn values_that_would_break_the_format_are_not_written() {
        let p = pairs(&[("a", "x;b=1"), ("c", "ok")]);
        assert_eq!(format_line(&p), "a=;c=ok;");
    }

    #[test]
    fn headers() {
        let h = header("ipadm.conf", 2);
        assert_eq!(h, "# ipadm.conf version=2");
        assert_eq!(parse_header("ipadm.conf", &h), Some(2));
        assert_eq!(parse_header("aobjmap.conf", &h), None);
        assert_eq!(parse_header("ipadm.conf", "# a comment"), None);
        assert_eq!(parse_header("ipadm.conf", "# ipadm.conf version=x"), None);
    }
}
