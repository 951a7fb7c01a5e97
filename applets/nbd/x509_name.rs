//! The subject name of an X.509 certificate as `--tls-authz` compares it:
//! RFC 4514 text, most specific part first (`CN=laptop,O=Example,C=GB`),
//! the form qemu's authz-simple identities take (GnuTLS's DN string).
//! A small DER walk over the certificate; no I/O.

/// One DER element: its tag and contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = element(input)?;
    (t == tag).then_some((body, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject of a DER certificate, or None when it is not one.
pub fn subject(cert: &[u8]) -> Option<String> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity; then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (name, _) = expect(rest, SEQUENCE)?;
    render_name(name)
}

fn render_name(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, rest) = expect(name, SET)?;
        name = rest;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (attr, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = expect(attr, OID)?;
            let (tag, value, _) = element(value)?;
            parts.push(format!(
                "{}={}",
                attribute_name(oid),
                attribute_value(tag, value)
            ));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "street".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x0c] => "title".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "EMAIL".into(),
        other => dotted(other),
    }
}

/// An OID in dotted decimal, for attribute types without a short name.
fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// A string value escaped as RFC 4514 says; anything else as `#` and hex.
fn attribute_value(tag: u8, value: &[u8]) -> String {
    // UTF8String, PrintableString, T61String, IA5String, VisibleString.
    let text = matches!(tag, 0x0c | 0x13 | 0x14 | 0x16 | 0x1a)
        .then(|| std::str::from_utf8(value).ok())
        .flatten();
    let Some(text) = text else {
        let mut out = String::from("#");
        let mut der = vec![tag];
        der.push(value.len().min(0x7f) as u8);
        for b in der.iter().chain(value) {
            out.push_str(&format!("{b:02x}"));
        }
        return out;
    };
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            // RFC 4514 hexpair escapes: a control character (a newline in
            // a hostile subject) must not split the log line or the
            // authz comparison.
            let mut utf8 = [0; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if body.len() < 0x80 {
            out.push(body.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    fn rdn(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        let mut attr = tlv(OID, oid);
        attr.extend(tlv(tag, value.as_bytes()));
        tlv(SET, &tlv(SEQUENCE, &attr))
    }

    fn certificate(subject: &[u8]) -> Vec<u8> {
        let mut tbs = tlv(0xa0, &tlv(0x02, &[2]));
        tbs.extend(tlv(0x02, &[1]));
        tbs.extend(tlv(SEQUENCE, &tlv(OID, &[0x2a, 0x03])));
        tbs.extend(tlv(SEQUENCE, &rdn(&[0x55, 4, 3], 0x0c, "ca")));
        tbs.extend(tlv(SEQUENCE, &[]));
        tbs.extend(tlv(SEQUENCE, subject));
        tbs.extend(tlv(SEQUENCE, &[0; 200]));
        let mut cert = tlv(SEQUENCE, &tbs);
        cert.extend(tlv(SEQUENCE, &tlv(OID, &[0x2a, 0x03])));
        tlv(SEQUENCE, &cert)
    }

    #[test]
    fn subject_reads_most_specific_first_like_gnutls() {
        let mut name = rdn(&[0x55, 4, 6], 0x13, "GB");
        name.extend(rdn(&[0x55, 4, 10], 0x0c, "Example, Org"));
        name.extend(rdn(&[0x55, 4, 3], 0x0c, "laptop.example.com"));
        assert_eq!(
            subject(&certificate(&name)).as_deref(),
            Some("CN=laptop.example.com,O=Example\\, Org,C=GB")
        );
    }

    #[test]
    fn control_characters_are_hex_escaped_so_a_name_is_one_line() {
        let name = rdn(&[0x55, 4, 3], 0x0c, "evil\nCN=admin\u{7f}");
        assert_eq!(
            subject(&certificate(&name)).as_deref(),
            Some("CN=evil\\0ACN=admin\\7F")
        );
    }

    #[test]
    fn unknown_attributes_are_dotted_and_truncated_input_is_none() {
        let name = rdn(&[0x2b, 6, 1, 4, 1, 0x82, 0x37, 1], 0x0c, "x");
        let cert = certificate(&name);
        assert_eq!(subject(&cert).as_deref(), Some("1.3.6.1.4.1.311.1=x"));
        for cut in 0..cert.len() - 1 {
            let _ = subject(&cert[..cut]);
        }
        assert_eq!(subject(&cert[..40]), None);
        assert_eq!(subject(b""), None);
    }
}
