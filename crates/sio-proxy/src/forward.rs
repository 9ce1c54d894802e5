//! Which paths the client-facing listener forwards to the nodes.
//!
//! Clients need Engine.IO (`/socket.io/`), the HTTP API (`/api/`) and the admin UI's files
//! (`/admin/`); a node's `/metrics`, `/readyz` and `/healthz` are for operators on the node's
//! own port. Everything outside the allow-list is answered 404 by the proxy itself.

use std::fmt;
use std::str::FromStr;

/// Default allow-list of `--forward-paths`.
pub const DEFAULT_FORWARD_PATHS: &str = "/socket.io/,/api/,/admin/";

/// One allowed path prefix (`/socket.io/`). A prefix ending in `/` also admits the path
/// without it (`/admin` for `/admin/`), which the nodes redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPrefix(String);

impl PathPrefix {
    /// Whether `path` (the request path, without the query) lies under this prefix.
    pub fn admits(&self, path: &str) -> bool {
        path.starts_with(&self.0)
            || (self.0.len() > 1 && self.0.ends_with('/') && path == &self.0[..self.0.len() - 1])
    }

    /// The prefix as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PathPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.starts_with('/') || s.contains(['?', '#', ' ']) || has_dot_segment(s) {
            return Err(format!(
                "`{s}` is not a path prefix (e.g. /socket.io/): it must start with `/` and hold \
                 no query, fragment, space or `.`/`..` segment"
            ));
        }
        Ok(PathPrefix(s.to_owned()))
    }
}

/// Whether the request path reaches a node: under one of `allowed`, and without a `.` or `..`
/// segment (raw or percent-encoded) that a server behind might resolve outside the prefix.
pub fn is_forwarded(path: &str, allowed: &[PathPrefix]) -> bool {
    !has_dot_segment(path) && allowed.iter().any(|p| p.admits(path))
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// The JSON body of the proxy's 404 for a path it does not forward.
pub fn not_forwarded_body(allowed: &[PathPrefix]) -> Vec<u8> {
    let list: Vec<&str> = allowed.iter().map(PathPrefix::as_str).collect();
    serde_json::json!({
        "code": 404,
        "message": format!("Not found: this address serves only {}", list.join(", ")),
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<PathPrefix> {
        DEFAULT_FORWARD_PATHS
            .split(',')
            .map(|p| p.parse().expect("prefix"))
            .collect()
    }

    #[test]
    fn client_routes_pass_and_operator_routes_do_not() {
        let allowed = defaults();
        for path in [
            "/socket.io/",
            "/api/notify",
            "/api/presence/room-1",
            "/admin/",
            "/admin",
            "/socket.io",
            "/admin/vendor/x.css",
        ] {
            assert!(is_forwarded(path, &allowed), "{path}");
        }
        for path in [
            "/metrics",
            "/readyz",
            "/healthz",
            "/",
            "/socket.iox",
            "/apix",
            "/administrator",
            "/api/../metrics",
            "/socket.io/%2E%2e/metrics",
            "/admin/./x",
            "*",
        ] {
            assert!(!is_forwarded(path, &allowed), "{path}");
        }
    }

    #[test]
    fn prefixes_are_validated() {
        assert!("/engine.io/".parse::<PathPrefix>().is_ok());
        assert!("/".parse::<PathPrefix>().expect("root").admits("/metrics"));
        for bad in ["socket.io/", "", "/a?b", "/a/../b", "/a b"] {
            assert!(bad.parse::<PathPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_refusal_names_the_allowed_paths() {
        let body = String::from_utf8(not_forwarded_body(&defaults())).expect("utf8");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["code"], 404);
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("/socket.io/, /api/, /admin/")),
            "{body}"
        );
    }
}
