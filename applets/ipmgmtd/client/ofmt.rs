//! Output as illumos's libofmt prints it: fixed-width columns where a long
//! value borrows space from the columns after it, `--` for an empty value,
//! the header repeated every screenful; or, with `-p`, `:`-separated fields
//! with `:` and `\` escaped; or, for show-prop, comma lists wrapped over
//! several lines.

/// A column: its name and width (the separating space included).
pub type Column = (&'static str, usize);

const UNDEFINED: &str = "--";
const UNKNOWN: &str = "?";
/// Lines per screen when stdout is not a terminal, as libofmt assumes.
pub const DEFAULT_PAGE_ROWS: usize = 24;
const MAX_WRAP_ITEMS: usize = 128;

pub struct Ofmt {
    columns: Vec<Column>,
    parsable: bool,
    wrap: bool,
    page_rows: usize,
    rows_printed: usize,
    overflow: usize,
    out: String,
}

/// Parsable mode failures are errors; in human mode unknown fields are
/// only warned about.
pub struct Opened {
    pub ofmt: Ofmt,
    pub warning: Option<String>,
}

fn unknown_fields_message(bad: &[String], parsable: bool) -> String {
    let what = match (parsable, bad.len() > 1) {
        (false, false) => "ignoring unknown output field:",
        (false, true) => "ignoring unknown output fields:",
        (true, false) => "unknown output field:",
        (true, true) => "unknown output fields:",
    };
    let mut msg = what.to_owned();
    for b in bad {
        msg.push_str(&format!(" `{b}'"));
    }
    msg
}

impl Ofmt {
    /// Selects the columns `fields` names (comma-separated, any case;
    /// `all` or none: every column).
    pub fn open(
        fields: Option<&str>,
        template: &[Column],
        parsable: bool,
        wrap: bool,
        page_rows: usize,
    ) -> Result<Opened, String> {
        if parsable {
            match fields {
                None | Some("") => {
                    return Err("output fields must be specified in parsable mode".into())
                }
                Some(f) if f.eq_ignore_ascii_case("all") => {
                    return Err("output field `all' invalid in parsable mode".into())
                }
                _ => {}
            }
        }
        let wanted: Vec<&str> = match fields {
            Some(f) if !f.eq_ignore_ascii_case("all") => {
                f.split(',').filter(|s| !s.is_empty()).collect()
            }
            _ => template.iter().map(|(name, _)| *name).collect(),
        };
        let mut columns = Vec::new();
        let mut bad = Vec::new();
        for name in wanted {
            match template.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some(col) => columns.push(*col),
                None => bad.push(name.to_owned()),
            }
        }
        if columns.is_empty() {
            return Err("no valid output fields".into());
        }
        let warning = if bad.is_empty() {
            None
        } else if parsable {
            return Err(unknown_fields_message(&bad, true));
        } else {
            Some(unknown_fields_message(&bad, false))
        };
        Ok(Opened {
            ofmt: Ofmt {
                columns,
                parsable,
                wrap: wrap && !parsable,
                page_rows: page_rows.max(1),
                rows_printed: 0,
                overflow: 0,
                out: String::new(),
            },
            warning,
        })
    }

    fn field(&mut self, width: usize, value: &str, last: bool) {
        if self.parsable {
            if self.columns.len() == 1 {
                self.out.push_str(value);
                return;
            }
            for c in value.chars() {
                if c == ':' || c == '\\' {
                    self.out.push('\\');
                }
                self.out.push(c);
            }
            if !last {
                self.out.push(':');
            }
            return;
        }
        if last {
            self.out.push_str(value);
            self.overflow = 0;
            return;
        }
        let len = value.chars().count();
        if len + self.overflow >= width {
            // Too long: print it whole and take the excess from the next columns.
            self.overflow = self.overflow + len + 1 - width;
            self.out.push_str(value);
            self.out.push(' ');
            return;
        }
        let mut width = width;
        if self.overflow > 0 {
            let give = self.overflow.min(width - len);
            self.overflow -= give;
            width -= give;
        }
        self.out.push_str(value);
        self.out.extend(std::iter::repeat_n(' ', width - len));
    }

    fn header(&mut self) {
        let columns = self.columns.clone();
        for (i, (name, width)) in columns.iter().enumerate() {
            self.field(*width, name, i + 1 == columns.len());
        }
        self.out.push('\n');
    }

    /// Prints one row; `value` gives a column's value, None when it could
    /// not be had (printed as `?`).
    pub fn print(&mut self, value: impl Fn(&str) -> Option<String>) {
        let at = self.rows_printed;
        self.rows_printed += 1;
        if at % self.page_rows == 0 && !self.parsable {
            self.header();
            self.rows_printed += 1;
        }
        let columns = self.columns.clone();
        let mut pending: Vec<Option<Wrapped>> = vec![None; columns.len()];
        let mut more_rows = false;
        for (i, (name, width)) in columns.iter().enumerate() {
            let last = i + 1 == columns.len();
            match value(name) {
                Some(v) => {
                    let mut v = v;
                    if self.wrap {
                        let mut w = Wrapped::new(&v);
                        if let Some(wrapped) = w.as_mut() {
                            v = wrapped.next_line(*width);
                            more_rows |= wrapped.more();
                        }
                        pending[i] = w;
                    }
                    let shown = if v.is_empty() && !self.parsable {
                        UNDEFINED.to_owned()
                    } else {
                        v
                    };
                    self.field(*width, &shown, last);
                }
                None => self.field(*width, UNKNOWN, last),
            }
        }
        self.out.push('\n');
        while more_rows {
            more_rows = false;
            for (i, (_, width)) in columns.iter().enumerate() {
                let last = i + 1 == columns.len();
                let v = match pending[i].as_mut() {
                    Some(w) => {
                        let line = w.next_line(*width);
                        more_rows |= w.more();
                        line
                    }
                    None => String::new(),
                };
                self.field(*width, &v, last);
            }
            self.out.push('\n');
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A comma list being spread over lines of a column.
#[derive(Clone)]
struct Wrapped {
    items: Vec<String>,
    next: usize,
}

impl Wrapped {
    fn new(value: &str) -> Option<Wrapped> {
        let items: Vec<String> = value
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() || items.len() > MAX_WRAP_ITEMS {
            return None;
        }
        Some(Wrapped { items, next: 0 })
    }

    fn more(&self) -> bool {
        self.next < self.items.len()
    }

    /// As many items as fit in `width`, each followed by a comma except
    /// the list's last.
    fn next_line(&mut self, width: usize) -> String {
        let mut line = String::new();
        let mut i = self.next;
        while i < self.items.len() {
            line.push_str(&self.items[i]);
            line.push(',');
            let next_len = if i + 1 == self.items.len() {
                line.pop();
                0
            } else {
                self.items[i + 1].len()
            };
            i += 1;
            if line.len() + next_len > width {
                break;
            }
        }
        self.next = i;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW_ADDR: &[Column] = &[
        ("ADDROBJ", 18),
        ("TYPE", 9),
        ("STATE", 13),
        ("CURRENT", 8),
        ("PERSISTENT", 11),
        ("ADDR", 46),
    ];

    fn render(fields: Option<&str>, parsable: bool, rows: &[&[(&str, &str)]]) -> String {
        let mut o = Ofmt::open(fields, SHOW_ADDR, parsable, false, 24)
            .unwrap()
            .ofmt;
        for row in rows {
            o.print(|name| {
                row.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            });
        }
        o.finish()
    }

    const LO: &[(&str, &str)] = &[
        ("ADDROBJ", "lo/?"),
        ("TYPE", "static"),
        ("STATE", "ok"),
        ("CURRENT", "U----"),
        ("PERSISTENT", ""),
        ("ADDR", "127.0.0.1/8"),
    ];

    #[test]
    fn columns_like_libofmt() {
        let out = render(Some("addrobj,type,state,addr"), false, &[LO]);
        assert_eq!(
            out,
            "ADDROBJ           TYPE     STATE        ADDR\n\
             lo/?              static   ok           127.0.0.1/8\n"
        );
        let out = render(Some("all"), false, &[LO]);
        assert_eq!(
            out,
            "ADDROBJ           TYPE     STATE        CURRENT PERSISTENT ADDR\n\
             lo/?              static   ok           U----   --         127.0.0.1/8\n"
        );
    }

    #[test]
    fn long_values_borrow_from_the_next_columns() {
        let long: &[(&str, &str)] = &[
            ("ADDROBJ", "averyveryverylongif/name"),
            ("TYPE", "static"),
            ("STATE", "ok"),
            ("ADDR", "10.0.0.1/24"),
        ];
        let out = render(Some("addrobj,type,state,addr"), false, &[long]);
        // 24 characters in an 18 column: 7 borrowed; TYPE gives back 2 of
        // them, STATE the other 5.
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "averyveryverylongif/name static ok      10.0.0.1/24"
        );
    }

    #[test]
    fn parsable_escapes_separators() {
        let v6: &[(&str, &str)] = &[
            ("ADDROBJ", "eth0/v6"),
            ("ADDR", "fe80::1/64"),
            ("STATE", ""),
        ];
        assert_eq!(
            render(Some("addrobj,addr,state"), true, &[v6]),
            "eth0/v6:fe80\\:\\:1/64:\n"
        );
        // One field: printed as it is.
        assert_eq!(render(Some("addr"), true, &[v6]), "fe80::1/64\n");
        let odd: &[(&str, &str)] = &[("ADDROBJ", "a\\b")];
        assert_eq!(render(Some("addrobj,type"), true, &[odd]), "a\\\\b:?\n");
    }

    #[test]
    fn field_selection_errors_and_warnings() {
        let err = |f: Option<&str>| match Ofmt::open(f, SHOW_ADDR, true, false, 24) {
            Err(e) => e,
            Ok(_) => panic!("accepted {f:?}"),
        };
        assert_eq!(
            err(None),
            "output fields must be specified in parsable mode"
        );
        assert_eq!(
            err(Some("ALL")),
            "output field `all' invalid in parsable mode"
        );
        assert_eq!(err(Some("addr,foo")), "unknown output field: `foo'");
        let opened = Ofmt::open(Some("addr,foo,bar"), SHOW_ADDR, false, false, 24).unwrap();
        assert_eq!(
            opened.warning.as_deref(),
            Some("ignoring unknown output fields: `foo' `bar'")
        );
        assert!(Ofmt::open(Some("foo"), SHOW_ADDR, false, false, 24).is_err());
        assert!(Ofmt::open(Some(",,"), SHOW_ADDR, false, false, 24).is_err());
    }

    #[test]
    fn header_repeats_every_page() {
        let mut o = Ofmt::open(Some("addrobj"), SHOW_ADDR, false, false, 4)
            .unwrap()
            .ofmt;
        for _ in 0..5 {
            o.print(|_| Some("x".into()));
        }
        assert_eq!(o.finish(), "ADDROBJ\nx\nx\nx\nADDROBJ\nx\nx\n");
    }

    #[test]
    fn wrapped_lists() {
        let cols: &[Column] = &[("PROPERTY", 10), ("POSSIBLE", 15), ("X", 3)];
        let mut o = Ofmt::open(None, cols, false, true, 24).unwrap().ofmt;
        o.print(|name| {
            Some(match name {
                "PROPERTY" => "ecn".into(),
                "POSSIBLE" => "never,passive,active".into(),
                _ => "".into(),
            })
        });
        assert_eq!(
            o.finish(),
            "PROPERTY  POSSIBLE       X\n\
             ecn       never,passive, --\n\
             \x20         active         \n"
        );
    }
}
