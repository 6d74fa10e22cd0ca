//! Compose's dotenv syntax, for the project `.env`, `--env-file` and a
//! service's `env_file:`: `KEY=VALUE`, `export KEY=VALUE`, comments, single
//! quotes (literal), double quotes (escapes, several lines), interpolation
//! in unquoted and double-quoted values, and bare `KEY` (value taken from the
//! lookup, skipped when unset).
//!
//! Parses text only; it must never read files or the process environment.

/// One parse failure: 1-based line and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotenvError {
    pub line: usize,
    pub message: String,
}

/// Parses `src`. `lookup` resolves variables that the file itself does not
/// define (the caller's environment); earlier keys of the file are visible
/// to later values.
pub fn parse(
    src: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, DotenvError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let lines: Vec<&str> = src.lines().collect();
    let mut idx = 0;
    while idx < lines.len() {
        let lineno = idx + 1;
        let line = lines[idx].trim_start_matches('\u{feff}').trim();
        idx += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let (key, rest) = match line.find('=') {
            Some(p) => (line[..p].trim(), Some(line[p + 1..].trim_start())),
            None => (line, None),
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(DotenvError {
                line: lineno,
                message: format!("invalid variable name {key:?}"),
            });
        }
        let Some(rest) = rest else {
            if let Some(v) = lookup(key) {
                out.retain(|(k, _)| k != key);
                out.push((key.to_string(), v));
            }
            continue;
        };
        let own = out.clone();
        let look = |name: &str| {
            lookup(name).or_else(|| {
                own.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let value = if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            // Quoted values may continue over several lines.
            let mut buf = rest[1..].to_string();
            let close = loop {
                if let Some(p) = find_close(&buf, q) {
                    break p;
                }
                if idx >= lines.len() {
                    return Err(DotenvError {
                        line: lineno,
                        message: format!("unterminated quoted value for {key}"),
                    });
                }
                buf.push('\n');
                buf.push_str(lines[idx]);
                idx += 1;
            };
            let raw = &buf[..close];
            let after = buf[close + 1..].trim();
            if !after.is_empty() && !after.starts_with('#') {
                return Err(DotenvError {
                    line: lineno,
                    message: format!("unexpected text after the quoted value of {key}"),
                });
            }
            if q == '\'' {
                raw.to_string()
            } else {
                let unescaped = unescape(raw);
                let mut unset = Vec::new();
                crate::interp::interpolate(&unescaped, &look, &mut unset).map_err(|m| {
                    DotenvError {
                        line: lineno,
                        message: m,
                    }
                })?
            }
        } else {
            let v = match rest.find(" #").or_else(|| rest.find("\t#")) {
                Some(p) => rest[..p].trim_end(),
                None => rest.trim_end(),
            };
            let mut unset = Vec::new();
            crate::interp::interpolate(v, &look, &mut unset).map_err(|m| DotenvError {
                line: lineno,
                message: m,
            })?
        };
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn find_close(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if q == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == q && !escaped {
            return Some(i);
        }
        escaped = false;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            // Kept escaped so interpolation sees a literal dollar.
            Some('$') => out.push_str("$$"),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax() {
        let src = "# c\nA=1\nexport B = two # note\nC='lit $A'\nD=\"x\\ty ${A}\"\nE\nF=\"multi\nline\"\nG=${B}-${NOPE:-d}\nH=a#b\n";
        let look = |k: &str| (k == "E").then(|| "from-env".to_string());
        let got = parse(src, &look).unwrap();
        let m: std::collections::BTreeMap<_, _> = got.into_iter().collect();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two");
        assert_eq!(m["C"], "lit $A");
        assert_eq!(m["D"], "x\ty 1");
        assert_eq!(m["E"], "from-env");
        assert_eq!(m["F"], "multi\nline");
        assert_eq!(m["G"], "two-d");
        assert_eq!(m["H"], "a#b");
    }

    #[test]
    fn errors_have_lines() {
        let look = |_: &str| None;
        assert_eq!(parse("A=1\nB=\"open\n", &look).unwrap_err().line, 2);
        assert_eq!(parse("A=1\n=x\n", &look).unwrap_err().line, 2);
    }
}
