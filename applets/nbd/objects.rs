//! qemu's `--object TYPE,id=ID,KEY=VALUE,...` strings for the objects NBD
//! uses: TLS credentials (`tls-creds-x509`, `tls-creds-psk`) and client
//! certificate allow lists (`authz-simple`). Parsing only; no I/O.

use std::path::PathBuf;

/// Which side of a TLS connection credentials are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Server,
    Client,
}

/// `tls-creds-x509`: a directory of PEM files named as qemu names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Creds {
    pub id: String,
    pub dir: PathBuf,
    pub endpoint: Endpoint,
    /// Server: client certificates are required and checked against
    /// `ca-cert.pem`. Client: the server's certificate is checked. qemu's
    /// default is on.
    pub verify_peer: bool,
}

/// One `--object`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    X509(X509Creds),
    /// `tls-creds-psk`: parsed so that it can be refused by name.
    Psk {
        id: String,
    },
    /// `authz-simple`: the one client certificate name (distinguished name) allowed.
    AuthzSimple {
        id: String,
        identity: String,
    },
}

impl Object {
    pub fn id(&self) -> &str {
        match self {
            Object::X509(c) => &c.id,
            Object::Psk { id } | Object::AuthzSimple { id, .. } => id,
        }
    }
}

/// Splits a qemu option string at commas; `,,` stands for a literal comma.
fn split_options(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                parts.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!(
            "Parameter '{key}' expects 'on' or 'off', not '{value}'"
        )),
    }
}

/// Parses one `--object` argument.
pub fn parse(text: &str) -> Result<Object, String> {
    let mut kind = None;
    let mut props: Vec<(String, String)> = Vec::new();
    for (i, part) in split_options(text).into_iter().enumerate() {
        match part.split_once('=') {
            Some(("qom-type", v)) => kind = Some(v.to_string()),
            Some((k, v)) => props.push((k.to_string(), v.to_string())),
            None if i == 0 && !part.is_empty() => kind = Some(part),
            None => return Err(format!("--object '{text}': '{part}' has no value")),
        }
    }
    let kind = kind.ok_or_else(|| format!("--object '{text}': no object type"))?;
    if !matches!(
        kind.as_str(),
        "tls-creds-x509" | "tls-creds-psk" | "authz-simple"
    ) {
        return Err(format!(
            "--object: unsupported object type '{kind}' (tls-creds-x509 and authz-simple are)"
        ));
    }
    let mut id = None;
    let mut dir = None;
    let mut endpoint = Endpoint::Client;
    let mut verify_peer = true;
    let mut identity = None;
    for (key, value) in props {
        match (kind.as_str(), key.as_str()) {
            (_, "id") => id = Some(value),
            ("tls-creds-x509" | "tls-creds-psk", "dir") => dir = Some(PathBuf::from(value)),
            ("tls-creds-x509" | "tls-creds-psk", "endpoint") => {
                endpoint = match value.as_str() {
                    "server" => Endpoint::Server,
                    "client" => Endpoint::Client,
                    _ => {
                        return Err(format!(
                            "--object {kind}: endpoint must be 'server' or 'client', not '{value}'"
                        ))
                    }
                }
            }
            ("tls-creds-x509", "verify-peer") => verify_peer = parse_bool(&key, &value)?,
            // GnuTLS priority strings and qemu's self-checks have no rustls
            // meaning; accepted so that qemu command lines work unchanged.
            ("tls-creds-x509" | "tls-creds-psk", "priority" | "sanity-check" | "loaded") => {}
            ("tls-creds-psk", "username") => {}
            ("authz-simple", "identity") => identity = Some(value),
            _ => return Err(format!("--object {kind}: unknown property '{key}'")),
        }
    }
    let id = id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| format!("--object {kind}: Parameter 'id' is missing"))?;
    match kind.as_str() {
        "tls-creds-x509" => Ok(Object::X509(X509Creds {
            dir: dir.ok_or_else(|| format!("--object {kind},id={id}: 'dir' is missing"))?,
            id,
            endpoint,
            verify_peer,
        })),
        "tls-creds-psk" => Ok(Object::Psk { id }),
        _ => Ok(Object::AuthzSimple {
            identity: identity
                .ok_or_else(|| format!("--object {kind},id={id}: 'identity' is missing"))?,
            id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x509_server_creds_as_qemu_documents_them() {
        let obj = parse("tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server").unwrap();
        assert_eq!(
            obj,
            Object::X509(X509Creds {
                id: "tls0".into(),
                dir: "/etc/pki/qemu".into(),
                endpoint: Endpoint::Server,
                verify_peer: true,
            })
        );
        let obj =
            parse("qom-type=tls-creds-x509,endpoint=client,id=c,dir=d,verify-peer=off").unwrap();
        let Object::X509(creds) = obj else {
            panic!("not x509")
        };
        assert_eq!(creds.endpoint, Endpoint::Client);
        assert!(!creds.verify_peer);
    }

    #[test]
    fn doubled_commas_are_literal() {
        let Object::X509(creds) = parse("tls-creds-x509,id=t,dir=/a,,b,endpoint=server").unwrap()
        else {
            panic!("not x509")
        };
        assert_eq!(creds.dir, PathBuf::from("/a,b"));
        let Object::AuthzSimple { identity, .. } =
            parse("authz-simple,id=auth0,identity=CN=laptop,,O=Example").unwrap()
        else {
            panic!("not authz")
        };
        assert_eq!(identity, "CN=laptop,O=Example");
    }

    #[test]
    fn psk_is_recognised_so_it_can_be_refused() {
        assert_eq!(
            parse("tls-creds-psk,id=tls0,dir=/keys,endpoint=server").unwrap(),
            Object::Psk { id: "tls0".into() }
        );
    }

    #[test]
    fn bad_object_strings_name_what_is_wrong() {
        for (text, needle) in [
            ("tls-creds-x509,dir=/d", "'id' is missing"),
            ("tls-creds-x509,id=t", "'dir' is missing"),
            (
                "tls-creds-x509,id=t,dir=/d,endpoint=both",
                "endpoint must be",
            ),
            (
                "tls-creds-x509,id=t,dir=/d,verify-peer=maybe",
                "expects 'on' or 'off'",
            ),
            (
                "tls-creds-x509,id=t,dir=/d,colour=red",
                "unknown property 'colour'",
            ),
            ("memory-backend-ram,id=m,size=1G", "unsupported object type"),
            ("", "has no value"),
            ("id=t", "no object type"),
            ("tls-creds-x509,id=t,dir", "has no value"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
