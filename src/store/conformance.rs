//! The store's contract, run against both backends (River's `riverdrivertest` is the model):
//! every scenario is one function of a fresh [`TestDb`], instantiated once on SQLite and once
//! on Postgres by [`on_both_backends!`]. Behaviour particular to one backend (SQLite's file,
//! several processes on it; Postgres' read-only watch) is tested beside that backend.

mod events {

    use std::time::Duration;

    use chrono::Utc;

    use crate::store::testing::{
        TestDb, accepted, batch_body, on_both_backends, record, record_body, stored,
    };
    use crate::store::{EventFilter, JobFilter, PruneCursor, PruneScope, QueueState, Recorded};

    async fn a_delivery_is_stored_byte_for_byte_with_its_job(db: TestDb) {
        let store = db.store().await;
        let before = Utc::now() - chrono::Duration::seconds(1);

        let job = accepted(record(&store, "msg_1").await);

        let event = store.find_event("msg_1").await.unwrap().unwrap();
        assert_eq!(event.body, batch_body("msg_1"));
        assert_eq!(event.summary.event_type.as_deref(), Some("batch.succeeded"));
        assert_eq!(event.summary.resource_id.as_deref(), Some("batches/msg_1"));
        assert_eq!(event.summary.status, "accepted");
        assert_eq!(event.summary.scheme, "v1");
        assert_eq!(
            event.summary.job_state.map(QueueState::as_str),
            Some("available")
        );
        assert_eq!(event.webhook_timestamp, 1_795_417_535);
        assert_eq!(event.headers["webhook-id"], "msg_1");
        let received = event.summary.received_at;
        assert!(received > before && received <= Utc::now(), "{received}");
        let detail = store.find_job(job).await.unwrap().unwrap();
        assert_eq!(detail.summary.webhook_id, "msg_1");
        assert_eq!(detail.summary.state, "available");
    }

    async fn an_empty_or_non_utf8_body_is_kept_as_is(db: TestDb) {
        let store = db.store().await;

        accepted(record_body(&store, "empty", b"").await);
        accepted(record_body(&store, "binary", &[0xff, 0x00, 0xfe]).await);

        let empty = store.find_event("empty").await.unwrap().unwrap();
        assert_eq!(empty.body, b"");
        assert_eq!(empty.summary.status, "unparseable");
        let binary = store.find_event("binary").await.unwrap().unwrap();
        assert_eq!(binary.body, [0xff, 0x00, 0xfe]);
    }

    async fn a_duplicate_delivery_is_acknowledged_and_not_enqueued_again(db: TestDb) {
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);

        let again = record(&store, "msg_1").await;

        assert_eq!(again, Recorded::Duplicate);
        assert_eq!(
            store
                .list_events(&EventFilter::default(), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .list_jobs(&JobFilter::default(), 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    async fn twenty_concurrent_copies_give_one_event_and_one_job(db: TestDb) {
        let store = db.store().await;

        let copies: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { record(&store, "msg_race").await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for copy in copies {
            outcomes.push(copy.await.unwrap());
        }

        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, Recorded::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "{outcomes:?}");
        assert_eq!(
            store
                .list_events(&EventFilter::default(), 100)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .list_jobs(&JobFilter::default(), 100)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    async fn an_accepted_delivery_wakes_a_waiting_worker(db: TestDb) {
        let store = db.store().await;
        let wakeups = store.job_wakeups();
        let woken = wakeups.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        accepted(record(&store, "msg_1").await);

        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("the worker is woken");
    }

    async fn events_are_listed_newest_first_with_their_job_state(db: TestDb) {
        let store = db.store().await;
        for id in ["msg_1", "msg_2", "msg_3"] {
            accepted(record(&store, id).await);
        }

        let listed = store.list_events(&EventFilter::default(), 2).await.unwrap();

        let ids: Vec<_> = listed.iter().map(|e| e.webhook_id.as_str()).collect();
        assert_eq!(ids, ["msg_3", "msg_2"]);
        assert!(
            listed
                .iter()
                .all(|e| e.job_state.map(QueueState::as_str) == Some("available"))
        );
        assert!(listed[0].received_at >= listed[1].received_at);
        assert!(store.find_event("missing").await.unwrap().is_none());
    }

    async fn events_are_filtered_by_type_status_and_time(db: TestDb) {
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        accepted(record_body(&store, "msg_2", b"not json").await);

        let by_type = EventFilter {
            event_type: Some("batch.succeeded".into()),
            ..EventFilter::default()
        };
        let by_status = EventFilter {
            status: Some("unparseable".into()),
            ..EventFilter::default()
        };
        let future = EventFilter {
            since: Some(Utc::now() + chrono::Duration::minutes(5)),
            ..EventFilter::default()
        };
        let recent = EventFilter {
            since: Some(Utc::now() - chrono::Duration::minutes(5)),
            ..EventFilter::default()
        };

        let typed = store.list_events(&by_type, 10).await.unwrap();
        assert_eq!(typed.len(), 1);
        assert_eq!(typed[0].webhook_id, "msg_1");
        let unparseable = store.list_events(&by_status, 10).await.unwrap();
        assert_eq!(unparseable.len(), 1);
        assert_eq!(unparseable[0].webhook_id, "msg_2");
        assert!(store.list_events(&future, 10).await.unwrap().is_empty());
        assert_eq!(store.list_events(&recent, 10).await.unwrap().len(), 2);
    }

    async fn old_finished_events_are_pruned_with_their_jobs_and_results(db: TestDb) {
        let store = db.store().await;
        for id in ["done_1", "done_2", "dead", "waiting"] {
            accepted(record(&store, id).await);
        }
        let jobs = store
            .claim_jobs("w1", Duration::from_secs(60), 3)
            .await
            .unwrap();
        let result = crate::store::JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/x".into()),
            outcome: "stored",
            location: Some("results/x".into()),
            size_bytes: Some(1),
            sha256: None,
            summary: serde_json::json!({}),
        };
        assert!(
            store
                .complete_if_running(&jobs[0], &result, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .complete_if_running(&jobs[1], &result, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[2], "gave up", None, None)
                .await
                .unwrap()
        );
        let scope = PruneScope {
            cutoff: Utc::now() + chrono::Duration::seconds(1),
            include_discarded: false,
        };
        assert_eq!(store.count_prunable(&scope).await.unwrap(), 2);

        let first = store.prune_batch(&scope, start(), 1).await.unwrap();
        assert_eq!(first.deleted, 1);
        let second = store.prune_batch(&scope, first.next, 10).await.unwrap();
        assert_eq!(second.deleted, 1);
        let third = store.prune_batch(&scope, second.next, 10).await.unwrap();
        assert_eq!(third.deleted, 0);

        assert!(store.find_event("done_1").await.unwrap().is_none());
        assert!(store.find_job(jobs[0].id).await.unwrap().is_none());
        let results = store.test_count("SELECT count(*) AS n FROM results").await;
        assert_eq!(results, 0, "results go with their jobs");
        assert!(store.find_event("dead").await.unwrap().is_some());
        assert!(store.find_event("waiting").await.unwrap().is_some());
        let with_dead_letters = PruneScope {
            include_discarded: true,
            ..scope
        };
        assert_eq!(store.count_prunable(&with_dead_letters).await.unwrap(), 1);
        let dead_letters = store
            .prune_batch(&with_dead_letters, start(), 10)
            .await
            .unwrap();
        assert_eq!(dead_letters.deleted, 1);
        assert!(store.find_event("waiting").await.unwrap().is_some());
    }

    /// The first batch of a prune.
    fn start() -> PruneCursor {
        PruneCursor::default()
    }

    async fn a_prune_deletes_the_oldest_first_and_each_batch_resumes_after_the_last(db: TestDb) {
        let store = db.store().await;
        // Recorded (ids) in one order, received in another: the batches follow received_at.
        let days_old = [
            ("young", 1),
            ("second", 9),
            ("in_flight", 8),
            ("third", 7),
            ("first", 10),
        ];
        for (id, days) in days_old {
            accepted(record(&store, id).await);
            let received_at = Utc::now() - chrono::Duration::days(days);
            store.test_set_received_at(id, received_at).await;
        }
        let claimed = store
            .claim_jobs("w1", Duration::from_secs(60), 5)
            .await
            .unwrap();
        let (in_flight, finished): (Vec<_>, Vec<_>) = claimed
            .iter()
            .partition(|job| job.webhook_id.as_str() == "in_flight");
        let result = stored("batches/x");
        for job in finished {
            assert!(store.complete_if_running(job, &result, None).await.unwrap());
        }
        let scope = PruneScope {
            cutoff: Utc::now() - chrono::Duration::days(2),
            include_discarded: false,
        };
        let present = async |id: &str| store.find_event(id).await.unwrap().is_some();

        let first = store.prune_batch(&scope, start(), 1).await.unwrap();
        assert!(!present("first").await && present("second").await);
        let second = store.prune_batch(&scope, first.next, 2).await.unwrap();
        assert!(!present("second").await && !present("third").await);
        assert!(
            present("in_flight").await,
            "a job in flight is never pruned"
        );
        // It finishes now, behind the cursor: it is left to the next prune.
        assert!(
            store
                .complete_if_running(in_flight[0], &result, None)
                .await
                .unwrap()
        );
        let third = store.prune_batch(&scope, second.next, 10).await.unwrap();
        let next_prune = store.prune_batch(&scope, start(), 10).await.unwrap();

        assert_eq!([first.deleted, second.deleted, third.deleted], [1, 2, 0]);
        assert_eq!(third.next, second.next, "nothing deleted, the cursor stays");
        assert_eq!(next_prune.deleted, 1);
        assert!(!present("in_flight").await);
        assert!(present("young").await);
    }

    async fn recent_events_are_not_pruned(db: TestDb) {
        let store = db.store().await;
        let job = accepted(record(&store, "msg_1").await);
        let claimed = store
            .claim_jobs("w1", Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert!(
            store
                .discard_if_running(&claimed[0], "x", None, None)
                .await
                .unwrap()
        );
        let scope = PruneScope {
            cutoff: Utc::now() - chrono::Duration::days(2),
            include_discarded: true,
        };

        assert_eq!(store.count_prunable(&scope).await.unwrap(), 0);
        let batch = store.prune_batch(&scope, start(), 10).await.unwrap();
        assert_eq!(batch.deleted, 0);
        assert!(store.find_job(job).await.unwrap().is_some());
    }

    async fn events_page_by_cursor_and_match_an_id_prefix_literally(db: TestDb) {
        let store = db.store().await;
        for id in ["msg_a1", "msg_a2", "msg%b3", "other_4"] {
            accepted(record(&store, id).await);
        }

        let first = store.list_events(&EventFilter::default(), 2).await.unwrap();
        let next = EventFilter {
            before: Some(first[1].id),
            ..EventFilter::default()
        };
        let second = store.list_events(&next, 2).await.unwrap();
        let prefix = |p: &str| EventFilter {
            webhook_id_prefix: Some(p.into()),
            ..EventFilter::default()
        };

        let ids = |events: &[crate::store::EventSummary]| {
            events
                .iter()
                .map(|e| e.webhook_id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&first), ["other_4", "msg%b3"]);
        assert_eq!(ids(&second), ["msg_a2", "msg_a1"]);
        assert_eq!(
            ids(&store.list_events(&prefix("msg_a"), 10).await.unwrap()),
            ["msg_a2", "msg_a1"]
        );
        // `%` and `_` are literal: "msg%" matches one id, not every "msg…".
        assert_eq!(
            ids(&store.list_events(&prefix("msg%"), 10).await.unwrap()),
            ["msg%b3"]
        );
        let by_scheme = |scheme: &str| EventFilter {
            scheme: Some(scheme.into()),
            ..EventFilter::default()
        };
        assert_eq!(
            store.list_events(&by_scheme("v1"), 10).await.unwrap().len(),
            4
        );
        assert!(
            store
                .list_events(&by_scheme("jwt"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let until_then = EventFilter {
            until: Some(Utc::now() - chrono::Duration::hours(1)),
            ..EventFilter::default()
        };
        assert!(store.list_events(&until_then, 10).await.unwrap().is_empty());
    }

    async fn events_are_counted_per_minute_by_job_state(db: TestDb) {
        let store = db.store().await;
        for id in ["msg_1", "msg_2"] {
            accepted(record(&store, id).await);
        }

        let counts = store
            .events_per_minute(Utc::now() - chrono::Duration::minutes(5))
            .await
            .unwrap();

        assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 2);
        assert!(
            counts
                .iter()
                .all(|c| c.job_state == Some(QueueState::Available))
        );
        let now = Utc::now().timestamp();
        assert!(
            counts
                .iter()
                .all(|c| c.minute % 60 == 0 && now - c.minute < 120)
        );
    }

    on_both_backends!(
        events_page_by_cursor_and_match_an_id_prefix_literally,
        events_are_counted_per_minute_by_job_state,
        a_delivery_is_stored_byte_for_byte_with_its_job,
        an_empty_or_non_utf8_body_is_kept_as_is,
        a_duplicate_delivery_is_acknowledged_and_not_enqueued_again,
        twenty_concurrent_copies_give_one_event_and_one_job,
        an_accepted_delivery_wakes_a_waiting_worker,
        events_are_listed_newest_first_with_their_job_state,
        events_are_filtered_by_type_status_and_time,
        old_finished_events_are_pruned_with_their_jobs_and_results,
        a_prune_deletes_the_oldest_first_and_each_batch_resumes_after_the_last,
        recent_events_are_not_pruned,
    );
}

mod jobs {

    use std::collections::HashSet;
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use crate::store::testing::{
        TestDb, accepted, batch_body, on_both_backends, record, record_body, stored,
    };
    use crate::store::{
        Cancelled, ClaimedJob, Handoff, JobFilter, JobId, JobResult, QueueState, Requeued, Store,
    };

    const LEASE: Duration = Duration::from_secs(60);

    fn state(state: &str) -> JobFilter {
        JobFilter {
            state: Some(state.parse().unwrap()),
            ..JobFilter::default()
        }
    }

    async fn claim_one(store: &Store, worker: &str, lease: Duration) -> ClaimedJob {
        let mut jobs = store.claim_jobs(worker, lease, 1).await.unwrap();
        assert_eq!(jobs.len(), 1, "exactly one job was runnable");
        jobs.remove(0)
    }

    /// Waits until a lease of `LEASE_MS` has certainly expired (the clock has millisecond
    /// resolution).
    async fn let_short_lease_expire() {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    const SHORT_LEASE: Duration = Duration::from_millis(1);

    fn close_to(actual: DateTime<Utc>, expected: DateTime<Utc>) -> bool {
        (actual - expected).num_milliseconds().abs() < 2_000
    }

    async fn a_claim_takes_runnable_jobs_in_order_with_their_event(db: TestDb) {
        let store = db.store().await;
        let first = accepted(record(&store, "msg_1").await);
        let second = accepted(record(&store, "msg_2").await);
        accepted(record(&store, "msg_3").await);

        let jobs = store.claim_jobs("w1", LEASE, 2).await.unwrap();

        let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, [first, second]);
        assert_eq!(jobs[0].attempt, 1);
        assert_eq!(jobs[0].webhook_id, "msg_1");
        assert_eq!(jobs[0].event_type.as_deref(), Some("batch.succeeded"));
        assert_eq!(jobs[0].body, batch_body("msg_1"));
        let detail = store.find_job(first).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "running");
        assert_eq!(detail.locked_by.as_deref(), Some("w1"));
        let locked_until = detail.locked_until.unwrap();
        assert!(close_to(
            locked_until,
            Utc::now() + chrono::Duration::seconds(60)
        ));
        assert!(close_to(detail.summary.attempted_at.unwrap(), Utc::now()));
        assert_eq!(store.claim_jobs("w2", LEASE, 10).await.unwrap().len(), 1);
        assert!(store.claim_jobs("w2", LEASE, 10).await.unwrap().is_empty());
        assert!(store.claim_jobs("w2", LEASE, 0).await.unwrap().is_empty());
    }

    async fn a_completed_job_keeps_its_result_and_cannot_be_completed_twice(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "completed");
        assert!(close_to(detail.summary.finalized_at.unwrap(), Utc::now()));
        assert_eq!(detail.locked_by, None);
        assert_eq!(detail.locked_until, None);
        assert_eq!(detail.errors, json!([]));
        assert_eq!(detail.summary.last_error, None);
        let result = detail.result.unwrap();
        let keys: HashSet<_> = result.as_object().unwrap().keys().cloned().collect();
        let expected: HashSet<String> = [
            "resource_kind",
            "resource_id",
            "outcome",
            "location",
            "size_bytes",
            "sha256",
            "summary",
            "created_at",
        ]
        .map(String::from)
        .into();
        assert_eq!(keys, expected, "the results row without id and job_id");
        assert_eq!(result["outcome"], "stored");
        assert_eq!(result["size_bytes"], 1234);
        assert_eq!(result["summary"], json!({"lines": 10, "error_lines": 0}));
        let created_at: DateTime<Utc> = result["created_at"].as_str().unwrap().parse().unwrap();
        assert!(close_to(created_at, Utc::now()));
        let event = store.find_event("msg_1").await.unwrap().unwrap();
        assert_eq!(
            event.summary.job_state.map(QueueState::as_str),
            Some("completed")
        );
    }

    async fn finishes_at_the_same_moment_each_stay_guarded_and_share_commits_on_sqlite(db: TestDb) {
        let store = db.store().await;
        for n in 0..40 {
            accepted(record(&store, &format!("msg_{n}")).await);
        }
        let jobs = store.claim_jobs("w1", LEASE, 40).await.unwrap();
        assert_eq!(jobs.len(), 40);
        // The last one is no longer this attempt's (as after a rescue and a new claim).
        let mut stale = jobs[39].clone();
        stale.attempt += 1;
        let (outcome, error) = (stored("b"), "HTTP 500 from Gemini");

        let finished = futures::future::join_all(jobs[..39].iter().enumerate().map(|(n, job)| {
            let store = &store;
            let outcome = &outcome;
            async move {
                match n % 3 {
                    0 => store.complete_if_running(job, outcome, None).await,
                    1 => store.retry_if_running(job, error, Duration::ZERO).await,
                    _ => store.discard_if_running(job, error, None, None).await,
                }
            }
        }))
        .await;
        let late = store.complete_if_running(&stale, &outcome, None).await;

        assert!(finished.into_iter().all(|f| f.unwrap()));
        // SQLite shares the commits; Postgres commits each finish on its worker's task.
        let shared = store.finish_commits();
        match store.dialect() {
            crate::store::Dialect::Sqlite => {
                assert!(
                    (1..39).contains(&shared),
                    "39 finishes took {shared} commits"
                )
            }
            crate::store::Dialect::Postgres => assert_eq!(shared, 0),
        }
        assert!(
            !late.unwrap(),
            "a finish of another attempt changes nothing"
        );
        let counts = store.queue_stats().await.unwrap().by_state;
        let count = |state: &str| {
            counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n)
        };
        assert_eq!(
            (
                count("completed"),
                count("retryable"),
                count("discarded"),
                count("running")
            ),
            (13, 13, 13, 1)
        );
    }

    async fn a_retry_keeps_the_error_and_waits_for_its_delay(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        let retried = store
            .retry_if_running(&job, "download: 503 Service Unavailable", LEASE)
            .await
            .unwrap();

        assert!(retried);
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "retryable");
        assert_eq!(detail.summary.attempt, 1);
        assert_eq!(detail.locked_by, None);
        assert!(close_to(
            detail.summary.scheduled_at,
            Utc::now() + chrono::Duration::seconds(60)
        ));
        assert_eq!(
            detail.summary.last_error.as_deref(),
            Some("download: 503 Service Unavailable")
        );
        let entry = &detail.errors[0];
        assert_eq!(entry["attempt"], 1);
        assert_eq!(entry["error"], "download: 503 Service Unavailable");
        assert_eq!(entry["retryable"], true);
        let at: DateTime<Utc> = entry["at"].as_str().unwrap().parse().unwrap();
        assert!(close_to(at, Utc::now()));
        assert!(store.claim_jobs("w1", LEASE, 10).await.unwrap().is_empty());
        assert!(!store.retry_if_running(&job, "again", LEASE).await.unwrap());
    }

    async fn a_retry_without_delay_is_claimed_again_as_the_next_attempt(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let first = claim_one(&store, "w1", LEASE).await;
        assert!(
            store
                .retry_if_running(&first, "first failure", Duration::ZERO)
                .await
                .unwrap()
        );

        let second = claim_one(&store, "w2", LEASE).await;
        assert!(
            store
                .retry_if_running(&second, "second failure", Duration::ZERO)
                .await
                .unwrap()
        );

        assert_eq!(second.id, id);
        assert_eq!(second.attempt, 2);
        let detail = store.find_job(id).await.unwrap().unwrap();
        let errors: Vec<_> = detail.errors.as_array().unwrap().iter().collect();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["attempt"], 1);
        assert_eq!(errors[1]["attempt"], 2);
        assert_eq!(detail.summary.last_error.as_deref(), Some("second failure"));
    }

    async fn a_discarded_job_is_dead_lettered_with_its_final_error_and_result(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;
        let not_followable = JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/msg_1".into()),
            outcome: "not_followable",
            location: None,
            size_bytes: None,
            sha256: None,
            summary: json!({"error_message": "host not allowed"}),
        };

        let discarded = store
            .discard_if_running(&job, "host not allowed", Some(&not_followable), None)
            .await
            .unwrap();

        assert!(discarded);
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "discarded");
        assert!(detail.summary.finalized_at.is_some());
        assert_eq!(detail.errors[0]["retryable"], false);
        assert_eq!(detail.errors[0]["error"], "host not allowed");
        assert_eq!(detail.result.unwrap()["outcome"], "not_followable");
        assert!(store.claim_jobs("w1", LEASE, 10).await.unwrap().is_empty());
        assert!(
            !store
                .discard_if_running(&job, "again", None, None)
                .await
                .unwrap()
        );
    }

    async fn a_discard_without_a_result_leaves_none(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert!(
            store
                .discard_if_running(&job, "gave up", None, None)
                .await
                .unwrap()
        );

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.result, None);
        assert_eq!(detail.summary.last_error.as_deref(), Some("gave up"));
    }

    async fn a_heartbeat_extends_only_the_current_attempts_lease(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", Duration::from_secs(10)).await;

        assert!(!store.heartbeat(&job, "w2", LEASE).await.unwrap());
        let stale = ClaimedJob {
            attempt: job.attempt - 1,
            ..job.clone()
        };
        assert!(!store.heartbeat(&stale, "w1", LEASE).await.unwrap());
        assert!(store.heartbeat(&job, "w1", LEASE).await.unwrap());

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert!(close_to(
            detail.locked_until.unwrap(),
            Utc::now() + chrono::Duration::seconds(60)
        ));
        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
        assert!(!store.heartbeat(&job, "w1", LEASE).await.unwrap());
    }

    async fn an_expired_lease_is_rescued_and_the_lost_attempt_cannot_finish(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let lost = claim_one(&store, "w1", SHORT_LEASE).await;
        let_short_lease_expire().await;

        let rescued = store.rescue_expired_leases(5).await.unwrap();

        assert_eq!(rescued, 1);
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "retryable");
        assert_eq!(detail.locked_by, None);
        assert_eq!(detail.summary.finalized_at, None);
        assert_eq!(
            detail.summary.last_error.as_deref(),
            Some("lease expired: worker w1 stopped before finishing")
        );
        assert_eq!(detail.errors[0]["retryable"], true);
        assert_eq!(detail.errors[0]["attempt"], 1);
        let current = claim_one(&store, "w2", LEASE).await;
        assert_eq!(current.attempt, 2);
        assert!(!store.heartbeat(&lost, "w1", LEASE).await.unwrap());
        assert!(
            !store
                .complete_if_running(&lost, &stored("b1"), None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .retry_if_running(&lost, "late", Duration::ZERO)
                .await
                .unwrap()
        );
        assert!(!store.release_if_running(&lost).await.unwrap());
        assert!(
            store
                .complete_if_running(&current, &stored("b1"), None)
                .await
                .unwrap()
        );
    }

    async fn a_live_lease_is_not_rescued(db: TestDb) {
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert_eq!(store.rescue_expired_leases(5).await.unwrap(), 0);
        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
    }

    async fn an_expired_lease_on_the_last_attempt_is_dead_lettered(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        claim_one(&store, "w1", SHORT_LEASE).await;
        let_short_lease_expire().await;

        assert_eq!(store.rescue_expired_leases(1).await.unwrap(), 1);

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "discarded");
        assert!(detail.summary.finalized_at.is_some());
        assert_eq!(detail.errors[0]["retryable"], false);
        assert!(store.claim_jobs("w2", LEASE, 10).await.unwrap().is_empty());
    }

    async fn a_released_job_is_available_at_once_and_its_attempt_is_not_counted(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;
        let wakeups = store.job_wakeups();
        let woken = wakeups.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        assert!(store.release_if_running(&job).await.unwrap());
        assert!(!store.release_if_running(&job).await.unwrap());

        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("a worker is woken");
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "available");
        assert_eq!(detail.summary.attempt, 0);
        assert_eq!(detail.locked_by, None);
        assert_eq!(claim_one(&store, "w2", LEASE).await.attempt, 1);
    }

    async fn a_job_is_requeued_unless_it_is_running(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let job = claim_one(&store, "w1", LEASE).await;

        assert_eq!(store.requeue_job(id).await.unwrap(), Requeued::Running);
        assert_eq!(
            store.requeue_job(JobId(999)).await.unwrap(),
            Requeued::NotFound
        );
        assert!(
            store
                .discard_if_running(&job, "gave up", None, None)
                .await
                .unwrap()
        );
        assert_eq!(store.requeue_job(id).await.unwrap(), Requeued::Queued(id));

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.summary.state, "available");
        assert_eq!(detail.summary.attempt, 0);
        assert_eq!(detail.summary.finalized_at, None);
        assert_eq!(
            detail.summary.last_error.as_deref(),
            Some("gave up"),
            "history kept"
        );
        assert_eq!(claim_one(&store, "w1", LEASE).await.attempt, 1);
    }

    async fn every_discarded_job_is_requeued_at_once(db: TestDb) {
        let store = db.store().await;
        for id in ["msg_1", "msg_2", "msg_3"] {
            accepted(record(&store, id).await);
        }
        let jobs = store.claim_jobs("w1", LEASE, 3).await.unwrap();
        assert!(
            store
                .discard_if_running(&jobs[0], "x", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[1], "x", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .complete_if_running(&jobs[2], &stored("b3"), None)
                .await
                .unwrap()
        );

        let requeued = store
            .requeue_discarded_matching(&JobFilter::default())
            .await
            .unwrap();

        assert_eq!(requeued, 2);
        assert_eq!(
            store
                .list_jobs(&state("available"), 10)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            store
                .list_jobs(&state("completed"), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .requeue_discarded_matching(&JobFilter::default())
                .await
                .unwrap(),
            0
        );
    }

    async fn a_replayed_event_runs_again_and_its_new_result_replaces_the_old(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        let first = claim_one(&store, "w1", LEASE).await;
        assert_eq!(
            store.replay_event("msg_1").await.unwrap(),
            Requeued::Running
        );
        assert!(
            store
                .complete_if_running(&first, &stored("b1"), None)
                .await
                .unwrap()
        );

        assert_eq!(
            store.replay_event("msg_1").await.unwrap(),
            Requeued::Queued(id)
        );
        assert_eq!(
            store.replay_event("missing").await.unwrap(),
            Requeued::NotFound
        );

        let again = claim_one(&store, "w1", LEASE).await;
        let mut newer = stored("b1");
        newer.size_bytes = Some(99);
        assert!(
            store
                .complete_if_running(&again, &newer, None)
                .await
                .unwrap()
        );
        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.result.unwrap()["size_bytes"], 99);
        let results = store.test_count("SELECT count(*) AS n FROM results").await;
        assert_eq!(results, 1);
    }

    /// The whole life of a job that fails, is dead-lettered, retried and replayed: its error
    /// history stays a JSON array every database function reads.
    async fn a_job_retried_dead_lettered_requeued_and_replayed_keeps_its_history(db: TestDb) {
        let store = db.store().await;
        let id = accepted(record(&store, "msg_1").await);
        for _ in 0..2 {
            let job = claim_one(&store, "w1", LEASE).await;
            assert!(
                store
                    .retry_if_running(&job, "503 from Gemini", Duration::ZERO)
                    .await
                    .unwrap()
            );
        }
        let job = claim_one(&store, "w1", LEASE).await;
        let handoff = Handoff {
            outcome: json!({"state": "failed"}),
            sinks: vec!["app".into()],
        };
        assert!(
            store
                .discard_if_running(&job, "gave up", None, Some(&handoff))
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .requeue_discarded_matching(&JobFilter::default())
                .await
                .unwrap(),
            1
        );
        for _ in 0..2 {
            let job = claim_one(&store, "w1", LEASE).await;
            assert!(
                store
                    .complete_if_running(&job, &stored("b1"), Some(&handoff))
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.replay_event("msg_1").await.unwrap(),
                Requeued::Queued(id)
            );
        }

        let detail = store.find_job(id).await.unwrap().unwrap();
        assert_eq!(detail.errors.as_array().unwrap().len(), 3);
        assert_eq!(detail.summary.state, QueueState::Available);
    }

    async fn a_stored_result_is_found_for_another_job_of_the_same_resource(db: TestDb) {
        let store = db.store().await;
        let first = accepted(record(&store, "msg_1").await);
        let second = accepted(record(&store, "msg_2").await);
        let job = claim_one(&store, "w1", LEASE).await;
        assert!(
            store
                .complete_if_running(&job, &stored("batches/x"), None)
                .await
                .unwrap()
        );

        let found = store
            .find_stored_result("batch", "batches/x", second)
            .await
            .unwrap()
            .unwrap();

        assert_eq!(found.location.as_deref(), Some("results/batches/x.jsonl"));
        assert_eq!(found.size_bytes, Some(1234));
        assert_eq!(found.sha256, Some("ab".repeat(32)));
        assert_eq!(found.summary, json!({"lines": 10, "error_lines": 0}));
        let own = store.find_stored_result("batch", "batches/x", first).await;
        assert_eq!(own.unwrap(), None, "a job's own result is not reused");
        let other = store.find_stored_result("batch", "batches/y", second).await;
        assert_eq!(other.unwrap(), None);
        let kind = store
            .find_stored_result("interaction", "batches/x", second)
            .await;
        assert_eq!(kind.unwrap(), None);
    }

    async fn a_result_that_was_only_recorded_is_not_reused(db: TestDb) {
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        let second = accepted(record(&store, "msg_2").await);
        let job = claim_one(&store, "w1", LEASE).await;
        let mut recorded = stored("batches/x");
        recorded.outcome = "recorded";
        recorded.location = None;
        assert!(
            store
                .complete_if_running(&job, &recorded, None)
                .await
                .unwrap()
        );

        let found = store.find_stored_result("batch", "batches/x", second).await;

        assert_eq!(found.unwrap(), None);
    }

    async fn jobs_are_listed_newest_first_and_filtered_by_state(db: TestDb) {
        let store = db.store().await;
        let ids: Vec<_> = {
            let mut ids = Vec::new();
            for id in ["msg_1", "msg_2", "msg_3"] {
                ids.push(accepted(record(&store, id).await));
            }
            ids
        };
        let job = claim_one(&store, "w1", LEASE).await;
        assert!(store.retry_if_running(&job, "boom", LEASE).await.unwrap());

        let all = store.list_jobs(&JobFilter::default(), 10).await.unwrap();
        let retryable = store.list_jobs(&state("retryable"), 10).await.unwrap();
        let limited = store.list_jobs(&JobFilter::default(), 1).await.unwrap();

        let listed: Vec<_> = all.iter().map(|j| j.id).collect();
        assert_eq!(listed, [ids[2], ids[1], ids[0]]);
        assert_eq!(retryable.len(), 1);
        assert_eq!(retryable[0].webhook_id, "msg_1");
        assert_eq!(retryable[0].event_type.as_deref(), Some("batch.succeeded"));
        assert_eq!(retryable[0].last_error.as_deref(), Some("boom"));
        assert!(close_to(retryable[0].created_at, Utc::now()));
        assert_eq!(limited.len(), 1);
        assert!(
            store
                .list_jobs(&state("cancelled"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.find_job(JobId(999)).await.unwrap().is_none());
    }

    async fn two_stores_on_one_database_never_claim_one_job_twice(db: TestDb) {
        let a = db.store().await;
        let b = db.store().await;
        for n in 0..100 {
            accepted(record(&a, &format!("msg_{n}")).await);
        }

        // Eight claimers per store, each taking up to three jobs at a time until none is left.
        let claimers: Vec<_> = (0..16)
            .map(|n| {
                let store = if n % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let worker = format!("w{n}");
                    let mut claimed = Vec::new();
                    loop {
                        let jobs = store.claim_jobs(&worker, LEASE, 3).await.unwrap();
                        if jobs.is_empty() {
                            return claimed;
                        }
                        for job in jobs {
                            assert!(
                                store
                                    .complete_if_running(&job, &stored("b"), None)
                                    .await
                                    .unwrap()
                            );
                            claimed.push((job.id, job.attempt));
                        }
                    }
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.unwrap());
        }

        let unique: HashSet<_> = claimed.iter().map(|(id, _)| *id).collect();
        assert_eq!(claimed.len(), 100, "every job claimed exactly once");
        assert_eq!(unique.len(), 100);
        assert!(claimed.iter().all(|(_, attempt)| *attempt == 1));
        assert_eq!(
            b.list_jobs(&state("completed"), 1000).await.unwrap().len(),
            100
        );
    }

    async fn jobs_are_filtered_by_event_type_and_creation_time(db: TestDb) {
        let store = db.store().await;
        accepted(record(&store, "msg_1").await);
        let interaction = serde_json::to_vec(&json!({
            "type": "interaction.completed",
            "data": {"id": "interactions/1"},
        }))
        .unwrap();
        let other = accepted(record_body(&store, "msg_2", &interaction).await);

        let by_type = JobFilter {
            event_type: Some("interaction.completed".into()),
            ..JobFilter::default()
        };
        let typed = store.list_jobs(&by_type, 10).await.unwrap();
        let recent = JobFilter {
            since: Some(Utc::now() - chrono::Duration::minutes(5)),
            ..JobFilter::default()
        };
        let future = JobFilter {
            since: Some(Utc::now() + chrono::Duration::minutes(5)),
            ..JobFilter::default()
        };

        assert_eq!(typed.len(), 1);
        assert_eq!(typed[0].id, other);
        assert_eq!(store.list_jobs(&recent, 10).await.unwrap().len(), 2);
        assert!(store.list_jobs(&future, 10).await.unwrap().is_empty());
    }

    async fn queue_stats_count_jobs_by_state_and_age_the_backlog(db: TestDb) {
        let store = db.store().await;
        let empty = store.queue_stats().await.unwrap();
        assert!(empty.by_state.is_empty());
        assert_eq!(empty.backlog_age_secs, 0.0);
        for id in ["msg_1", "msg_2", "msg_3"] {
            accepted(record(&store, id).await);
        }
        let job = claim_one(&store, "w1", LEASE).await;
        assert!(
            store
                .complete_if_running(&job, &stored("b1"), None)
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;

        let stats = store.queue_stats().await.unwrap();

        assert_eq!(
            stats.by_state,
            [(QueueState::Available, 2), (QueueState::Completed, 1)]
        );
        assert!(
            (0.04..60.0).contains(&stats.backlog_age_secs),
            "{}",
            stats.backlog_age_secs
        );
    }

    async fn discard_reasons_group_dead_letters_by_their_last_error(db: TestDb) {
        let store = db.store().await;
        for id in ["msg_1", "msg_2", "msg_3", "msg_4"] {
            accepted(record(&store, id).await);
        }
        let jobs = store.claim_jobs("w1", LEASE, 4).await.unwrap();
        assert!(
            store
                .discard_if_running(&jobs[0], "host not allowed", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[1], "host not allowed", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .discard_if_running(&jobs[2], "404 Not Found", None, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .retry_if_running(&jobs[3], "timeout", LEASE)
                .await
                .unwrap()
        );

        let reasons = store.discard_reasons(10).await.unwrap();

        assert_eq!(
            reasons,
            [
                ("host not allowed".to_owned(), 2),
                ("404 Not Found".to_owned(), 1)
            ]
        );
        assert_eq!(store.discard_reasons(1).await.unwrap().len(), 1);
    }

    async fn dead_letters_are_counted_and_requeued_by_filter(db: TestDb) {
        let store = db.store().await;
        for id in ["msg_1", "msg_2", "msg_3"] {
            accepted(record(&store, id).await);
        }
        let jobs = store.claim_jobs("w1", LEASE, 3).await.unwrap();
        for (job, error) in jobs.iter().zip(["timeout", "timeout", "404"]) {
            assert!(
                store
                    .discard_if_running(job, error, None, None)
                    .await
                    .unwrap()
            );
        }
        let timeouts = JobFilter {
            last_error: Some("timeout".into()),
            ..JobFilter::default()
        };

        assert_eq!(store.count_discarded(&timeouts).await.unwrap(), 2);
        assert_eq!(
            store.count_discarded(&JobFilter::default()).await.unwrap(),
            3
        );
        assert_eq!(store.list_jobs(&timeouts, 10).await.unwrap().len(), 2);
        assert_eq!(
            store.requeue_discarded_matching(&timeouts).await.unwrap(),
            2
        );

        assert_eq!(
            store
                .list_jobs(&state("available"), 10)
                .await
                .unwrap()
                .len(),
            2
        );
        let left = store.list_jobs(&state("discarded"), 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].last_error.as_deref(), Some("404"));
        assert_eq!(store.count_discarded(&timeouts).await.unwrap(), 0);
    }

    async fn only_a_waiting_job_is_cancelled(db: TestDb) {
        let store = db.store().await;
        let waiting = accepted(record(&store, "msg_1").await);
        accepted(record(&store, "msg_2").await);
        assert_eq!(
            store.cancel_job(waiting).await.unwrap(),
            Cancelled::Cancelled
        );
        let running = store.claim_jobs("w1", LEASE, 5).await.unwrap();

        assert_eq!(running.len(), 1, "a cancelled job is not claimed");
        assert_eq!(
            store.cancel_job(running[0].id).await.unwrap(),
            Cancelled::NotWaiting(QueueState::Running)
        );
        assert_eq!(
            store.cancel_job(JobId(999_999)).await.unwrap(),
            Cancelled::NotFound
        );
        let job = store.job_of_event("msg_1").await.unwrap().unwrap();
        assert_eq!(job.summary.state, QueueState::Cancelled);
        assert!(job.summary.finalized_at.is_some());
        assert!(store.job_of_event("missing").await.unwrap().is_none());
    }

    on_both_backends!(
        dead_letters_are_counted_and_requeued_by_filter,
        only_a_waiting_job_is_cancelled,
        a_claim_takes_runnable_jobs_in_order_with_their_event,
        a_completed_job_keeps_its_result_and_cannot_be_completed_twice,
        finishes_at_the_same_moment_each_stay_guarded_and_share_commits_on_sqlite,
        a_retry_keeps_the_error_and_waits_for_its_delay,
        a_retry_without_delay_is_claimed_again_as_the_next_attempt,
        a_discarded_job_is_dead_lettered_with_its_final_error_and_result,
        a_discard_without_a_result_leaves_none,
        a_heartbeat_extends_only_the_current_attempts_lease,
        an_expired_lease_is_rescued_and_the_lost_attempt_cannot_finish,
        a_live_lease_is_not_rescued,
        an_expired_lease_on_the_last_attempt_is_dead_lettered,
        a_released_job_is_available_at_once_and_its_attempt_is_not_counted,
        a_job_is_requeued_unless_it_is_running,
        every_discarded_job_is_requeued_at_once,
        a_replayed_event_runs_again_and_its_new_result_replaces_the_old,
        a_job_retried_dead_lettered_requeued_and_replayed_keeps_its_history,
        a_stored_result_is_found_for_another_job_of_the_same_resource,
        a_result_that_was_only_recorded_is_not_reused,
        jobs_are_listed_newest_first_and_filtered_by_state,
        two_stores_on_one_database_never_claim_one_job_twice,
        jobs_are_filtered_by_event_type_and_creation_time,
        queue_stats_count_jobs_by_state_and_age_the_backlog,
        discard_reasons_group_dead_letters_by_their_last_error,
    );
}

mod deliveries {

    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use crate::store::testing::{
        TestDb, accepted, batch_body, on_both_backends, record, record_traced,
    };
    use crate::store::{
        ClaimedDelivery, ClaimedJob, DeliveryFilter, Handoff, JobResult, QueueState, Requeued,
        Store,
    };

    const LEASE: Duration = Duration::from_secs(60);

    fn recorded() -> JobResult {
        JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/b1".into()),
            outcome: "recorded",
            location: None,
            size_bytes: None,
            sha256: None,
            summary: json!({"status": "succeeded"}),
        }
    }

    fn handoff(sinks: &[&str]) -> Handoff {
        Handoff {
            outcome: json!({"type": "batch.succeeded", "resource": "batches/b1", "lines": 10}),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
        }
    }

    async fn claimed_job(store: &Store, webhook_id: &str) -> ClaimedJob {
        accepted(record(store, webhook_id).await);
        let mut jobs = store.claim_jobs("w1", LEASE, 1).await.unwrap();
        jobs.remove(0)
    }

    /// A finished job whose outcome went to `sinks`; returns the claimed deliveries.
    async fn handed_off(store: &Store, sinks: &[&str]) -> Vec<ClaimedDelivery> {
        let job = claimed_job(store, "msg_1").await;
        let done = store
            .complete_if_running(&job, &recorded(), Some(&handoff(sinks)))
            .await
            .unwrap();
        assert!(done);
        store.claim_deliveries("d1", LEASE, 10).await.unwrap()
    }

    async fn count(store: &Store, table: &str) -> i64 {
        store
            .test_count(&format!("SELECT count(*) AS n FROM {table}"))
            .await
    }

    async fn a_finished_job_queues_its_outcome_once_per_sink_and_wakes_the_dispatchers(db: TestDb) {
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        let wakeups = store.delivery_wakeups();
        let woken = wakeups.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        let done = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app", "nats"])))
            .await
            .unwrap();

        assert!(done);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("a dispatcher is woken");
        let deliveries = store.claim_deliveries("d1", LEASE, 10).await.unwrap();
        let sinks: Vec<_> = deliveries.iter().map(|d| d.sink.as_str()).collect();
        assert_eq!(sinks, ["app", "nats"]);
        assert!(deliveries.iter().all(|d| d.attempt == 1
            && d.revision == 1
            && d.webhook_id == "msg_1"
            && d.outcome == handoff(&[]).outcome));
        assert!(
            store
                .claim_deliveries("d2", LEASE, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn an_events_outcome_and_deliveries_are_found_by_its_id(db: TestDb) {
        let store = db.store().await;
        assert!(store.outcome_of_event("msg_1").await.unwrap().is_none());

        handed_off(&store, &["app", "nats"]).await;

        let outcome = store.outcome_of_event("msg_1").await.unwrap().unwrap();
        assert_eq!(outcome.revision, 1);
        let of_event = DeliveryFilter {
            webhook_id: Some("msg_1".into()),
            ..DeliveryFilter::default()
        };
        let deliveries = store.list_deliveries(&of_event, 10).await.unwrap();
        let mut sinks: Vec<_> = deliveries.iter().map(|d| d.sink.as_str()).collect();
        sinks.sort_unstable();
        assert_eq!(sinks, ["app", "nats"]);
        let one_sink = DeliveryFilter {
            sink: Some("nats".into()),
            ..DeliveryFilter::default()
        };
        assert_eq!(store.list_deliveries(&one_sink, 10).await.unwrap().len(), 1);
        let other = DeliveryFilter {
            webhook_id: Some("msg_2".into()),
            ..DeliveryFilter::default()
        };
        assert!(store.list_deliveries(&other, 10).await.unwrap().is_empty());
    }

    async fn a_discarded_job_hands_off_its_outcome_too(db: TestDb) {
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;

        let done = store
            .discard_if_running(&job, "not followable", None, Some(&handoff(&["app"])))
            .await
            .unwrap();

        assert!(done);
        assert_eq!(
            store.claim_deliveries("d1", LEASE, 10).await.unwrap().len(),
            1
        );
    }

    async fn an_outcome_without_sinks_is_kept_and_nothing_is_delivered(db: TestDb) {
        let store = db.store().await;

        let deliveries = handed_off(&store, &[]).await;

        assert!(deliveries.is_empty());
        assert_eq!(count(&store, "outcomes").await, 1);
    }

    async fn a_job_that_is_no_longer_this_attempts_hands_off_nothing(db: TestDb) {
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        assert!(
            store
                .complete_if_running(&job, &recorded(), None)
                .await
                .unwrap()
        );

        let again = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app"])))
            .await
            .unwrap();

        assert!(!again);
        assert_eq!(count(&store, "outcomes").await, 0);
        assert_eq!(count(&store, "deliveries").await, 0);
    }

    async fn a_replay_rewrites_the_outcome_and_requeues_every_sink(db: TestDb) {
        let store = db.store().await;
        for delivery in handed_off(&store, &["app", "nats"]).await {
            assert!(store.finish_delivery(&delivery, Ok(())).await.unwrap());
        }
        assert!(matches!(
            store.replay_event("msg_1").await.unwrap(),
            Requeued::Queued(_)
        ));
        let job = store.claim_jobs("w1", LEASE, 1).await.unwrap().remove(0);

        let mut newer = handoff(&["app", "nats"]);
        newer.outcome["lines"] = json!(11);
        assert!(
            store
                .complete_if_running(&job, &recorded(), Some(&newer))
                .await
                .unwrap()
        );

        let deliveries = store.claim_deliveries("d1", LEASE, 10).await.unwrap();
        assert_eq!(deliveries.len(), 2);
        assert!(deliveries.iter().all(|d| d.revision == 2 && d.attempt == 1));
        assert_eq!(deliveries[0].outcome["lines"], 11);
        assert_eq!(count(&store, "outcomes").await, 1);
        assert_eq!(count(&store, "deliveries").await, 2);
    }

    async fn a_delivery_is_finished_only_once_per_attempt(db: TestDb) {
        let store = db.store().await;
        let delivery = handed_off(&store, &["app"]).await.remove(0);

        assert!(store.finish_delivery(&delivery, Ok(())).await.unwrap());
        assert!(!store.finish_delivery(&delivery, Ok(())).await.unwrap());
        assert!(
            !store
                .finish_delivery(&delivery, Err(("late", None)))
                .await
                .unwrap()
        );

        let listed = store
            .list_deliveries(&DeliveryFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(listed[0].state, "completed");
        assert!(listed[0].finalized_at.is_some());
        assert_eq!(listed[0].last_error, None);
    }

    async fn a_failed_delivery_is_retried_after_its_delay_keeping_the_error(db: TestDb) {
        let store = db.store().await;
        let delivery = handed_off(&store, &["app"]).await.remove(0);

        let retried = store
            .finish_delivery(&delivery, Err(("app answered 502", Some(LEASE))))
            .await
            .unwrap();

        assert!(retried);
        let listed = store
            .list_deliveries(
                &DeliveryFilter {
                    state: Some(QueueState::Retryable),
                    ..DeliveryFilter::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_error.as_deref(), Some("app answered 502"));
        let due = listed[0].scheduled_at - Utc::now();
        assert!((50..=61).contains(&due.num_seconds()), "{due}");
        assert!(
            store
                .claim_deliveries("d1", LEASE, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let id = store
            .list_deliveries(&DeliveryFilter::default(), 1)
            .await
            .unwrap()[0]
            .id;
        let errors = store.find_delivery(id).await.unwrap().unwrap().errors;
        assert_eq!(errors[0]["retryable"], true);
        assert_eq!(errors[0]["attempt"], 1);
        let at: DateTime<Utc> = errors[0]["at"].as_str().unwrap().parse().unwrap();
        assert!((Utc::now() - at).num_seconds().abs() < 5);
    }

    async fn a_dead_lettered_delivery_is_requeued_on_request(db: TestDb) {
        let store = db.store().await;
        let deliveries = handed_off(&store, &["app", "nats"]).await;
        assert!(
            store
                .finish_delivery(&deliveries[0], Err(("app answered 410", None)))
                .await
                .unwrap()
        );

        let dead = store
            .list_deliveries(
                &DeliveryFilter {
                    state: Some(QueueState::Discarded),
                    ..DeliveryFilter::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].last_error.as_deref(), Some("app answered 410"));
        assert_eq!(
            store
                .requeue_deliveries(Some(deliveries[1].id))
                .await
                .unwrap(),
            0,
            "a running delivery is left alone"
        );
        assert_eq!(store.requeue_deliveries(None).await.unwrap(), 1);

        let again = store.claim_deliveries("d2", LEASE, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, deliveries[0].id);
        assert_eq!(again[0].attempt, 1);
        assert!(store.finish_delivery(&again[0], Ok(())).await.unwrap());
        assert_eq!(
            store.requeue_deliveries(Some(again[0].id)).await.unwrap(),
            1
        );
    }

    async fn an_expired_delivery_lease_is_rescued(db: TestDb) {
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        let finished = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app"])))
            .await
            .unwrap();
        assert!(finished);
        let lost = store
            .claim_deliveries("d1", Duration::from_millis(1), 1)
            .await
            .unwrap()
            .remove(0);
        tokio::time::sleep(Duration::from_millis(30)).await;

        assert_eq!(store.rescue_expired_deliveries(5).await.unwrap(), 1);

        let listed = store
            .list_deliveries(&DeliveryFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(listed[0].state, "retryable");
        assert_eq!(
            listed[0].last_error.as_deref(),
            Some("lease expired: dispatcher d1 stopped before finishing")
        );
        let current = store
            .claim_deliveries("d2", LEASE, 1)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(current.attempt, 2);
        assert!(!store.finish_delivery(&lost, Ok(())).await.unwrap());
        assert!(store.finish_delivery(&current, Ok(())).await.unwrap());
    }

    async fn an_expired_delivery_lease_on_the_last_attempt_is_dead_lettered(db: TestDb) {
        let store = db.store().await;
        let job = claimed_job(&store, "msg_1").await;
        let finished = store
            .complete_if_running(&job, &recorded(), Some(&handoff(&["app"])))
            .await
            .unwrap();
        assert!(finished);
        store
            .claim_deliveries("d1", Duration::from_millis(1), 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;

        assert_eq!(store.rescue_expired_deliveries(1).await.unwrap(), 1);

        let listed = store
            .list_deliveries(&DeliveryFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(listed[0].state, "discarded");
        assert!(listed[0].finalized_at.is_some());
    }

    async fn pruning_an_event_removes_its_outcome_and_deliveries(db: TestDb) {
        let store = db.store().await;
        for delivery in handed_off(&store, &["app"]).await {
            assert!(store.finish_delivery(&delivery, Ok(())).await.unwrap());
        }
        let scope = crate::store::PruneScope {
            cutoff: Utc::now() + chrono::Duration::seconds(1),
            include_discarded: false,
        };

        let batch = store
            .prune_batch(&scope, crate::store::PruneCursor::default(), 10)
            .await
            .unwrap();
        assert_eq!(batch.deleted, 1);

        assert_eq!(count(&store, "outcomes").await, 0);
        assert_eq!(count(&store, "deliveries").await, 0);
    }

    async fn a_deliverys_trace_context_reaches_its_job_and_its_hand_off(db: TestDb) {
        let store = db.store().await;
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let body = batch_body("traced");
        // Both at once, so that one batch carries a context and a NULL side by side.
        let (traced, untraced) = tokio::join!(
            record_traced(&store, "traced", &body, Some(traceparent)),
            record(&store, "untraced"),
        );
        accepted(traced);
        accepted(untraced);

        let jobs = store.claim_jobs("w1", LEASE, 10).await.unwrap();
        let contexts: Vec<_> = jobs
            .iter()
            .map(|job| (job.webhook_id.as_str(), job.trace_context.as_deref()))
            .collect();
        let job = jobs.iter().find(|job| job.webhook_id == "traced").unwrap();
        let done = store
            .complete_if_running(job, &recorded(), Some(&handoff(&["app"])))
            .await
            .unwrap();
        let deliveries = store.claim_deliveries("d1", LEASE, 10).await.unwrap();

        assert_eq!(contexts.len(), 2);
        assert!(
            contexts.contains(&("traced", Some(traceparent))),
            "{contexts:?}"
        );
        assert!(contexts.contains(&("untraced", None)), "{contexts:?}");
        assert!(done);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].trace_context.as_deref(), Some(traceparent));
    }

    on_both_backends!(
        a_deliverys_trace_context_reaches_its_job_and_its_hand_off,
        a_finished_job_queues_its_outcome_once_per_sink_and_wakes_the_dispatchers,
        an_events_outcome_and_deliveries_are_found_by_its_id,
        a_discarded_job_hands_off_its_outcome_too,
        an_outcome_without_sinks_is_kept_and_nothing_is_delivered,
        a_job_that_is_no_longer_this_attempts_hands_off_nothing,
        a_replay_rewrites_the_outcome_and_requeues_every_sink,
        a_delivery_is_finished_only_once_per_attempt,
        a_failed_delivery_is_retried_after_its_delay_keeping_the_error,
        a_dead_lettered_delivery_is_requeued_on_request,
        an_expired_delivery_lease_is_rescued,
        an_expired_delivery_lease_on_the_last_attempt_is_dead_lettered,
        pruning_an_event_removes_its_outcome_and_deliveries,
    );
}
