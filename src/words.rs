//! Splitting a command line as a shell splits words (svchost's `args =`,
//! init's rc file): whitespace separates, single quotes keep everything
//! literally, double quotes keep spaces and honour `\"` and `\\`, a
//! backslash outside quotes escapes the next character. No expansion of any
//! kind.

/// The words of `line`, or a message naming the problem.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("backslash at end of line".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell_without_expansion() {
        assert_eq!(
            split("-t -k /run/a.sock  /srv/a.img").unwrap(),
            ["-t", "-k", "/run/a.sock", "/srv/a.img"]
        );
        assert_eq!(
            split(r#"-D 'a disk' -x "my \"x\"" $HOME"#).unwrap(),
            ["-D", "a disk", "-x", "my \"x\"", "$HOME"]
        );
        assert_eq!(split(r"a\ b ''").unwrap(), ["a b", ""]);
        assert_eq!(split("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn unterminated_quotes_are_errors() {
        assert!(split("'abc").unwrap_err().contains("single"));
        assert!(split("\"abc").unwrap_err().contains("double"));
        assert!(split("abc\\").is_err());
    }
}
