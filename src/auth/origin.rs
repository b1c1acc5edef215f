//! The `Origin` check against cross-site WebSocket hijacking: a page on
//! another site must not be able to open a socket to tickcast from a
//! visitor's browser (and with it whatever that browser can reach).
//!
//! Browsers send `Origin` on every WebSocket handshake; other clients
//! usually send none and are let through (they are not a visitor's browser
//! acting for a page). With no allow-list, a browser is let in only from
//! the page's own server: the `Origin`'s host and port equal the `Host` the
//! request was sent to.

/// Which browser origins may open a WebSocket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Normalized `scheme://host[:port]` entries; empty means "the server's
    /// own host only".
    allowed: Vec<String>,
    /// `*` was listed: any origin.
    any: bool,
}

/// Why an `Origin` was refused (the 403's body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OriginRefused(pub String);

impl OriginPolicy {
    /// From `--allowed-origin` / `allowed_origins`: `scheme://host[:port]`
    /// entries (no path), or `*` for any.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in entries {
            if entry == "*" {
                policy.any = true;
                continue;
            }
            match normalize(entry) {
                Some(origin) => policy.allowed.push(origin),
                None => {
                    return Err(format!(
                        "allowed origin {entry:?} is not of the form scheme://host[:port] \
                         (for example https://app.example.com), nor *"
                    ))
                }
            }
        }
        Ok(policy)
    }

    /// Lets a handshake through, or says why not. `origin` and `host` are
    /// the raw header values, if present.
    pub fn check(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> Result<(), OriginRefused> {
        let Some(origin) = origin else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let shown = String::from_utf8_lossy(origin);
        let Some(origin) = std::str::from_utf8(origin).ok().and_then(normalize) else {
            return Err(OriginRefused(format!(
                "Origin {shown:?} is not allowed to open a WebSocket here"
            )));
        };
        let allowed = if self.allowed.is_empty() {
            same_host(&origin, host)
        } else {
            self.allowed.contains(&origin)
        };
        if allowed {
            Ok(())
        } else if self.allowed.is_empty() {
            Err(OriginRefused(format!(
                "Origin {shown:?} is another site than this server's: only pages served from \
                 this host may open a WebSocket (list other sites with --allowed-origin)"
            )))
        } else {
            Err(OriginRefused(format!(
                "Origin {shown:?} is not in this server's allowed origins"
            )))
        }
    }
}

/// `scheme://host[:port]` lowercased, without a trailing `/` or the
/// scheme's default port; `None` for anything else (`null`, paths, ...).
fn normalize(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let authority = strip_default_port(scheme, authority);
    Some(format!("{scheme}://{authority}"))
}

fn strip_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// Is the (normalized) origin's host and port the request's `Host`?
fn same_host(origin: &str, host: Option<&[u8]>) -> bool {
    let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    authority == strip_default_port(scheme, &host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &OriginPolicy, origin: Option<&str>, host: &str) -> bool {
        policy
            .check(origin.map(str::as_bytes), Some(host.as_bytes()))
            .is_ok()
    }

    #[test]
    fn without_a_list_only_the_own_host_is_let_in() {
        let own = OriginPolicy::default();
        assert!(
            check(&own, None, "127.0.0.1:8080"),
            "no Origin: not a browser"
        );
        assert!(check(&own, Some("http://127.0.0.1:8080"), "127.0.0.1:8080"));
        assert!(check(&own, Some("https://Ticks.Example"), "ticks.example"));
        assert!(check(
            &own,
            Some("https://ticks.example"),
            "ticks.example:443"
        ));
        assert!(check(
            &own,
            Some("http://ticks.example:80"),
            "ticks.example"
        ));
        assert!(!check(
            &own,
            Some("http://127.0.0.1:9999"),
            "127.0.0.1:8080"
        ));
        assert!(!check(&own, Some("https://evil.example"), "ticks.example"));
        assert!(!check(&own, Some("null"), "ticks.example"));
        assert!(!check(
            &own,
            Some("http://ticks.example"),
            "ticks.example:8080"
        ));
        assert!(
            own.check(Some(b"http://a"), None).is_err(),
            "no Host header"
        );
    }

    #[test]
    fn a_list_lets_in_exactly_its_entries() {
        let list = OriginPolicy::new(&[
            "https://app.example/".into(),
            "http://localhost:3000".into(),
        ])
        .unwrap();
        assert!(check(&list, Some("https://app.example"), "ticks.example"));
        assert!(check(
            &list,
            Some("HTTPS://APP.EXAMPLE:443"),
            "ticks.example"
        ));
        assert!(check(&list, Some("http://localhost:3000"), "ticks.example"));
        assert!(
            !check(&list, Some("http://app.example"), "ticks.example"),
            "scheme counts"
        );
        assert!(!check(
            &list,
            Some("https://app.example.evil"),
            "ticks.example"
        ));
        assert!(
            !check(&list, Some("https://ticks.example"), "ticks.example"),
            "a list replaces the own-host rule"
        );
        assert!(check(&list, None, "ticks.example"));
        let any = OriginPolicy::new(&["*".into()]).unwrap();
        assert!(check(
            &any,
            Some("https://anything.example"),
            "ticks.example"
        ));
    }

    #[test]
    fn bad_entries_are_refused_at_start() {
        for bad in [
            "app.example",
            "https://app.example/path",
            "null",
            "https://",
        ] {
            assert!(OriginPolicy::new(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
