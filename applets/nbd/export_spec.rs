//! `--export NAME=FILE[,description=TEXT][,readonly][,format=raw|qcow2][,allocation-depth]`:
//! one export of a server that has several (qemu-storage-daemon's and
//! nbdkit's idea, in one compact string).
//!
//! Fields are split at commas; as in qemu's option strings, a doubled comma
//! ",," is one literal comma in any field (name, file or description).
//! NAME ends at the first '=' and so cannot hold one; FILE and TEXT can.
//! Boolean keys stand alone or take `=on`/`=off`.

use std::fmt;
use std::path::PathBuf;

use super::options::ImageFormat;
use super::proto::MAX_STRING;

/// One `--export` as written, before its file is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub read_only: bool,
    /// None: qcow2 if the file says so, else raw.
    pub format: Option<ImageFormat>,
    /// None: as `-A` says for every export.
    pub allocation_depth: Option<bool>,
}

/// What is wrong with an `--export` string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// The first field has no '=' between NAME and FILE.
    NoFile,
    EmptyFile,
    /// A ',' with nothing before the next one or the end.
    EmptyField,
    UnknownKey(String),
    RepeatedKey(String),
    /// A key that takes a value was given none, or a flag a bad one.
    BadValue {
        key: String,
        value: String,
    },
    UnknownFormat(String),
    TooLong(&'static str),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SpecError::NoFile => write!(f, "expected NAME=FILE first"),
            SpecError::EmptyFile => write!(f, "FILE is empty"),
            SpecError::EmptyField => write!(f, "empty field (write ',,' for a comma)"),
            SpecError::UnknownKey(k) => write!(
                f,
                "unknown key '{}' (known: description, readonly, format, allocation-depth)",
                one_line(k)
            ),
            SpecError::RepeatedKey(k) => write!(f, "key '{}' is given twice", one_line(k)),
            SpecError::BadValue { key, value } => write!(
                f,
                "invalid value '{}' for '{}'",
                one_line(value),
                one_line(key)
            ),
            SpecError::UnknownFormat(v) => {
                write!(f, "unknown format '{}' (raw or qcow2)", one_line(v))
            }
            SpecError::TooLong(what) => write!(f, "{what} is longer than {MAX_STRING} bytes"),
        }
    }
}

impl std::error::Error for SpecError {}

/// Text from the command line as an error message shows it: control
/// characters escaped (`\n`, `\u{1b}`), so the message stays one line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The fields of `text`, split at single commas, ",," kept as ','.
fn fields(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            if let Some(last) = out.last_mut() {
                last.push(c);
            }
        } else if chars.peek() == Some(&',') {
            chars.next();
            if let Some(last) = out.last_mut() {
                last.push(',');
            }
        } else {
            out.push(String::new());
        }
    }
    out
}

fn flag(key: &str, value: Option<&str>) -> Result<bool, SpecError> {
    match value {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(v) => Err(SpecError::BadValue {
            key: key.into(),
            value: v.into(),
        }),
    }
}

/// Parses one `--export` string.
pub fn parse(text: &str) -> Result<ExportSpec, SpecError> {
    let fields = fields(text);
    let mut fields = fields.into_iter();
    let first = fields.next().unwrap_or_default();
    let (name, file) = first.split_once('=').ok_or(SpecError::NoFile)?;
    if file.is_empty() {
        return Err(SpecError::EmptyFile);
    }
    if name.len() > MAX_STRING {
        return Err(SpecError::TooLong("export name"));
    }
    let mut spec = ExportSpec {
        name: name.to_owned(),
        file: PathBuf::from(file),
        description: None,
        read_only: false,
        format: None,
        allocation_depth: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for field in fields {
        if field.is_empty() {
            return Err(SpecError::EmptyField);
        }
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field.as_str(), None),
        };
        if seen.iter().any(|k| k == key) {
            return Err(SpecError::RepeatedKey(key.into()));
        }
        match key {
            "description" => {
                let text = value.ok_or_else(|| SpecError::BadValue {
                    key: key.into(),
                    value: String::new(),
                })?;
                if text.len() > MAX_STRING {
                    return Err(SpecError::TooLong("description"));
                }
                spec.description = Some(text.to_owned());
            }
            "readonly" => spec.read_only = flag(key, value)?,
            "allocation-depth" => spec.allocation_depth = Some(flag(key, value)?),
            "format" => {
                spec.format = Some(match value {
                    Some("raw") => ImageFormat::Raw,
                    Some("qcow2") => ImageFormat::Qcow2,
                    other => return Err(SpecError::UnknownFormat(other.unwrap_or("").into())),
                })
            }
            other => return Err(SpecError::UnknownKey(other.into())),
        }
        seen.push(key.to_owned());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_file_and_every_key() {
        let s =
            parse("disk=/srv/a.img,description=Our disk,readonly,format=qcow2,allocation-depth")
                .unwrap();
        assert_eq!(
            s,
            ExportSpec {
                name: "disk".into(),
                file: "/srv/a.img".into(),
                description: Some("Our disk".into()),
                read_only: true,
                format: Some(ImageFormat::Qcow2),
                allocation_depth: Some(true),
            }
        );
        let s = parse("b=rel.img,readonly=off,allocation-depth=off").unwrap();
        assert!(!s.read_only);
        assert_eq!(s.allocation_depth, Some(false));
        assert_eq!(s.file, PathBuf::from("rel.img"));
    }

    #[test]
    fn doubled_commas_are_literal_and_equals_signs_stay_in_values() {
        let s = parse("a,,b=/x,,y=z,description=one,, two=three").unwrap();
        assert_eq!(s.name, "a,b");
        assert_eq!(s.file, PathBuf::from("/x,y=z"));
        assert_eq!(s.description.as_deref(), Some("one, two=three"));
        let s = parse("=/img,description=").unwrap();
        assert_eq!(s.name, "");
        assert_eq!(s.description.as_deref(), Some(""));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, err) in [
            ("disk", SpecError::NoFile),
            ("", SpecError::NoFile),
            ("disk=", SpecError::EmptyFile),
            ("d=/f,", SpecError::EmptyField),
            ("d=/f,,,", SpecError::EmptyField),
            ("d=/f,size=1", SpecError::UnknownKey("size".into())),
            (
                "d=/f,readonly,readonly",
                SpecError::RepeatedKey("readonly".into()),
            ),
            (
                "d=/f,readonly=yes",
                SpecError::BadValue {
                    key: "readonly".into(),
                    value: "yes".into(),
                },
            ),
            (
                "d=/f,description",
                SpecError::BadValue {
                    key: "description".into(),
                    value: String::new(),
                },
            ),
            ("d=/f,format=vmdk", SpecError::UnknownFormat("vmdk".into())),
        ] {
            assert_eq!(parse(text), Err(err), "{text}");
        }
        let long = format!("{}=/f", "n".repeat(MAX_STRING + 1));
        assert_eq!(parse(&long), Err(SpecError::TooLong("export name")));
        for e in [SpecError::NoFile, SpecError::UnknownKey("x".into())] {
            assert!(!e.to_string().contains('\n'));
        }
        // Found by the nbd_export_spec fuzz target: a key with newlines in
        // it made a message of many lines.
        let err = parse("b=4,atigdept\n\nh").unwrap_err().to_string();
        assert!(err.contains("unknown key 'atigdept\\n\\nh'"), "{err}");
    }
}
