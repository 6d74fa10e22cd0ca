//! Signal names as Compose writes them ("SIGTERM", "TERM", "15").
//!
//! Pure parsing; never sends a signal itself.

use nix::sys::signal::Signal;
use std::str::FromStr;

/// Parses a signal name or number; `None` for an unknown one.
pub fn parse(name: &str) -> Option<i32> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).ok().map(|s| s as i32);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok().map(|s| s as i32)
}

/// The stop signal for a spec value, SIGTERM when unset or unknown.
pub fn stop_signal(name: &str) -> i32 {
    parse(name).unwrap_or(libc::SIGTERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(parse("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse("term"), Some(libc::SIGTERM));
        assert_eq!(parse("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse("9"), Some(libc::SIGKILL));
        assert_eq!(parse("SIGBOGUS"), None);
        assert_eq!(stop_signal(""), libc::SIGTERM);
    }
}
