//! Flags of the admin UI server (flattened into the node's [`Config`](crate::Config)).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Default namespace the admin UI connects to (the UI's own default).
pub const DEFAULT_ADMIN_NAMESPACE: &str = "/admin";
/// Default lifetime of a session id handed to a logged-in UI.
pub const DEFAULT_ADMIN_SESSION_TTL: &str = "24h";
/// The hosted admin UI, allowed cross-origin with `--admin-hosted-ui`.
pub const HOSTED_UI_ORIGIN: &str = "https://admin.socket.io";

/// How the admin UI logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdminAuth {
    /// `auth: {username, password}` checked against `--admin-user` and the bcrypt
    /// `--admin-password-hash`; the UI then reconnects with the session id it was given.
    Basic,
    /// Anyone reaching the node may watch and steer it (development only; warned at start-up).
    None,
}

/// What the admin UI is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdminMode {
    /// Aggregates only (`server_stats` every 2 s): cheap at any number of sockets.
    Production,
    /// Also every socket (`all_sockets`), connects, disconnects, room changes and events.
    Development,
}

/// Admin UI flags.
#[derive(Debug, Clone, Args)]
pub struct AdminConfig {
    /// Namespace of the admin UI protocol (`@socket.io/admin-ui`).
    #[arg(long, env = "SIO_ADMIN_NAMESPACE", default_value = DEFAULT_ADMIN_NAMESPACE)]
    pub admin_namespace: String,

    /// How the admin UI logs in: `basic` (user and bcrypt hash) or `none` (development).
    /// With `basic` and no `--admin-user`, the admin namespace and UI are off.
    #[arg(long, env = "SIO_ADMIN_AUTH", value_enum, default_value_t = AdminAuth::Basic)]
    pub admin_auth: AdminAuth,

    /// User name the admin UI logs in with.
    #[arg(long, env = "SIO_ADMIN_USER")]
    pub admin_user: Option<String>,

    /// bcrypt hash of the admin password (`$2b$12$…`; make one with
    /// `htpasswd -nbBC 12 "" 'password' | cut -c2-` or any bcrypt tool).
    #[arg(long, env = "SIO_ADMIN_PASSWORD_HASH", hide_env_values = true)]
    pub admin_password_hash: Option<String>,

    /// `production`: aggregates only; `development`: every socket, room change and event too.
    #[arg(long, env = "SIO_ADMIN_MODE", value_enum, default_value_t = AdminMode::Production)]
    pub admin_mode: AdminMode,

    /// Lifetime of the session id a logged-in UI reconnects with.
    #[arg(long, env = "SIO_ADMIN_SESSION_TTL", value_parser = humantime::parse_duration, default_value = DEFAULT_ADMIN_SESSION_TTL)]
    pub admin_session_ttl: Duration,

    /// Directory holding the admin UI's static files (`ui/dist` of the npm package
    /// `@socket.io/admin-ui`), served at `/admin/`; without it the UI is not served.
    #[arg(long, env = "SIO_ADMIN_UI_DIR")]
    pub admin_ui_dir: Option<PathBuf>,

    /// Let the hosted UI (https://admin.socket.io) connect: CORS with credentials for that
    /// origin.
    #[arg(long, env = "SIO_ADMIN_HOSTED_UI")]
    pub admin_hosted_ui: bool,
}

/// An admin configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum AdminConfigError {
    /// The namespace is not a path or is taken by the application.
    #[error(
        "--admin-namespace must start with '/', be at most 64 characters, and not be one of the application's namespaces {taken:?} (got {got:?})"
    )]
    BadNamespace {
        /// What was given.
        got: String,
        /// Namespaces the node already serves.
        taken: Vec<&'static str>,
    },
    /// Only one half of the credentials.
    #[error("--admin-user and --admin-password-hash go together: set both (or neither)")]
    HalfCredentials,
    /// The hash is not a bcrypt hash.
    #[error(
        "--admin-password-hash is not a bcrypt hash ($2a$/$2b$/$2y$, cost and 53 characters): {0}"
    )]
    BadHash(String),
    /// An empty or overlong user name.
    #[error("--admin-user must be 1 to 128 characters")]
    BadUser,
    /// The UI directory cannot be served.
    #[error(
        "--admin-ui-dir {0:?} has no index.html: point it at ui/dist of the npm package @socket.io/admin-ui (deploy/local/deps.sh installs it)"
    )]
    NoUi(PathBuf),
    /// A session that ends at once, or lives for ever.
    #[error("--admin-session-ttl must be between 1m and 30d (got {0:?})")]
    BadSessionTtl(Duration),
}

impl AdminConfig {
    /// True when the admin namespace is served: credentials given, or `--admin-auth none`.
    pub fn enabled(&self) -> bool {
        self.admin_auth == AdminAuth::None || self.admin_user.is_some()
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), AdminConfigError> {
        let ns = &self.admin_namespace;
        if !ns.starts_with('/')
            || ns.len() < 2
            || ns.len() > 64
            || crate::NAMESPACES.contains(&ns.as_str())
        {
            return Err(AdminConfigError::BadNamespace {
                got: ns.clone(),
                taken: crate::NAMESPACES.to_vec(),
            });
        }
        match (&self.admin_user, &self.admin_password_hash) {
            (Some(_), None) | (None, Some(_)) => return Err(AdminConfigError::HalfCredentials),
            (Some(user), Some(hash)) => {
                if user.is_empty() || user.chars().count() > 128 {
                    return Err(AdminConfigError::BadUser);
                }
                hash.parse::<bcrypt::HashParts>()
                    .map_err(|e| AdminConfigError::BadHash(e.to_string()))?;
            }
            (None, None) => {}
        }
        let ttl = self.admin_session_ttl;
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(30 * 86_400) {
            return Err(AdminConfigError::BadSessionTtl(ttl));
        }
        if let Some(dir) = &self.admin_ui_dir
            && !Path::new(dir).join("index.html").is_file()
        {
            return Err(AdminConfigError::NoUi(dir.clone()));
        }
        Ok(())
    }
}
