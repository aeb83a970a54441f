//! The admin API, JSON under `/api/v1/`, for scripts and for the console's own buttons. Every
//! read and action is [`crate::inspect`]'s or the store's, shared with the CLI; this module only
//! parses requests and shapes answers. Described by the OpenAPI document at
//! `/api/v1/openapi.json`, generated from these handlers.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use super::AdminState;
use crate::inspect::{self, BulkRetry, EventDetail, Stats};
use crate::store::{
    Cancelled, DeliveryFilter, DeliveryRecord, DeliverySummary, EventFilter, EventSummary,
    JobDetail, JobFilter, JobId, JobSummary, QueueState, Requeued, StoreError,
};
use crate::telemetry::error_chain;

/// Rows per page when the request does not say.
pub const DEFAULT_PAGE: i64 = 50;
/// The most rows one page returns.
pub const MAX_PAGE: i64 = 500;

/// An API error: a status, a reason code scripts can match on, and a message for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiProblem {
    #[serde(skip)]
    pub status: StatusCode,
    /// e.g. `not_found`, `bad_request`, `running`, `not_waiting`, `unauthenticated`, `csrf`.
    pub error: &'static str,
    pub message: String,
}

impl ApiProblem {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiProblem {
            status,
            error,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {}", what.into()),
        )
    }
}

impl From<StoreError> for ApiProblem {
    fn from(error: StoreError) -> Self {
        // The operator reads the cause in the log; the answer says what failed, no more.
        tracing::warn!(error = %error_chain(&error), "admin API: the store failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database could not be read or written; see the log",
        )
    }
}

impl IntoResponse for ApiProblem {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiProblem>;

/// A page of a list, newest first; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Absent on the last page.
    pub next_cursor: Option<String>,
}

pub(super) fn page<T>(mut items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Page<T> {
    // One row more than asked says whether there is a next page.
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| items.last().map(|last| id(last).to_string()))
        .flatten();
    Page { items, next_cursor }
}

/// Filters of `GET /api/v1/events` (and the console's list): every one optional.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Event type, e.g. `batch.succeeded`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// How the event was filed: `accepted`, `ignored`, `unparseable`.
    pub status: Option<String>,
    /// The verifying scheme: `v1`, `v1a`, `jwt`.
    pub scheme: Option<String>,
    /// RFC 3339: received at or after.
    pub since: Option<String>,
    /// RFC 3339: received before.
    pub until: Option<String>,
    /// The resource the event is about (a batch or operation name).
    pub resource_id: Option<String>,
    /// `webhook-id`s starting with this.
    pub id_prefix: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Rows per page (default 50, at most 500).
    pub limit: Option<i64>,
}

impl EventsQuery {
    pub fn filter(&self) -> Result<EventFilter, ApiProblem> {
        Ok(EventFilter {
            event_type: non_empty(&self.event_type),
            status: non_empty(&self.status),
            scheme: non_empty(&self.scheme),
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            resource_id: non_empty(&self.resource_id),
            webhook_id_prefix: non_empty(&self.id_prefix),
            before: cursor(&self.cursor)?,
        })
    }
}

/// Filters of `GET /api/v1/jobs`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// `available`, `running`, `retryable`, `completed`, `discarded` or `cancelled`.
    pub state: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// RFC 3339: created at or after.
    pub since: Option<String>,
    /// The last attempt's error, exactly (as the dashboard groups dead letters).
    pub last_error: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

impl JobsQuery {
    pub fn filter(&self) -> Result<JobFilter, ApiProblem> {
        Ok(JobFilter {
            state: queue_state(&self.state)?,
            event_type: non_empty(&self.event_type),
            since: time(&self.since, "since")?,
            last_error: non_empty(&self.last_error),
            before: cursor(&self.cursor)?,
        })
    }
}

/// Filters of `GET /api/v1/deliveries`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    pub state: Option<String>,
    /// The sink's name, as configured.
    pub sink: Option<String>,
    /// The deliveries of one event.
    pub webhook_id: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

impl DeliveriesQuery {
    pub fn filter(&self) -> Result<DeliveryFilter, ApiProblem> {
        Ok(DeliveryFilter {
            state: queue_state(&self.state)?,
            sink: non_empty(&self.sink),
            webhook_id: non_empty(&self.webhook_id),
            before: cursor(&self.cursor)?,
        })
    }
}

/// The dead letters a bulk retry takes; `dry_run` counts them and changes nothing.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct RetryDeadJobs {
    #[serde(default, rename = "type")]
    #[schema(rename = "type")]
    pub event_type: Option<String>,
    /// The last attempt's error, exactly.
    #[serde(default)]
    pub last_error: Option<String>,
    /// RFC 3339: jobs created at or after.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

impl RetryDeadJobs {
    pub fn filter(&self) -> Result<JobFilter, ApiProblem> {
        Ok(JobFilter {
            event_type: non_empty(&self.event_type),
            last_error: non_empty(&self.last_error),
            since: time(&self.since, "since")?,
            ..JobFilter::default()
        })
    }
}

#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct DryRun {
    #[serde(default)]
    pub dry_run: bool,
}

/// What a replay or retry did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Requeue {
    /// The job (or delivery) now queued.
    pub requeued: i64,
}

/// The queue entry a cancel left.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CancelResult {
    pub cancelled: i64,
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn time(value: &Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiProblem> {
    non_empty(value)
        .map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| ApiProblem::bad_request(format!("{name}: not an RFC 3339 time")))
        })
        .transpose()
}

fn cursor(value: &Option<String>) -> Result<Option<i64>, ApiProblem> {
    non_empty(value)
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| ApiProblem::bad_request("cursor: not a cursor from next_cursor"))
        })
        .transpose()
}

fn queue_state(value: &Option<String>) -> Result<Option<QueueState>, ApiProblem> {
    non_empty(value)
        .map(|text| {
            text.parse::<QueueState>()
                .map_err(|e| ApiProblem::bad_request(format!("state: {e}")))
        })
        .transpose()
}

pub fn limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

fn requeued(outcome: Requeued, what: String) -> ApiResult<Requeue> {
    match outcome {
        Requeued::Queued(job) => Ok(Json(Requeue { requeued: job.0 })),
        Requeued::Running => Err(ApiProblem::new(
            StatusCode::CONFLICT,
            "running",
            format!("{what}: its job is running right now; try again when it ends"),
        )),
        Requeued::NotFound => Err(ApiProblem::not_found(what)),
    }
}

#[utoipa::path(get, path = "/api/v1/events", params(EventsQuery),
    responses((status = 200, body = Page<EventSummary>), (status = 400, body = ApiProblem), (status = 401, body = ApiProblem)))]
pub async fn list_events(
    State(state): State<AdminState>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Page<EventSummary>> {
    Ok(Json(events_page(&state, &query).await?.1))
}

/// A page of events as a query asks (the API's and the console's list), with its filter.
pub(super) async fn events_page(
    state: &AdminState,
    query: &EventsQuery,
) -> Result<(EventFilter, Page<EventSummary>), ApiProblem> {
    let (filter, limit) = (query.filter()?, limit(query.limit));
    let events = state.store.list_events(&filter, limit + 1).await?;
    Ok((filter, page(events, limit, |e| e.id)))
}

#[utoipa::path(get, path = "/api/v1/events/{webhook_id}",
    params(("webhook_id" = String, Path, description = "the delivery's webhook-id")),
    responses((status = 200, body = EventDetail), (status = 404, body = ApiProblem)))]
pub async fn show_event(
    State(state): State<AdminState>,
    Path(webhook_id): Path<String>,
) -> ApiResult<EventDetail> {
    match inspect::event_detail(&state.store, &webhook_id).await? {
        Some((_, detail)) => Ok(Json(detail)),
        None => Err(ApiProblem::not_found(format!("event {webhook_id}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/events/{webhook_id}/replay",
    params(("webhook_id" = String, Path)),
    responses((status = 200, body = Requeue), (status = 404, body = ApiProblem), (status = 409, body = ApiProblem)))]
pub async fn replay_event(
    State(state): State<AdminState>,
    Path(webhook_id): Path<String>,
) -> ApiResult<Requeue> {
    let outcome = state.store.replay_event(&webhook_id).await?;
    requeued(outcome, format!("event {webhook_id}"))
}

#[utoipa::path(get, path = "/api/v1/jobs", params(JobsQuery),
    responses((status = 200, body = Page<JobSummary>), (status = 400, body = ApiProblem)))]
pub async fn list_jobs(
    State(state): State<AdminState>,
    Query(query): Query<JobsQuery>,
) -> ApiResult<Page<JobSummary>> {
    Ok(Json(jobs_page(&state, &query).await?.1))
}

/// A page of jobs as a query asks, with its filter.
pub(super) async fn jobs_page(
    state: &AdminState,
    query: &JobsQuery,
) -> Result<(JobFilter, Page<JobSummary>), ApiProblem> {
    let (filter, limit) = (query.filter()?, limit(query.limit));
    let jobs = state.store.list_jobs(&filter, limit + 1).await?;
    Ok((filter, page(jobs, limit, |j| j.id.0)))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = JobDetail), (status = 404, body = ApiProblem)))]
pub async fn show_job(
    State(state): State<AdminState>,
    Path(id): Path<i64>,
) -> ApiResult<JobDetail> {
    match state.store.find_job(JobId(id)).await? {
        Some(job) => Ok(Json(job)),
        None => Err(ApiProblem::not_found(format!("job {id}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", params(("id" = i64, Path)),
    responses((status = 200, body = Requeue), (status = 404, body = ApiProblem), (status = 409, body = ApiProblem)))]
pub async fn retry_job(State(state): State<AdminState>, Path(id): Path<i64>) -> ApiResult<Requeue> {
    let outcome = state.store.requeue_job(JobId(id)).await?;
    requeued(outcome, format!("job {id}"))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = i64, Path)),
    responses((status = 200, body = CancelResult), (status = 404, body = ApiProblem), (status = 409, body = ApiProblem)))]
pub async fn cancel_job(
    State(state): State<AdminState>,
    Path(id): Path<i64>,
) -> ApiResult<CancelResult> {
    match state.store.cancel_job(JobId(id)).await? {
        Cancelled::Cancelled => Ok(Json(CancelResult { cancelled: id })),
        Cancelled::NotWaiting(now) => Err(ApiProblem::new(
            StatusCode::CONFLICT,
            "not_waiting",
            format!("job {id} is {now}: only a job waiting to run can be cancelled"),
        )),
        Cancelled::NotFound => Err(ApiProblem::not_found(format!("job {id}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs/retry-dead-letters", request_body = RetryDeadJobs,
    responses((status = 200, body = BulkRetry), (status = 400, body = ApiProblem)))]
pub async fn retry_dead_jobs(
    State(state): State<AdminState>,
    Json(request): Json<RetryDeadJobs>,
) -> ApiResult<BulkRetry> {
    let filter = request.filter()?;
    Ok(Json(
        inspect::retry_dead_jobs(&state.store, &filter, request.dry_run).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/deliveries", params(DeliveriesQuery),
    responses((status = 200, body = Page<DeliverySummary>), (status = 400, body = ApiProblem)))]
pub async fn list_deliveries(
    State(state): State<AdminState>,
    Query(query): Query<DeliveriesQuery>,
) -> ApiResult<Page<DeliverySummary>> {
    Ok(Json(deliveries_page(&state, &query).await?.1))
}

/// A page of hand-offs as a query asks, with its filter.
pub(super) async fn deliveries_page(
    state: &AdminState,
    query: &DeliveriesQuery,
) -> Result<(DeliveryFilter, Page<DeliverySummary>), ApiProblem> {
    let (filter, limit) = (query.filter()?, limit(query.limit));
    let deliveries = state.store.list_deliveries(&filter, limit + 1).await?;
    Ok((filter, page(deliveries, limit, |d| d.id)))
}

#[utoipa::path(get, path = "/api/v1/deliveries/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = DeliveryRecord), (status = 404, body = ApiProblem)))]
pub async fn show_delivery(
    State(state): State<AdminState>,
    Path(id): Path<i64>,
) -> ApiResult<DeliveryRecord> {
    match state.store.find_delivery(id).await? {
        Some(delivery) => Ok(Json(delivery)),
        None => Err(ApiProblem::not_found(format!("delivery {id}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/deliveries/{id}/retry", params(("id" = i64, Path)),
    responses((status = 200, body = Requeue), (status = 409, body = ApiProblem)))]
pub async fn retry_delivery(
    State(state): State<AdminState>,
    Path(id): Path<i64>,
) -> ApiResult<Requeue> {
    match state.store.requeue_deliveries(Some(id)).await? {
        0 => Err(ApiProblem::new(
            StatusCode::CONFLICT,
            "not_requeued",
            format!("delivery {id}: not found, or running right now"),
        )),
        _ => Ok(Json(Requeue { requeued: id })),
    }
}

#[utoipa::path(post, path = "/api/v1/deliveries/retry-dead-letters", request_body = DryRun,
    responses((status = 200, body = BulkRetry)))]
pub async fn retry_dead_deliveries(
    State(state): State<AdminState>,
    Json(request): Json<DryRun>,
) -> ApiResult<BulkRetry> {
    Ok(Json(
        inspect::retry_dead_deliveries(&state.store, request.dry_run).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/stats", responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<AdminState>) -> ApiResult<Stats> {
    Ok(Json(inspect::stats(&state.store, Utc::now()).await?))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gemhook admin API",
        description = "Events, jobs, hand-offs and the queues' state; replay and retry. Authenticate with `Authorization: Bearer <GEMHOOK_ADMIN_TOKEN>`; state-changing requests send a JSON body."
    ),
    paths(
        list_events,
        show_event,
        replay_event,
        list_jobs,
        show_job,
        retry_job,
        cancel_job,
        retry_dead_jobs,
        list_deliveries,
        show_delivery,
        retry_delivery,
        retry_dead_deliveries,
        stats
    ),
    components(schemas(ApiProblem, Requeue, CancelResult, BulkRetry, RetryDeadJobs, DryRun))
)]
pub struct ApiDoc;

/// The OpenAPI document, generated from the handlers above.
pub async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([("content-type", "application/json")], json).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_says_whether_another_follows() {
        let full = page(vec![5, 4, 3], 2, |n| *n);
        assert_eq!(full.items, [5, 4]);
        assert_eq!(full.next_cursor.as_deref(), Some("4"));
        let last = page(vec![2, 1], 2, |n| *n);
        assert_eq!(last.next_cursor, None);
    }

    #[test]
    fn bad_filters_are_refused_with_the_parameter_named() {
        let query = EventsQuery {
            since: Some("yesterday".into()),
            ..EventsQuery::default()
        };
        let problem = query.filter().unwrap_err();
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
        assert!(problem.message.starts_with("since"));
        let jobs = JobsQuery {
            state: Some("sleeping".into()),
            ..JobsQuery::default()
        };
        assert!(jobs.filter().unwrap_err().message.starts_with("state"));
        assert_eq!(limit(Some(100_000)), MAX_PAGE);
        assert_eq!(limit(None), DEFAULT_PAGE);
    }

    #[test]
    fn the_openapi_document_lists_every_endpoint() {
        let doc = ApiDoc::openapi();
        let paths: Vec<_> = doc.paths.paths.keys().cloned().collect();
        for path in [
            "/api/v1/events",
            "/api/v1/events/{webhook_id}",
            "/api/v1/events/{webhook_id}/replay",
            "/api/v1/jobs/retry-dead-letters",
            "/api/v1/jobs/{id}/cancel",
            "/api/v1/deliveries/retry-dead-letters",
            "/api/v1/stats",
        ] {
            assert!(paths.iter().any(|p| p == path), "{path} in {paths:?}");
        }
    }
}
