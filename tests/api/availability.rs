//! Nothing is acknowledged that is not stored: a database outage answers 503, and recovery
//! needs no restart.

use crate::helpers::*;

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn while_the_database_refuses_connections_deliveries_get_503_and_afterwards_200_without_a_restart()
 {
    crate::require_postgres!();
    // A short wait for a connection, so the outage is answered quickly.
    let app = spawn_app_with(|f| f.merge(("database_acquire_timeout_ms", 500))).await;
    assert_eq!(
        app.post_signed(&unique_id(), &batch_succeeded("before"))
            .await
            .status(),
        200
    );
    let name = &app.db.name;

    // Take the database away: refuse new connections and end the pooled ones.
    app.db
        .admin(&format!(
            r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false"#
        ))
        .await;
    app.db
        .admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
    let during_id = unique_id();
    let during = app
        .post_signed(&during_id, &batch_succeeded("during"))
        .await;
    let retry_after = during
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, json) = status_and_json(during).await;

    assert_eq!(
        (status, json),
        (503, serde_json::json!({"error": "unavailable"}))
    );
    assert!(retry_after.is_some(), "503 carries Retry-After");

    // Bring it back: the same process recovers, and the refused delivery was never recorded,
    // so Gemini's retry of it is accepted as new.
    app.db
        .admin(&format!(
            r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS true"#
        ))
        .await;
    let retried = app
        .post_signed(&during_id, &batch_succeeded("during"))
        .await;
    assert_eq!(
        status_and_json(retried).await,
        (200, serde_json::json!({"status": "accepted"}))
    );
    assert_eq!(app.count("events").await, 2);
}
