//! Compose variable interpolation: `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`,
//! `${VAR:?e}`, `${VAR?e}`, `${VAR:+a}`, `${VAR+a}` and `$$`, with nested
//! forms inside defaults.
//!
//! Pure string work over a lookup function: it must never read the process
//! environment itself (the caller passes the environment it was given).

/// Interpolates `s`. `unset` receives the names of variables that were used
/// without a value and without a default (Compose substitutes "" and warns).
pub fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut lit_start = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&s[lit_start..i]);
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let start = i + 2;
                let mut depth = 1usize;
                let mut j = start;
                while j < b.len() {
                    match b[j] {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= b.len() {
                    return Err(format!(
                        "invalid interpolation format in {s:?}: unterminated \"${{\""
                    ));
                }
                out.push_str(&braced(&s[start..j], s, lookup, unset)?);
                i = j + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let name = &s[start..j];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name.to_string()),
                }
                i = j;
            }
            _ => {
                return Err(format!(
                    "invalid interpolation format in {s:?}: a \"$\" must be followed by a name, \"{{\" or \"$\" (write \"$$\" for a literal \"$\")"
                ));
            }
        }
        lit_start = i;
    }
    out.push_str(&s[lit_start..]);
    Ok(out)
}

fn braced(
    inner: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let name_len = inner
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .count();
    let name = &inner[..name_len];
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(format!(
            "invalid interpolation format in {whole:?}: \"${{{inner}}}\" has no valid variable name"
        ));
    }
    let rest = &inner[name_len..];
    let value = lookup(name);
    let (op, word) = if rest.is_empty() {
        ("", "")
    } else if let Some(w) = rest.strip_prefix(":-") {
        (":-", w)
    } else if let Some(w) = rest.strip_prefix(":?") {
        (":?", w)
    } else if let Some(w) = rest.strip_prefix(":+") {
        (":+", w)
    } else if let Some(w) = rest.strip_prefix('-') {
        ("-", w)
    } else if let Some(w) = rest.strip_prefix('?') {
        ("?", w)
    } else if let Some(w) = rest.strip_prefix('+') {
        ("+", w)
    } else {
        return Err(format!(
            "invalid interpolation format in {whole:?}: unknown operator in \"${{{inner}}}\""
        ));
    };
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let set = value.is_some();
    let word_value = |unset: &mut Vec<String>| interpolate(word, lookup, unset);
    Ok(match op {
        "" => match value {
            Some(v) => v,
            None => {
                unset.push(name.to_string());
                String::new()
            }
        },
        ":-" if set_nonempty => value.unwrap_or_default(),
        ":-" => word_value(unset)?,
        "-" if set => value.unwrap_or_default(),
        "-" => word_value(unset)?,
        ":?" if set_nonempty => value.unwrap_or_default(),
        "?" if set => value.unwrap_or_default(),
        ":?" | "?" => {
            let msg = word_value(unset)?;
            return Err(if msg.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {msg}")
            });
        }
        ":+" if set_nonempty => word_value(unset)?,
        "+" if set => word_value(unset)?,
        _ => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> Result<String, String> {
        let look = |k: &str| match k {
            "A" => Some("a".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        let mut u = Vec::new();
        interpolate(s, &look, &mut u)
    }

    #[test]
    fn forms() {
        assert_eq!(run("x$A-${A}y").unwrap(), "xa-ay");
        assert_eq!(run("${U:-d}|${E:-d}|${E-d}|${U-d}").unwrap(), "d|d||d");
        assert_eq!(run("${A:+x}|${E:+x}|${E+x}|${U+x}").unwrap(), "x||x|");
        assert_eq!(run("$$A $${A}").unwrap(), "$A ${A}");
        assert_eq!(run("${U:-${A}b}").unwrap(), "ab");
        assert_eq!(run("${A:?boom}").unwrap(), "a");
        assert_eq!(
            run("${U:?boom}").unwrap_err(),
            "required variable U is missing a value: boom"
        );
        assert!(run("${E:?}").is_err());
        assert_eq!(run("${E?}").unwrap(), "");
        assert!(run("${A").unwrap_err().contains("unterminated"));
        assert!(run("a $ b").is_err());
        assert!(run("${A*}").is_err());
        assert!(run("${}").is_err());
    }
}
