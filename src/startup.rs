//! Building and running the application: `build` (connect, migrate, bind) → `port` →
//! `run_until_stopped(shutdown)`. Separate steps so tests bind port 0 and read the port back.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{AdminListen, ConfigError, Settings};
use crate::deliver::{Dispatcher, Handler, SinkSet};
use crate::gemini::gcs::GcsReader;
use crate::gemini::watch::WebhookWatch;
use crate::gemini::webhooks::WebhookService;
use crate::gemini::{AllowedOrigins, ApiKey, ClientSettings, GeminiClient, PointerPolicy};
use crate::http::{self, AppState};
use crate::jwks::JwksCache;
use crate::observe;
use crate::results::ResultsStore;
use crate::store::{ConnectOptions, Dialect, Store, StoreError};
use crate::telemetry::error_chain;
use crate::worker::{Follower, Worker};

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

    pub fn works(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the database is not usable")]
    Store(#[from] StoreError),
    #[error("the Gemini client settings are invalid")]
    Gemini(#[from] crate::gemini::ConfigError),
    #[error("the results store cannot be opened")]
    Results(#[from] crate::results::ResultsError),
    #[error("the sinks are misconfigured")]
    Sinks(#[from] crate::deliver::SinkConfigError),
    #[error("the HTTP client could not be built")]
    HttpClient(#[source] reqwest::Error),
    #[error(
        "no database at {} (the default, sqlite://./data/gemhook.db, is relative to the current directory): run this where `gemhook serve` runs, set GEMHOOK_DATABASE_URL, or pass --create to start an empty one",
        path.display()
    )]
    NoDatabase { path: std::path::PathBuf },
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
    /// `/metrics` on its own address, when `metrics_listen` is set.
    metrics: Option<(TcpListener, axum::Router)>,
    /// The console and admin API (and `/metrics`, unless it has its own address).
    admin: Option<(TcpListener, axum::Router)>,
    store: Store,
    worker: Option<Worker>,
    /// Runs when sinks are configured.
    dispatcher: Option<Dispatcher>,
    retention: Duration,
    prune_interval: Duration,
    connections: http::ConnectionLimits,
    /// Reads the Gemini webhooks' states, when an API key is configured.
    webhook_watch: Option<WebhookWatch>,
}

impl Application {
    /// Connects to the database, applies migrations (unless `auto_migrate` is off) and binds the
    /// listener. Nothing is served until [`Application::run_until_stopped`].
    pub async fn build(settings: &Settings, role: Role) -> Result<Application, StartupError> {
        Self::build_with_handlers(settings, role, HashMap::new()).await
    }

    /// [`Application::build`] with the embedding application's own handlers, by sink name.
    pub async fn build_with_handlers(
        settings: &Settings,
        role: Role,
        handlers: HashMap<String, Arc<dyn Handler>>,
    ) -> Result<Application, StartupError> {
        let keys = settings.keys()?;
        let mut store = connect(settings)?;
        if role.receives() {
            store = store.with_group_commit(settings.group_commit_writers, settings.batch_limits());
        }
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
        let webhook_watch = webhook_watch(settings)?;
        let mut state = AppState::new(
            store.clone(),
            keys,
            settings.policy(),
            jwks,
            http::ReceiveLimits {
                max_body_bytes: settings.max_body_bytes,
                max_inflight_body_bytes: settings.max_inflight_body_bytes,
                body_read_timeout: Duration::from_secs(settings.body_read_timeout_secs),
                ack_deadline: settings.ack_deadline(),
            },
            observe::install(),
        );
        if let Some(watch) = &webhook_watch {
            state = state.with_webhook_watch(watch.handle());
        }
        let admin_state = admin::AdminState::new(
            store.clone(),
            settings.admin_auth(rand::random())?,
            Some(state.clone()),
            webhook_watch.as_ref().map(WebhookWatch::handle),
        );
        let metrics_router = match settings.metrics_listen {
            Some(addr) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
                admin::metrics_router(admin_state.clone()),
            )),
            None => None,
        };
        let admin = bind_admin(settings.admin_listen()?)
            .await?
            .map(|listener| (listener, admin::router(admin_state)));
        let router = http::router(state, role.receives());
        let (worker, dispatcher) = if role.works() {
            let sinks = build_sinks(settings, handlers)?;
            let worker = build_worker(settings, store.clone(), sinks.clone())?;
            let dispatcher = (!sinks.is_empty())
                .then(|| Dispatcher::new(store.clone(), sinks, settings.worker()));
            (Some(worker), dispatcher)
        } else {
            (None, None)
        };
        Ok(Application {
            listener,
            router,
            metrics: metrics_router,
            admin,
            store,
            worker,
            dispatcher,
            retention: settings.retention()?,
            prune_interval: Duration::from_secs(settings.prune_interval_secs.max(1)),
            connections: http::ConnectionLimits {
                header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs),
                max_connections: settings.max_connections,
                ..http::ConnectionLimits::default()
            },
            webhook_watch,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The console's address, when it listens.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves (and works, for the worker roles) until `shutdown` resolves; then the server
    /// stops accepting and lets in-flight requests finish, the worker stops claiming and drains,
    /// and the database pool is closed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let addr = self.local_addr();
        let store = self.store.clone();
        crate::retention::spawn_pruner(
            store.clone(),
            self.retention,
            self.prune_interval,
            stop.clone(),
        );
        let worker = self.worker.map(|worker| {
            store.listen_for_jobs();
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(stop).await })
        });
        let dispatcher = self.dispatcher.map(|dispatcher| {
            let stop = stop.clone();
            tokio::spawn(async move { dispatcher.run(stop).await })
        });
        if let Some(watch) = self.webhook_watch {
            tokio::spawn(watch.run(stop.clone()));
        }
        if let Some((listener, router)) = self.metrics {
            let stop = stop.clone();
            tracing::info!(addr = %listener.local_addr()?, "metrics listening");
            let limits = self.connections;
            tokio::spawn(http::serve(listener, router, limits, stop));
        }
        if let Some((listener, router)) = self.admin {
            let stop = stop.clone();
            tracing::info!(addr = %listener.local_addr()?, "console listening");
            let limits = self.connections;
            tokio::spawn(http::serve(listener, router, limits, stop));
        }
        tracing::info!(%addr, "gemhook listening");
        http::serve(self.listener, self.router, self.connections, stop.clone()).await;
        for task in [worker, dispatcher].into_iter().flatten() {
            let _ = task.await;
        }
        store.close().await;
        tracing::info!("gemhook stopped");
        Ok(())
    }
}

/// The console's listener. The default address may be taken (a second replica on one host):
/// then there is no console in this process, said in the log; a configured one must bind.
async fn bind_admin(listen: AdminListen) -> Result<Option<TcpListener>, StartupError> {
    match listen {
        AdminListen::Off => Ok(None),
        AdminListen::Configured(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| StartupError::Bind { addr, source }),
        AdminListen::Default(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Ok(Some(listener)),
            Err(error) => {
                tracing::warn!(%addr, %error, "the console's default address is taken: no console in this process (set GEMHOOK_ADMIN_LISTEN to give it another)");
                Ok(None)
            }
        },
    }
}

/// The store described by the settings (lazily connected).
pub fn connect(settings: &Settings) -> Result<Store, StartupError> {
    let options = ConnectOptions {
        max_connections: settings.database_max_connections,
        acquire_timeout: settings.database_acquire_timeout(),
        listen_url: settings.database_listen_url().map(str::to_owned),
    };
    Ok(Store::connect_lazy(settings.database_url()?, &options)?)
}

/// The configured sinks, with the embedding application's handlers. NATS streams named in the
/// configuration are created in the background (a broker that is down must not stop start-up:
/// its deliveries wait and retry).
pub fn build_sinks(
    settings: &Settings,
    handlers: HashMap<String, Arc<dyn Handler>>,
) -> Result<Arc<SinkSet>, StartupError> {
    let sinks = Arc::new(SinkSet::from_config(&settings.sinks, handlers)?);
    if !sinks.is_empty() {
        let background = sinks.clone();
        tokio::spawn(async move {
            for (sink, error) in background.ensure_streams().await {
                tracing::warn!(sink, error = %error_chain(&error), "could not ensure the sink's stream");
            }
        });
    }
    Ok(sinks)
}

/// The worker described by the settings, on `store`, handing off to `sinks`.
pub fn build_worker(
    settings: &Settings,
    store: Store,
    sinks: Arc<SinkSet>,
) -> Result<Worker, StartupError> {
    let base_url = reqwest::Url::parse(&settings.gemini_base_url).map_err(|_| {
        crate::gemini::ConfigError::InvalidBaseUrl {
            reason: "gemini_base_url is not a URL".into(),
        }
    })?;
    let gemini = match gemini_client(settings)? {
        Some(client) => Some(client),
        None => {
            tracing::warn!(
                "GEMINI_API_KEY is not set: jobs that need Gemini will be dead-lettered until it is (then `gemhook jobs retry --discarded`)"
            );
            None
        }
    };
    let allowed = match &gemini {
        Some(client) => client.allowed_origins().clone(),
        None => AllowedOrigins::new(&base_url, &settings.allowed_hosts)?,
    };
    let results = ResultsStore::open(&settings.results_dir, settings.results_url.as_deref())?;
    // gs:// pointers are read with Cloud Storage credentials, as Google users configure them
    // (GOOGLE_SERVICE_ACCOUNT, GOOGLE_APPLICATION_CREDENTIALS, ...); without any, dead-lettered.
    let gcs = GcsReader::from_env();
    let follower = Follower {
        gemini,
        results,
        policy: PointerPolicy {
            allowed,
            follow_gcs: gcs.is_some(),
        },
        store: store.clone(),
        gcs,
    };
    Ok(Worker::new(store, follower, settings.worker(), sinks))
}

/// The Gemini client the settings describe, or `None` without an API key. The worker, the
/// webhook watcher and `gemhook webhooks` share it, so the key goes to the same origins.
pub fn gemini_client(settings: &Settings) -> Result<Option<GeminiClient>, StartupError> {
    let Some(key) = settings.gemini_api_key() else {
        return Ok(None);
    };
    Ok(Some(GeminiClient::new(ClientSettings {
        base_url: settings.gemini_base_url.clone(),
        api_key: ApiKey::new(key),
        allowed_hosts: settings.allowed_hosts.clone(),
        connect_timeout: Duration::from_secs(settings.gemini_connect_timeout_secs),
        read_timeout: Duration::from_secs(settings.gemini_read_timeout_secs),
    })?))
}

/// The webhook watcher, when an API key is configured and the interval is not 0.
fn webhook_watch(settings: &Settings) -> Result<Option<WebhookWatch>, StartupError> {
    if settings.webhook_watch_interval_secs == 0 {
        return Ok(None);
    }
    Ok(gemini_client(settings)?.map(|client| {
        WebhookWatch::new(
            WebhookService::new(client),
            Duration::from_secs(settings.webhook_watch_interval_secs),
        )
    }))
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

/// The store for a CLI command. An embedded SQLite file that does not exist yet is created
/// (and said so on stderr) only when `settings.create_database` is set: a command run from another directory
/// would otherwise read a new, empty database and report nothing. Postgres is migrated only by
/// `serve` and `migrate` (a deploy step may own that); a server that cannot be reached is
/// reported with the reason.
pub async fn open(settings: &Settings) -> Result<Store, StartupError> {
    let url = settings.database_url()?;
    if let Some(file) = crate::store::sqlite_file(url) {
        if !file.exists() {
            let shown = std::path::absolute(&file).unwrap_or_else(|_| file.clone());
            if !settings.create_database {
                return Err(StartupError::NoDatabase { path: shown });
            }
            eprintln!("created a new database at {}", shown.display());
        }
    }
    let store = connect(settings)?;
    match store.dialect() {
        Dialect::Sqlite => store.migrate().await?,
        Dialect::Postgres => store.check_connection().await?,
    }
    Ok(store)
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

/// Embedding gemhook: the application, plus the user's own handlers run by the worker with the
/// same retries and dead letters as every other sink.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use gemhook::deliver::{HandlerError, Outcome};
/// let settings = gemhook::config::Settings::load(None)?; // declares [[sinks]] kind = "handler", name = "mine"
/// let app = gemhook::Server::new(settings)
///     .handler("mine", |outcome: &Outcome| {
///         let id = outcome.webhook_id.clone();
///         async move {
///             println!("{id} finished");
///             Ok::<(), HandlerError>(())
///         }
///     })
///     .build()
///     .await?;
/// app.run_until_stopped(gemhook::startup::shutdown_signal()).await?;
/// # Ok(()) }
/// ```
pub struct Server {
    settings: Settings,
    role: Role,
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Server {
    pub fn new(settings: Settings) -> Server {
        Server {
            settings,
            role: Role::All,
            handlers: HashMap::new(),
        }
    }

    /// Which parts run (`All` by default).
    pub fn role(mut self, role: Role) -> Server {
        self.role = role;
        self
    }

    /// Registers the handler that the `kind = "handler"` sink named `name` calls.
    pub fn handler(mut self, name: impl Into<String>, handler: impl Handler) -> Server {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    pub async fn build(self) -> Result<Application, StartupError> {
        Application::build_with_handlers(&self.settings, self.role, self.handlers).await
    }
}
