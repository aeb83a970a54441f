//! The console's pages, rendered on the server with `maud`, which escapes every interpolated
//! value: a body holding `<script>` shows as text. No script runs in the pages; the dashboard
//! refreshes itself with a `meta refresh`. Forms post back with the session's CSRF token and
//! answer with a redirect (post/redirect/get), carrying a notice in the query.

use axum::Form;
use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::api::{self, DeliveriesQuery, EventsQuery, JobsQuery, Page, RetryDeadJobs};
use super::auth::{self, Principal};
use super::{AdminState, chart};
use crate::inspect::{self, RATE_WINDOW_MINUTES};
use crate::store::{Cancelled, DeliverySummary, JobId, QueueState, Requeued};

const STYLESHEET: &str = include_str!("console.css");

/// How often the dashboard reloads itself, in seconds.
const DASHBOARD_REFRESH_SECS: u32 = 10;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/console.css", get(stylesheet))
        .route("/events", get(events))
        .route("/events/{webhook_id}", get(event))
        .route("/events/{webhook_id}/replay", post(replay))
        .route("/jobs", get(jobs))
        .route(
            "/jobs/retry-dead-letters",
            get(confirm_retry_jobs).post(retry_jobs),
        )
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/deliveries", get(deliveries))
        .route("/deliveries/retry-dead-letters", post(retry_deliveries))
        .route("/deliveries/{id}/retry", post(retry_delivery))
}

/// A path segment, escaped (a `webhook-id` may hold `/`, `?` or `#`).
fn segment(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn event_href(webhook_id: &str) -> String {
    format!("/events/{}", segment(webhook_id))
}

/// A redirect back to `to` with a notice shown at the top of the page.
fn done(to: &str, notice: &str) -> Response {
    let join = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{join}notice={}", query_value(notice))).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

/// The page frame: navigation, the notice, the logout button.
fn layout(
    state: &AdminState,
    principal: Option<&Principal>,
    title: &str,
    notice: Option<&str>,
    refresh: Option<u32>,
    body: Markup,
) -> Html<String> {
    let logged_in = matches!(principal, Some(Principal::Session(_)));
    let csrf = principal.map(|p| state.auth.csrf_token(p));
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh { meta http-equiv="refresh" content=(secs); }
                title { (title) " · gemhook" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header {
                    a.brand href="/" { "gemhook" }
                    @if principal.is_some() {
                        nav {
                            a href="/" { "Dashboard" }
                            a href="/events" { "Events" }
                            a href="/jobs" { "Jobs" }
                            a href="/deliveries" { "Deliveries" }
                        }
                    }
                    @if logged_in {
                        form.logout method="post" action="/logout" {
                            input type="hidden" name=(auth::CSRF_FIELD) value=[csrf.as_deref()];
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(notice) = notice { p.notice role="status" { (notice) } }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(page.into_string())
}

/// A button that posts to `action` with the CSRF token.
fn action_button(csrf: &str, action: &str, label: &str, hidden: &[(&str, &str)]) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name=(auth::CSRF_FIELD) value=(csrf);
            @for (name, value) in hidden { input type="hidden" name=(name) value=(value); }
            button type="submit" { (label) }
        }
    }
}

fn time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn state_badge(state: Option<QueueState>) -> Markup {
    let word = state.map_or("none", QueueState::as_str);
    html! { span class={"state " (word)} { (word) } }
}

/// A page with only a heading and a message: what could not be shown, or was refused.
fn bare_page(heading: &str, message: &str) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; title { "gemhook: " (heading) } link rel="stylesheet" href="/assets/console.css"; }
            body { main { h1 { (heading) } p { (message) } p { a href="/" { "Back to the dashboard" } } } } }
    };
    Html(page.into_string())
}

/// A page that could not be shown for a reason the operator should read.
fn problem(status: StatusCode, message: &str) -> Response {
    (status, bare_page(&status.as_u16().to_string(), message)).into_response()
}

fn failed(problem_: api::ApiProblem) -> Response {
    problem(problem_.status, &problem_.message)
}

/// What the guard answers a page request it refuses for a reason other than "log in".
pub(super) fn refused(refused: auth::Refused) -> Html<String> {
    bare_page("Refused", &refused.to_string())
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
}

// --- login ---------------------------------------------------------------------------------

async fn login_form(State(state): State<AdminState>, Query(notice): Query<Notice>) -> Response {
    if !state.auth.has_token() {
        // Nothing to log in to: without a token the console is open on loopback.
        return Redirect::to("/").into_response();
    }
    layout(
        &state,
        None,
        "Log in",
        notice.notice.as_deref(),
        None,
        html! {
            form.login method="post" action="/login" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="current-password" autofocus;
                button type="submit" { "Log in" }
            }
            p.hint { "The value of GEMHOOK_ADMIN_TOKEN." }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !state.auth.token_matches(&form.token) {
        tracing::warn!("console: a login with a wrong token was refused");
        return done("/login", "That is not the admin token.");
    }
    let cookie = state.auth.new_session(Utc::now().timestamp());
    // Secure when the request reached us over HTTPS (a proxy in front says so).
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes() == b"https");
    let set = format!(
        "{}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::SESSION_COOKIE,
        auth::SESSION_SECS,
        if secure { "; Secure" } else { "" }
    );
    ([(header::SET_COOKIE, set)], Redirect::to("/")).into_response()
}

async fn logout() -> Response {
    let clear = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        auth::SESSION_COOKIE
    );
    ([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response()
}

// --- dashboard -----------------------------------------------------------------------------

async fn dashboard(
    State(state): State<AdminState>,
    Extension(principal): Extension<Principal>,
    Query(notice): Query<Notice>,
) -> Response {
    let now = Utc::now();
    let stats = match inspect::stats(&state.store, now).await {
        Ok(stats) => stats,
        Err(error) => return failed(error.into()),
    };
    let csrf = state.auth.csrf_token(&principal);
    let last_minute = now.timestamp() - now.timestamp().rem_euclid(60);
    let watch = state.watch.as_ref().map(|w| w.status());
    let body = html! {
        section.cards {
            div.card { h2 { "Received, last hour" } p.big { (stats.received_last_hour) } }
            div.card { h2 { "Backlog age" } p.big { (format!("{:.1} s", stats.backlog_age_secs)) } }
            div.card { h2 { "Jobs waiting" } p.big { (stats.jobs_in(QueueState::Available) + stats.jobs_in(QueueState::Retryable)) } }
            div.card { h2 { "Dead letters" } p.big { a href="/jobs?state=discarded" { (stats.jobs_in(QueueState::Discarded)) } } }
        }
        section {
            h2 { "Events per minute, by job state" }
            (chart::per_minute(&stats.per_minute, last_minute, RATE_WINDOW_MINUTES))
            ul.legend {
                @for (state, colour) in chart::SERIES {
                    li { span.swatch style={"background:" (colour)} {} (state.map_or("no job", QueueState::as_str)) }
                }
            }
        }
        section.split {
            div {
                h2 { "Jobs by state" }
                table { tbody { @for s in QueueState::ALL { tr { td { a href={"/jobs?state=" (s)} { (state_badge(Some(s))) } } td.num { (stats.jobs_in(s)) } } } } }
            }
            div {
                h2 { "Hand-offs by state" }
                table { tbody { @for s in QueueState::ALL { tr { td { a href={"/deliveries?state=" (s)} { (state_badge(Some(s))) } } td.num { (stats.deliveries_in(s)) } } } } }
            }
        }
        section {
            h2 { "Dead letters by last error" }
            @if stats.discard_reasons.is_empty() { p.empty { "None." } }
            @else {
                table {
                    thead { tr { th { "Last error" } th.num { "Jobs" } th {} } }
                    tbody {
                        @for reason in &stats.discard_reasons {
                            tr {
                                td.error { a href={"/jobs?state=discarded&last_error=" (query_value(&reason.reason))} { (reason.reason) } }
                                td.num { (reason.count) }
                                td { a.button href={"/jobs/retry-dead-letters?last_error=" (query_value(&reason.reason))} { "Retry these…" } }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(watch) = watch {
            section {
                h2 { "Gemini's webhooks" }
                @if let Some(error) = &watch.last_error { p.warning { "Last read failed: " (error) } }
                @if let Some(at) = &watch.ok_at { p.hint { "Read at " (time(at)) } }
                table {
                    thead { tr { th { "Webhook" } th { "State" } th { "URI" } } }
                    tbody { @for w in &watch.webhooks { tr { td { (w.id) } td { (w.state) } td { (w.uri.as_deref().unwrap_or("-")) } } } }
                }
            }
        }
        p.hint { "Refreshes every " (DASHBOARD_REFRESH_SECS) " s. " (action_button(&csrf, "/deliveries/retry-dead-letters", "Retry every dead-lettered hand-off", &[])) }
    };
    layout(
        &state,
        Some(&principal),
        "Dashboard",
        notice.notice.as_deref(),
        Some(DASHBOARD_REFRESH_SECS),
        body,
    )
    .into_response()
}

// --- events --------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct ListPage<Q> {
    #[serde(flatten)]
    query: Q,
    notice: Option<String>,
}

async fn events(
    State(state): State<AdminState>,
    Extension(principal): Extension<Principal>,
    Query(page): Query<ListPage<EventsQuery>>,
) -> Response {
    let query = page.query;
    let (
        _,
        Page {
            items: rows,
            next_cursor: next,
        },
    ) = match api::events_page(&state, &query).await {
        Ok(found) => found,
        Err(problem_) => return failed(problem_),
    };
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/events" {
            input type="search" name="id_prefix" placeholder="webhook-id (or its start)" value=(value(&query.id_prefix));
            input type="text" name="type" placeholder="type, e.g. batch.succeeded" value=(value(&query.event_type));
            input type="text" name="resource_id" placeholder="resource id" value=(value(&query.resource_id));
            select name="status" {
                option value="" { "any status" }
                @for s in ["accepted", "ignored", "unparseable"] { option value=(s) selected[query.status.as_deref() == Some(s)] { (s) } }
            }
            select name="scheme" {
                option value="" { "any scheme" }
                @for s in ["v1", "v1a", "jwt"] { option value=(s) selected[query.scheme.as_deref() == Some(s)] { (s) } }
            }
            input type="text" name="since" placeholder="since (RFC 3339)" value=(value(&query.since));
            button type="submit" { "Search" }
        }
        @if rows.is_empty() { p.empty { "No events match." } }
        @else {
            table.list {
                thead { tr { th { "Received" } th { "webhook-id" } th { "Type" } th { "Status" } th { "Scheme" } th { "Job" } } }
                tbody {
                    @for e in &rows {
                        tr {
                            td.time { (time(&e.received_at)) }
                            td { a.id href=(event_href(&e.webhook_id)) { (e.webhook_id) } }
                            td { (e.event_type.as_deref().unwrap_or("-")) }
                            td { (e.status) }
                            td { (e.scheme) }
                            td { (state_badge(e.job_state)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p { a.button href=(next_page("/events", &query_pairs_events(&query), &next)) { "Older →" } }
        }
    };
    layout(
        &state,
        Some(&principal),
        "Events",
        page.notice.as_deref(),
        None,
        body,
    )
    .into_response()
}

fn query_pairs_events(q: &EventsQuery) -> Vec<(&'static str, String)> {
    given([
        ("type", &q.event_type),
        ("status", &q.status),
        ("scheme", &q.scheme),
        ("since", &q.since),
        ("until", &q.until),
        ("resource_id", &q.resource_id),
        ("id_prefix", &q.id_prefix),
    ])
}

/// The filters a list was asked for (the non-empty ones), to carry on to its next page.
fn given<const N: usize>(
    pairs: [(&'static str, &Option<String>); N],
) -> Vec<(&'static str, String)> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.clone().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
}

fn next_page(path: &str, pairs: &[(&'static str, String)], cursor: &str) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        query.append_pair(key, value);
    }
    query.append_pair("cursor", cursor);
    format!("{path}?{}", query.finish())
}

async fn event(
    State(state): State<AdminState>,
    Extension(principal): Extension<Principal>,
    Path(webhook_id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    let (event, detail) = match inspect::event_detail(&state.store, &webhook_id).await {
        Ok(Some(found)) => found,
        Ok(None) => return problem(StatusCode::NOT_FOUND, &format!("No event {webhook_id}.")),
        Err(error) => return failed(error.into()),
    };
    let csrf = state.auth.csrf_token(&principal);
    let s = &event.summary;
    let here = event_href(&s.webhook_id);
    let text = std::str::from_utf8(&event.body).ok();
    let pretty = text
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let headers: Vec<(String, String)> = event
        .headers
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body = html! {
        section.actions {
            (action_button(&csrf, &format!("{here}/replay"), "Replay", &[]))
            @if let Some(job) = &detail.job {
                @if job.summary.state == QueueState::Discarded || job.summary.state == QueueState::Cancelled {
                    (action_button(&csrf, &format!("/jobs/{}/retry", job.summary.id), "Retry job", &[("back", &here)]))
                }
                @if matches!(job.summary.state, QueueState::Available | QueueState::Retryable) {
                    (action_button(&csrf, &format!("/jobs/{}/cancel", job.summary.id), "Cancel job", &[("back", &here)]))
                }
            }
        }
        table.fields {
            tbody {
                tr { th { "webhook-id" } td.id { (s.webhook_id) } }
                tr { th { "Type" } td { (s.event_type.as_deref().unwrap_or("-")) } }
                tr { th { "Resource" } td { (s.resource_id.as_deref().unwrap_or("-")) } }
                tr { th { "Status" } td { (s.status) } }
                tr { th { "Verified by" } td { (s.scheme) } }
                tr { th { "Received" } td { (time(&s.received_at)) } }
                tr { th { "webhook-timestamp" } td { (event.webhook_timestamp) } }
                @if let Some(altered) = &event.altered { tr { th { "Altered to store" } td { (altered) } } }
            }
        }
        h2 { "Headers" }
        table.fields { tbody { @for (name, value) in &headers { tr { th { (name) } td.mono { (value) } } } } }
        h2 { "Body" }
        @if let Some(pretty) = &pretty { pre.body { (pretty) } }
        details {
            summary { "Raw (" (event.body.len()) " bytes)" }
            @match text {
                Some(text) => pre.body.raw { (text) },
                None => pre.body.raw { "base64: " (detail.event["body_base64"].as_str().unwrap_or("")) },
            }
        }
        h2 { "Job" }
        @match &detail.job {
            None => p.empty { "No job (the event needed none)." },
            Some(job) => {
                table.fields {
                    tbody {
                        tr { th { "Job" } td { (job.summary.id) } }
                        tr { th { "State" } td { (state_badge(Some(job.summary.state))) } }
                        tr { th { "Attempts" } td { (job.summary.attempt) } }
                        tr { th { "Scheduled" } td { (time(&job.summary.scheduled_at)) } }
                        @if let Some(at) = &job.summary.attempted_at { tr { th { "Last attempt" } td { (time(at)) } } }
                        @if let Some(at) = &job.summary.finalized_at { tr { th { "Finished" } td { (time(at)) } } }
                        @if let Some(by) = &job.locked_by { tr { th { "Running on" } td { (by) } } }
                    }
                }
                @let attempts = job.errors.as_array().cloned().unwrap_or_default();
                @if !attempts.is_empty() {
                    h3 { "Failed attempts" }
                    table.list {
                        thead { tr { th { "#" } th { "At" } th { "Error" } } }
                        tbody { @for a in &attempts { tr { td { (a["attempt"]) } td.time { (a["at"].as_str().unwrap_or("")) } td.error { (a["error"].as_str().unwrap_or("")) } } } }
                    }
                }
                @if let Some(result) = &job.result {
                    h3 { "Result" }
                    table.fields {
                        tbody {
                            tr { th { "Outcome" } td { (result["outcome"].as_str().unwrap_or("-")) } }
                            tr { th { "Location" } td.mono { (result["location"].as_str().unwrap_or("-")) } }
                            tr { th { "Size" } td { (result["size_bytes"].as_i64().map_or("-".to_owned(), |n| format!("{n} bytes"))) } }
                            tr { th { "SHA-256" } td.mono { (result["sha256"].as_str().unwrap_or("-")) } }
                        }
                    }
                }
            }
        }
        h2 { "Outcome and hand-offs" }
        @match &detail.outcome {
            None => p.empty { "No outcome yet." },
            Some(outcome) => {
                p.hint { "Revision " (outcome.revision) ", " (time(&outcome.created_at)) }
                pre.body { (serde_json::to_string_pretty(&outcome.body).unwrap_or_default()) }
            }
        }
        (delivery_table(&csrf, &detail.deliveries, &here))
    };
    let title = format!("Event {}", s.webhook_id);
    layout(
        &state,
        Some(&principal),
        &title,
        notice.notice.as_deref(),
        None,
        body,
    )
    .into_response()
}

fn delivery_table(csrf: &str, deliveries: &[DeliverySummary], back: &str) -> Markup {
    html! {
        @if deliveries.is_empty() { p.empty { "No hand-offs." } }
        @else {
            table.list {
                thead { tr { th { "Delivery" } th { "Sink" } th { "Event" } th { "State" } th { "Attempts" } th { "Last error" } th {} } }
                tbody {
                    @for d in deliveries {
                        tr {
                            td { (d.id) }
                            td { (d.sink) }
                            td { a.id href=(event_href(&d.webhook_id)) { (d.webhook_id) } }
                            td { (state_badge(Some(d.state))) }
                            td.num { (d.attempt) }
                            td.error { (d.last_error.as_deref().unwrap_or("")) }
                            td { @if d.state != QueueState::Running { (action_button(csrf, &format!("/deliveries/{}/retry", d.id), "Retry", &[("back", back)])) } }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Back {
    back: Option<String>,
}

impl Back {
    /// Where to return after an action: only a path of this console (never another site).
    fn to(&self, default: &str) -> String {
        match self.back.as_deref() {
            Some(path) if path.starts_with('/') && !path.starts_with("//") => path.to_owned(),
            _ => default.to_owned(),
        }
    }
}

async fn replay(State(state): State<AdminState>, Path(webhook_id): Path<String>) -> Response {
    let here = event_href(&webhook_id);
    match state.store.replay_event(&webhook_id).await {
        Ok(Requeued::Queued(job)) => done(&here, &format!("Replayed: job {job} is queued again.")),
        Ok(Requeued::Running) => done(
            &here,
            "Its job is running right now; try again when it ends.",
        ),
        Ok(Requeued::NotFound) => {
            problem(StatusCode::NOT_FOUND, &format!("No event {webhook_id}."))
        }
        Err(error) => failed(error.into()),
    }
}

// --- jobs ----------------------------------------------------------------------------------

async fn jobs(
    State(state): State<AdminState>,
    Extension(principal): Extension<Principal>,
    Query(page): Query<ListPage<JobsQuery>>,
) -> Response {
    let query = page.query;
    let (
        filter,
        Page {
            items: rows,
            next_cursor: next,
        },
    ) = match api::jobs_page(&state, &query).await {
        Ok(found) => found,
        Err(problem_) => return failed(problem_),
    };
    let csrf = state.auth.csrf_token(&principal);
    let pairs = given([
        ("state", &query.state),
        ("type", &query.event_type),
        ("last_error", &query.last_error),
    ]);
    let mut retry_href = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in &pairs {
        if *key != "state" {
            retry_href.append_pair(key, value);
        }
    }
    let body = html! {
        nav.states {
            a href="/jobs" { "all" }
            @for s in QueueState::ALL { a href={"/jobs?state=" (s)} class=[(filter.state == Some(s)).then_some("current")] { (s) } }
        }
        @if filter.state == Some(QueueState::Discarded) {
            p { a.button href={"/jobs/retry-dead-letters?" (retry_href.finish())} { "Retry the dead letters shown…" } }
        }
        @if let Some(error) = &filter.last_error { p.hint { "Last error: " span.error { (error) } } }
        @if rows.is_empty() { p.empty { "No jobs match." } }
        @else {
            table.list {
                thead { tr { th { "Job" } th { "State" } th { "Attempts" } th { "Type" } th { "Event" } th { "Last error" } th {} } }
                tbody {
                    @for j in &rows {
                        tr {
                            td { (j.id) }
                            td { (state_badge(Some(j.state))) }
                            td.num { (j.attempt) }
                            td { (j.event_type.as_deref().unwrap_or("-")) }
                            td { a.id href=(event_href(&j.webhook_id)) { (j.webhook_id) } }
                            td.error { (j.last_error.as_deref().unwrap_or("")) }
                            td {
                                @if j.state.is_final() { (action_button(&csrf, &format!("/jobs/{}/retry", j.id), "Retry", &[("back", "/jobs")])) }
                                @if matches!(j.state, QueueState::Available | QueueState::Retryable) { (action_button(&csrf, &format!("/jobs/{}/cancel", j.id), "Cancel", &[("back", "/jobs")])) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next { p { a.button href=(next_page("/jobs", &pairs, &next)) { "Older →" } } }
    };
    layout(
        &state,
        Some(&principal),
        "Jobs",
        page.notice.as_deref(),
        None,
        body,
    )
    .into_response()
}

/// The count first (a dry run), then the button that retries them.
async fn confirm_retry_jobs(
    State(state): State<AdminState>,
    Extension(principal): Extension<Principal>,
    Query(form): Query<RetryDeadJobs>,
) -> Response {
    let filter = match form.filter() {
        Ok(filter) => filter,
        Err(problem_) => return failed(problem_),
    };
    let counted = match inspect::retry_dead_jobs(&state.store, &filter, true).await {
        Ok(counted) => counted,
        Err(error) => return failed(error.into()),
    };
    let csrf = state.auth.csrf_token(&principal);
    let carried = given([
        ("type", &form.event_type),
        ("last_error", &form.last_error),
        ("since", &form.since),
    ]);
    let hidden: Vec<(&str, &str)> = carried.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = html! {
        p.big { (counted.matched) " dead-lettered job(s) match." }
        @if let Some(t) = &filter.event_type { p { "Type: " (t) } }
        @if let Some(e) = &filter.last_error { p { "Last error: " span.error { (e) } } }
        @if counted.matched > 0 {
            (action_button(&csrf, "/jobs/retry-dead-letters", &format!("Retry {} job(s)", counted.matched), &hidden))
        }
        p { a href="/jobs?state=discarded" { "Back to the dead letters" } }
    };
    layout(
        &state,
        Some(&principal),
        "Retry dead letters",
        None,
        None,
        body,
    )
    .into_response()
}

async fn retry_jobs(State(state): State<AdminState>, Form(form): Form<RetryDeadJobs>) -> Response {
    let filter = match form.filter() {
        Ok(filter) => filter,
        Err(problem_) => return failed(problem_),
    };
    match inspect::retry_dead_jobs(&state.store, &filter, false).await {
        Ok(done_) => done(
            "/jobs?state=available",
            &format!("{} dead-lettered job(s) re-queued.", done_.requeued),
        ),
        Err(error) => failed(error.into()),
    }
}

async fn retry_job(
    State(state): State<AdminState>,
    Path(id): Path<i64>,
    Form(back): Form<Back>,
) -> Response {
    let to = back.to("/jobs");
    match state.store.requeue_job(JobId(id)).await {
        Ok(Requeued::Queued(job)) => done(&to, &format!("Job {job} re-queued.")),
        Ok(Requeued::Running) => done(&to, &format!("Job {id} is running right now.")),
        Ok(Requeued::NotFound) => problem(StatusCode::NOT_FOUND, &format!("No job {id}.")),
        Err(error) => failed(error.into()),
    }
}

async fn cancel_job(
    State(state): State<AdminState>,
    Path(id): Path<i64>,
    Form(back): Form<Back>,
) -> Response {
    let to = back.to("/jobs");
    match state.store.cancel_job(JobId(id)).await {
        Ok(Cancelled::Cancelled) => done(&to, &format!("Job {id} cancelled.")),
        Ok(Cancelled::NotWaiting(now)) => done(
            &to,
            &format!("Job {id} is {now}: only a waiting job can be cancelled."),
        ),
        Ok(Cancelled::NotFound) => problem(StatusCode::NOT_FOUND, &format!("No job {id}.")),
        Err(error) => failed(error.into()),
    }
}

// --- deliveries ----------------------------------------------------------------------------

async fn deliveries(
    State(state): State<AdminState>,
    Extension(principal): Extension<Principal>,
    Query(page): Query<ListPage<DeliveriesQuery>>,
) -> Response {
    let query = page.query;
    let (
        filter,
        Page {
            items: rows,
            next_cursor: next,
        },
    ) = match api::deliveries_page(&state, &query).await {
        Ok(found) => found,
        Err(problem_) => return failed(problem_),
    };
    let csrf = state.auth.csrf_token(&principal);
    let pairs = given([("state", &query.state), ("sink", &query.sink)]);
    let body = html! {
        nav.states {
            a href="/deliveries" { "all" }
            @for s in QueueState::ALL { a href={"/deliveries?state=" (s)} class=[(filter.state == Some(s)).then_some("current")] { (s) } }
        }
        @if filter.state == Some(QueueState::Discarded) && !rows.is_empty() {
            (action_button(&csrf, "/deliveries/retry-dead-letters", "Retry every dead-lettered hand-off", &[]))
        }
        (delivery_table(&csrf, &rows, "/deliveries"))
        @if let Some(next) = next { p { a.button href=(next_page("/deliveries", &pairs, &next)) { "Older →" } } }
    };
    layout(
        &state,
        Some(&principal),
        "Deliveries",
        page.notice.as_deref(),
        None,
        body,
    )
    .into_response()
}

async fn retry_deliveries(State(state): State<AdminState>) -> Response {
    match inspect::retry_dead_deliveries(&state.store, false).await {
        Ok(done_) => done(
            "/deliveries",
            &format!("{} dead-lettered hand-off(s) re-queued.", done_.requeued),
        ),
        Err(error) => failed(error.into()),
    }
}

async fn retry_delivery(
    State(state): State<AdminState>,
    Path(id): Path<i64>,
    Form(back): Form<Back>,
) -> Response {
    let to = back.to("/deliveries");
    match state.store.requeue_deliveries(Some(id)).await {
        Ok(0) => done(
            &to,
            &format!("Delivery {id}: not found, or running right now."),
        ),
        Ok(_) => done(&to, &format!("Delivery {id} re-queued.")),
        Err(error) => failed(error.into()),
    }
}
