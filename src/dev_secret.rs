//! The development webhook secret: what `gemhook serve` uses on a loopback address when no
//! secret is configured, so that the quick start works without copying a secret around (as
//! `stripe listen` prints its `whsec_`). It is created once and kept next to the embedded
//! database, so restarts keep it and `gemhook send` finds it.
//!
//! Never used on a non-loopback address: there, a missing secret stops start-up.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, DEFAULT_DATABASE_URL, Redacted, Settings};

/// The development secret in use, for the start-up banner.
#[derive(Debug, Clone)]
pub struct DevSecret {
    pub secret: String,
    pub path: PathBuf,
    /// Created by this start (else kept from an earlier one).
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DevSecretError {
    #[error(
        "no webhook secret is configured and {listen} is not a loopback address, so every project webhook would be refused (401): set GEMHOOK_WEBHOOK_SECRETS to the webhook's signing secret, or set GEMHOOK_DYNAMIC_WEBHOOKS_ONLY=true if only per-job webhooks signed with Google's keys are expected"
    )]
    PublicWithoutSecret { listen: std::net::SocketAddr },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the development webhook secret could not be kept in {}", path.display())]
    Keep {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Puts the development secret into `settings` when the receiver has no project secret and
/// listens on loopback only; refuses a public address without one (every project webhook
/// would get 401) unless the operator said only dynamic, JWKS-signed webhooks are expected.
/// `generate` makes a fresh `whsec_` (the tools own that).
pub fn apply(
    settings: &mut Settings,
    generate: impl FnOnce() -> String,
) -> Result<Option<DevSecret>, DevSecretError> {
    if !settings.webhook_secrets.is_empty() {
        return Ok(None);
    }
    if !settings.listen.ip().is_loopback() {
        if settings.dynamic_webhooks_only {
            return Ok(None);
        }
        return Err(DevSecretError::PublicWithoutSecret {
            listen: settings.listen,
        });
    }
    let path = path_for(settings.database_url()?);
    let (secret, created) =
        load_or_create(&path, generate).map_err(|source| DevSecretError::Keep {
            path: path.clone(),
            source,
        })?;
    settings.webhook_secrets = vec![Redacted::new(secret.clone())];
    Ok(Some(DevSecret {
        secret,
        path,
        created,
    }))
}

/// The file's name, in the embedded database's folder.
const FILE_NAME: &str = "dev-webhook-secret";

/// Where the development secret of a deployment with this database URL lives: beside the
/// SQLite file, or in `./data` for a server database.
pub fn path_for(database_url: &str) -> PathBuf {
    let sqlite_path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest));
    let folder = match sqlite_path {
        Some(file) => Path::new(file)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("./data"),
    };
    folder.join(FILE_NAME)
}

/// The database URL a command would use from the environment alone (no config file): what
/// `gemhook send` consults to find the local server's development secret.
pub fn database_url_from_environment() -> String {
    ["GEMHOOK_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// Reads the secret at `path`; creates it (with its folder, readable by the owner only) when
/// absent. Returns the secret and whether it was created now.
pub fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> String,
) -> io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_owned(), false)),
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    let secret = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    io::Write::write_all(&mut options.open(path)?, format!("{secret}\n").as_bytes())?;
    Ok((secret, true))
}

/// Reads the secret at `path`, if one was created.
pub fn load(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_lives_beside_the_embedded_database() {
        assert_eq!(
            path_for("sqlite://./data/gemhook.db"),
            Path::new("./data/dev-webhook-secret")
        );
        assert_eq!(
            path_for("sqlite:///var/lib/gemhook/g.db?mode=rwc"),
            Path::new("/var/lib/gemhook/dev-webhook-secret")
        );
        assert_eq!(path_for("sqlite://g.db"), Path::new("./dev-webhook-secret"));
        assert_eq!(
            path_for("postgres://db/x"),
            Path::new("./data/dev-webhook-secret")
        );
    }

    #[test]
    fn it_is_created_once_and_then_kept() {
        let folder = std::env::temp_dir().join(format!("gemhook-dev-{}", std::process::id()));
        let path = folder.join("nested").join(FILE_NAME);

        let (first, created) = load_or_create(&path, || "whsec_first".into()).unwrap();
        let (again, created_again) = load_or_create(&path, || "whsec_second".into()).unwrap();

        assert_eq!((first.as_str(), created), ("whsec_first", true));
        assert_eq!((again.as_str(), created_again), ("whsec_first", false));
        assert_eq!(load(&path).as_deref(), Some("whsec_first"));
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
