//! Building and running the application: `build` (connect, migrate, bind) → `port` →
//! `run_until_stopped(shutdown)`. Separate steps so tests bind port 0 and read the port back.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ConfigError, Settings};
use crate::http::{self, AppState};
use crate::jwks::JwksCache;
use crate::store::{ConnectOptions, Store, StoreError};

/// Which parts of gemhook this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Only the HTTP receiver.
    Receiver,
    /// Only the background worker (health endpoints stay up for probes).
    Worker,
    /// Both.
    All,
}

impl Role {
    pub fn receives(self) -> bool {
        matches!(self, Role::Receiver | Role::All)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the database is not usable")]
    Store(#[from] StoreError),
    #[error("the HTTP client could not be built")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
}

impl Application {
    /// Connects to the database, applies migrations (unless `auto_migrate` is off) and binds the
    /// listener. Nothing is served until [`Application::run_until_stopped`].
    pub async fn build(settings: &Settings, role: Role) -> Result<Application, StartupError> {
        let keys = settings.keys()?;
        let store = connect(settings)?;
        if settings.auto_migrate {
            store.migrate().await?;
        }
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let jwks = if settings.dynamic_webhooks && role.receives() {
            Some(jwks_cache(settings)?)
        } else {
            None
        };
        let state = AppState::new(
            store.clone(),
            keys,
            settings.policy(),
            jwks,
            settings.max_body_bytes,
        );
        let router = http::router(state, role.receives());
        Ok(Application {
            listener,
            router,
            store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// and closes the database pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "gemhook listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        self.store.close().await;
        tracing::info!("gemhook stopped");
        Ok(())
    }
}

/// The store described by the settings (lazily connected).
pub fn connect(settings: &Settings) -> Result<Store, StartupError> {
    let options = ConnectOptions {
        max_connections: settings.database_max_connections,
        acquire_timeout: settings.database_acquire_timeout(),
    };
    Ok(Store::connect_lazy(settings.database_url()?, &options)?)
}

/// Google's key set, fetched in the background from now on: start-up never waits for Google.
fn jwks_cache(settings: &Settings) -> Result<JwksCache, StartupError> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("gemhook/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(StartupError::HttpClient)?;
    let cache = JwksCache::new(
        settings.jwks_url()?,
        client,
        Duration::from_secs(settings.jwks_ttl_secs),
        Duration::from_secs(settings.jwks_min_refresh_secs),
    );
    cache.spawn_initial_fetch();
    Ok(cache)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}
