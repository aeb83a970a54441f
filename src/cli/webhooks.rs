//! `gemhook webhooks`: Gemini's side of the loop, from the same tool. Registers, lists,
//! updates, pings and rotates the project's static webhooks through the WebhookService, with
//! the worker's API key and base URL. Every subcommand takes `--json` (the API's resource as
//! Google sent it) and exits non-zero with Google's status and `error.message` on failure.
//!
//! Secrets returned by `create` and `rotate-secret` are printed once, with the exact next
//! steps; the API key is never printed.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::Settings;
use crate::gemini::webhooks::{
    Fetched, NewWebhook, Revocation, SUBSCRIBABLE_EVENTS, Webhook, WebhookService, WebhookUpdate,
};
use crate::startup;
use crate::store::{EventFilter, EventSummary};

/// How often `ping --wait` looks at the events table.
const PING_POLL: Duration = Duration::from_millis(200);
/// How far before the ping a delivery may have been stamped and still count: the database's
/// clock and ours may differ a little.
const CLOCK_MARGIN_SECS: i64 = 2;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register a webhook: prints its id and its signing secret (shown once).
    Create {
        /// The URL Gemini will POST to, e.g. https://hooks.example.com/webhooks/gemini.
        #[arg(long)]
        uri: String,
        /// Comma-separated events, e.g. batch.succeeded,video.generated.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// A label for the webhook.
        #[arg(long)]
        name: Option<String>,
        /// Print the API's answer as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every webhook of the project (every page).
    List {
        /// Print the API's answer as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One webhook: its state, events and signing secrets' expiry.
    Get {
        /// The webhook's id, as `webhooks list` shows it.
        id: String,
        /// Print the API's answer as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a webhook: only what is given is sent (with the matching update_mask).
    Update {
        /// The webhook's id, as `webhooks list` shows it.
        id: String,
        /// A new URL for Gemini to POST to.
        #[arg(long)]
        uri: Option<String>,
        /// Comma-separated events: replaces the subscribed list.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// A new label.
        #[arg(long)]
        name: Option<String>,
        /// Re-enable, e.g. once Gemini disabled it after failed deliveries and the cause is fixed.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Stop Gemini delivering to it (until --enable).
        #[arg(long)]
        disable: bool,
        /// Print the API's answer as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a webhook.
    Delete {
        /// The webhook's id, as `webhooks list` shows it.
        id: String,
        /// Print `{"id", "deleted": true}` instead of text (the API answers with nothing).
        #[arg(long)]
        json: bool,
    },
    /// Ask Gemini to send the webhook a ping; with --wait, watch this gemhook's database for a
    /// delivery that arrived and verified, and say how long it took.
    Ping {
        /// The webhook's id, as `webhooks list` shows it.
        id: String,
        /// Seconds to wait for the delivery (exits non-zero if none arrives).
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Print one JSON object (whether it arrived, the delivery, the seconds) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A new signing secret, with the zero-downtime steps. Old secrets stay valid for 24 hours
    /// unless --revoke-now.
    RotateSecret {
        /// The webhook's id, as `webhooks list` shows it.
        id: String,
        /// Revoke the previous secrets at once (deliveries signed with them stop verifying now).
        #[arg(long)]
        revoke_now: bool,
        /// Print the API's answer as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, command: WebhooksCommand) -> anyhow::Result<()> {
    let client = startup::gemini_client(settings)
        .context("the Gemini client settings are invalid")?
        .context(
            "GEMINI_API_KEY is not set: `gemhook webhooks` calls Gemini's WebhookService with it",
        )?;
    let service = WebhookService::new(client);
    match command {
        WebhooksCommand::Create {
            uri,
            events,
            name,
            json,
        } => {
            warn_unknown_events(&events);
            let created = service
                .create(&NewWebhook {
                    name,
                    uri,
                    subscribed_events: events,
                })
                .await
                .context("creating the webhook")?;
            if json {
                return print_json(&created.raw);
            }
            print_created(settings, &created);
            Ok(())
        }
        WebhooksCommand::List { json } => {
            let webhooks = service.list().await.context("listing the webhooks")?;
            if json {
                let all: Vec<&Value> = webhooks.iter().map(|w| &w.raw).collect();
                return print_json(&all);
            }
            print_table(&webhooks);
            Ok(())
        }
        WebhooksCommand::Get { id, json } => {
            let webhook = service
                .get(&id)
                .await
                .with_context(|| format!("reading webhook {id}"))?;
            if json {
                return print_json(&webhook.raw);
            }
            print_webhook(&webhook.value);
            Ok(())
        }
        WebhooksCommand::Update {
            id,
            uri,
            events,
            name,
            enable,
            disable,
            json,
        } => {
            if let Some(events) = &events {
                warn_unknown_events(events);
            }
            let update = WebhookUpdate {
                name,
                uri,
                subscribed_events: events,
                state: match (enable, disable) {
                    (true, _) => Some("enabled"),
                    (_, true) => Some("disabled"),
                    _ => None,
                },
            };
            if update.is_empty() {
                anyhow::bail!(
                    "nothing to update: give --uri, --events, --name, --enable or --disable"
                );
            }
            let (_, mask) = update.body_and_mask();
            let updated = service
                .update(&id, &update)
                .await
                .with_context(|| format!("updating webhook {id}"))?;
            if json {
                return print_json(&updated.raw);
            }
            println!("updated webhook {id}: {}", mask.replace(',', ", "));
            print_webhook(&updated.value);
            Ok(())
        }
        WebhooksCommand::Delete { id, json } => {
            service
                .delete(&id)
                .await
                .with_context(|| format!("deleting webhook {id}"))?;
            if json {
                return print_json(&json!({"id": id, "deleted": true}));
            }
            println!("deleted webhook {id}");
            Ok(())
        }
        WebhooksCommand::Ping { id, wait, json } => ping(settings, &service, &id, wait, json).await,
        WebhooksCommand::RotateSecret {
            id,
            revoke_now,
            json,
        } => {
            let revocation = if revoke_now {
                Revocation::Immediately
            } else {
                Revocation::After24Hours
            };
            let rotated = service
                .rotate_signing_secret(&id, revocation)
                .await
                .with_context(|| format!("rotating the signing secret of webhook {id}"))?;
            if json {
                return print_json(&rotated.raw);
            }
            let secret = rotated
                .value
                .secret
                .as_ref()
                .map(|s| s.expose().to_owned())
                .context("Gemini's answer carries no secret")?;
            print_rotated(settings, &id, &secret, revocation);
            Ok(())
        }
    }
}

/// Unknown names are passed on (the API decides, and its list may grow), with a note.
fn warn_unknown_events(events: &[String]) {
    for event in events {
        if !SUBSCRIBABLE_EVENTS.contains(&event.as_str()) {
            eprintln!(
                "note: {event} is not one of the subscribable events ({})",
                SUBSCRIBABLE_EVENTS.join(", ")
            );
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// What the next `GEMHOOK_WEBHOOK_SECRETS` is, with the secrets configured now kept after the
/// new one (named, never printed).
fn secrets_line(settings: &Settings, new: &str) -> String {
    match settings.webhook_secrets.len() {
        0 => format!("GEMHOOK_WEBHOOK_SECRETS={new}"),
        1 => format!("GEMHOOK_WEBHOOK_SECRETS={new},<the secret configured now>"),
        n => format!("GEMHOOK_WEBHOOK_SECRETS={new},<the {n} secrets configured now>"),
    }
}

fn print_created(settings: &Settings, created: &Fetched<Webhook>) {
    let webhook = &created.value;
    let id = webhook.id().unwrap_or("<no id in the answer>");
    println!(
        "created webhook {id}: {} ({})",
        webhook.uri.as_deref().unwrap_or_default(),
        webhook.subscribed_events.join(", ")
    );
    let Some(secret) = webhook.new_signing_secret.as_ref().map(|s| s.expose()) else {
        println!(
            "Gemini's answer carries no signing secret: run `gemhook webhooks rotate-secret {id}` to get one"
        );
        return;
    };
    println!();
    println!("Signing secret (shown once; Gemini will not show it again):");
    println!("  {secret}");
    println!();
    println!("Next: give it to gemhook (from your secret manager, not a file in a repository):");
    println!("  {}", secrets_line(settings, secret));
    println!("then restart `gemhook serve` and check the whole loop:");
    println!("  gemhook webhooks ping {id} --wait 60");
}

fn print_rotated(settings: &Settings, id: &str, secret: &str, revocation: Revocation) {
    println!("rotated the signing secret of webhook {id}");
    println!();
    println!("New signing secret (shown once):");
    println!("  {secret}");
    println!();
    match revocation {
        Revocation::After24Hours => {
            let until = (Utc::now() + chrono::Duration::hours(24)).format("%Y-%m-%d %H:%M UTC");
            println!(
                "Zero-downtime rotation (Gemini keeps the old secret valid for 24 hours, until about {until}):"
            );
            println!("  1. new secret first, old one kept:");
            println!("       {}", secrets_line(settings, secret));
            println!("  2. roll every gemhook replica (any configured secret verifies)");
            println!("  3. after {until}, remove the old one and roll again:");
            println!("       GEMHOOK_WEBHOOK_SECRETS={secret}");
        }
        Revocation::Immediately => {
            println!("The previous secrets were revoked at once: set now, and roll every replica:");
            println!("  GEMHOOK_WEBHOOK_SECRETS={secret}");
            println!(
                "(deliveries refused meanwhile are retried by Gemini for 24 hours; watch gemhook_deliveries_total{{outcome=\"invalid_signature\"}})"
            );
        }
    }
}

fn print_table(webhooks: &[Fetched<Webhook>]) {
    if webhooks.is_empty() {
        println!("no webhooks (create one with `gemhook webhooks create --uri URL --events ...`)");
        return;
    }
    let table = &super::table::WEBHOOKS;
    table.print(webhooks.iter().map(|w| &w.value).map(|webhook| {
        table.row(&[
            &webhook.id().unwrap_or("-"),
            &webhook.state().unwrap_or_else(|| "-".into()),
            &webhook.uri.as_deref().unwrap_or("-"),
            &webhook.subscribed_events.join(","),
        ])
    }));
    for webhook in webhooks.iter().map(|w| &w.value) {
        hint_if_disabled(webhook);
    }
}

fn print_webhook(webhook: &Webhook) {
    let id = webhook.id().unwrap_or("-");
    println!("id        {id}");
    if let Some(label) = webhook.label() {
        println!("name      {label}");
    }
    println!("uri       {}", webhook.uri.as_deref().unwrap_or("-"));
    println!(
        "state     {}",
        webhook.state().unwrap_or_else(|| "-".into())
    );
    println!("events    {}", webhook.subscribed_events.join(", "));
    for secret in &webhook.signing_secrets {
        println!(
            "secret    {} (expires {})",
            secret.truncated_secret.as_deref().unwrap_or("…"),
            secret.expire_time.as_deref().unwrap_or("never")
        );
    }
    if let Some(created) = &webhook.create_time {
        println!("created   {created}");
    }
    if let Some(updated) = &webhook.update_time {
        println!("updated   {updated}");
    }
    hint_if_disabled(webhook);
}

fn hint_if_disabled(webhook: &Webhook) {
    if webhook.state().as_deref() == Some(crate::gemini::watch::DISABLED_BY_FAILURES) {
        println!(
            "webhook {} was disabled by Gemini after failed deliveries: fix the cause, then `gemhook webhooks update {} --enable`",
            webhook.id().unwrap_or("-"),
            webhook.id().unwrap_or("<id>")
        );
    }
}

async fn ping(
    settings: &Settings,
    service: &WebhookService,
    id: &str,
    wait: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    // Opened first: a database problem should show before Gemini is asked to send anything.
    let store = match wait {
        Some(_) => Some(startup::open(settings).await?),
        None => None,
    };
    let sent_at = Utc::now();
    let started = Instant::now();
    service
        .ping(id)
        .await
        .with_context(|| format!("pinging webhook {id}"))?;
    let (Some(store), Some(wait)) = (store, wait) else {
        if json {
            return print_json(&json!({"id": id, "pinged": true}));
        }
        println!("asked Gemini to ping webhook {id}");
        return Ok(());
    };
    if !json {
        println!("asked Gemini to ping webhook {id}; waiting up to {wait} s for the delivery");
    }
    let filter = EventFilter {
        since: Some(sent_at - chrono::Duration::seconds(CLOCK_MARGIN_SECS)),
        ..EventFilter::default()
    };
    let deadline = started + Duration::from_secs(wait);
    let arrived = loop {
        let events = store
            .list_events(&filter, 20)
            .await
            .context("reading the events table")?;
        if let Some(event) = pick_ping(&events) {
            break Some(event.clone());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(PING_POLL).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    report_ping(id, wait, arrived.as_ref(), elapsed, json)
}

/// The delivery the ping produced: what a ping delivery looks like is undocumented, so any
/// event that arrived and verified since counts, one whose type names a ping preferred.
fn pick_ping(events: &[EventSummary]) -> Option<&EventSummary> {
    events
        .iter()
        .find(|e| e.event_type.as_deref().is_some_and(|t| t.contains("ping")))
        .or_else(|| events.iter().min_by_key(|e| e.received_at))
}

fn report_ping(
    id: &str,
    wait: u64,
    arrived: Option<&EventSummary>,
    elapsed: f64,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        print_json(&json!({
            "id": id,
            "pinged": true,
            "arrived": arrived.is_some(),
            "delivery": arrived.map(|e| json!({
                "webhook_id": e.webhook_id,
                "type": e.event_type,
                "scheme": e.scheme,
                "received_at": e.received_at,
            })),
            "after_secs": arrived.map(|_| (elapsed * 10.0).round() / 10.0),
        }))?;
    } else if let Some(event) = arrived {
        println!(
            "delivery {} ({}) arrived and verified ({}) {elapsed:.1} s after the ping",
            event.webhook_id,
            event.event_type.as_deref().unwrap_or("no type"),
            event.scheme
        );
    }
    if arrived.is_none() {
        anyhow::bail!(
            "no verified delivery arrived within {wait} s of the ping to webhook {id}: check that its uri reaches this gemhook (`gemhook webhooks get {id}`), that GEMHOOK_WEBHOOK_SECRETS holds its signing secret (refusals show as gemhook_deliveries_total{{outcome=\"invalid_signature\"}} and `delivery rejected` logs), and that this command reads the server's database"
        );
    }
    Ok(())
}
