//! The console in a real browser: headless Chromium driven over WebDriver (Debian's `chromium`
//! and `chromium-driver`, which `.ci/run` installs). Log in, find an event by id, open it,
//! replay it and see its job run again, bulk-retry dead letters; a body holding `<script>`
//! shows as text and runs nothing. With `GEMHOOK_TEST_SCREENSHOTS=<dir>` the main pages are
//! saved there as PNG (the README's screenshots come from this).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::standin::GeminiStandIn;

const TOKEN: &str = "browser-test-token-0123456789";

/// A chromedriver on a free port, stopped when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let program = std::env::var("GEMHOOK_TEST_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} did not start ({e}): apt-get install chromium chromium-driver")
            });
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"
            ]}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        for _ in 0..100 {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => return client,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("chromedriver at {} never opened a session", self.url);
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn screenshot(browser: &Client, name: &str) {
    if let Ok(dir) = std::env::var("GEMHOOK_TEST_SCREENSHOTS") {
        let png = browser.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
    }
}

/// The text of the first element matching `css`, waiting for it to appear (a click's page
/// loads after the click returns).
async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn click_button(browser: &Client, label: &str) {
    let xpath =
        format!("//button[normalize-space(.)='{label}'] | //a[normalize-space(.)='{label}']");
    browser
        .find(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("no button {label:?}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Waits until the browser shows a page whose URL contains `part`, loaded whole.
async fn wait_for_page(browser: &Client, part: &str) {
    for _ in 0..100 {
        let url = browser.current_url().await.unwrap();
        let loaded = browser
            .execute("return document.readyState === 'complete';", vec![])
            .await
            .unwrap();
        if url.as_str().contains(part) && loaded == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the browser never reached a page with {part:?} in its URL");
}

/// Waits until the page's heading is `heading` (the page a click leads to has loaded).
async fn wait_for_heading(browser: &Client, heading: &str) {
    for _ in 0..100 {
        if let Ok(h1) = browser.find(Locator::Css("h1")).await
            && h1.text().await.is_ok_and(|text| text == heading)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page's heading never became {heading:?}");
}

fn event(event_type: &str, data: Value) -> String {
    json!({"type": event_type, "version": "v1", "timestamp": "2026-11-23T12:00:00Z", "data": data})
        .to_string()
}

async fn scenario() {
    let gemini = GeminiStandIn::start().await;
    let url = gemini.url.clone();
    let app = spawn_app_with(move |f| {
        f.merge(("gemini_base_url", url))
            .merge(("admin_token", TOKEN))
    })
    .await;
    let base = app.admin_address.clone().unwrap();
    let (plain, hostile) = (unique_id(), unique_id());
    let dead: Vec<String> = (0..2).map(|_| unique_id()).collect();
    assert_eq!(
        app.post_signed(&plain, &event("batch.failed", json!({"id": "batches/b1"})))
            .await
            .status(),
        200
    );
    for (n, id) in dead.iter().enumerate() {
        let video = event(
            "video.generated",
            json!({"id": format!("video_{n}"), "output_file_uri": "https://elsewhere.example/v.mp4"}),
        );
        assert_eq!(app.post_signed(id, &video).await.status(), 200);
    }
    let markup = r#"{"type":"batch.failed","data":{"id":"<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"}}"#;
    assert_eq!(app.post_signed(&hostile, markup).await.status(), 200);
    app.run_worker_until_idle().await;
    assert_eq!(app.job_of(&plain).await.0, "completed");

    let driver = ChromeDriver::start();
    let browser = driver.browser().await;

    // Logging in: the console sends an unknown visitor to the form.
    browser.goto(&format!("{base}/")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/login")
    );
    browser
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click_button(&browser, "Log in").await;
    wait_for_heading(&browser, "Dashboard").await;
    assert!(
        text_of(&browser, "main")
            .await
            .contains("Dead letters by last error")
    );
    screenshot(&browser, "dashboard").await;

    // Finding the event by its id, and opening it.
    browser.goto(&format!("{base}/events")).await.unwrap();
    screenshot(&browser, "events").await;
    browser
        .find(Locator::Css("input[name=id_prefix]"))
        .await
        .unwrap()
        .send_keys(&plain)
        .await
        .unwrap();
    click_button(&browser, "Search").await;
    wait_for_page(&browser, "id_prefix=").await;
    let rows = browser
        .find_all(Locator::Css("table.list tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the search finds the one event");
    browser
        .find(Locator::LinkText(&plain))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_heading(&browser, &format!("Event {plain}")).await;
    assert!(text_of(&browser, "main").await.contains("completed"));
    screenshot(&browser, "event").await;

    // Replaying it: its job is queued again, and runs again.
    click_button(&browser, "Replay").await;
    wait_for_page(&browser, "notice=").await;
    assert!(text_of(&browser, ".notice").await.starts_with("Replayed"));
    assert_eq!(app.job_of(&plain).await.0, "available");
    assert_eq!(app.run_worker_until_idle().await, 1);
    browser.refresh().await.unwrap();
    assert_eq!(app.job_of(&plain).await.0, "completed");
    assert!(text_of(&browser, "main").await.contains("completed"));

    // Bulk retry of the dead letters: a count first, then the retry.
    browser
        .goto(&format!("{base}/jobs?state=discarded"))
        .await
        .unwrap();
    assert_eq!(
        browser
            .find_all(Locator::Css("table.list tbody tr"))
            .await
            .unwrap()
            .len(),
        2
    );
    screenshot(&browser, "dead-letters").await;
    click_button(&browser, "Retry the dead letters shown…").await;
    wait_for_heading(&browser, "Retry dead letters").await;
    assert_eq!(
        text_of(&browser, "p.big").await,
        "2 dead-lettered job(s) match."
    );
    assert_eq!(
        app.job_of(&dead[0]).await.0,
        "discarded",
        "counting changed nothing"
    );
    click_button(&browser, "Retry 2 job(s)").await;
    wait_for_page(&browser, "notice=").await;
    assert_eq!(
        text_of(&browser, ".notice").await,
        "2 dead-lettered job(s) re-queued."
    );
    for id in &dead {
        assert_eq!(app.job_of(id).await.0, "available");
    }

    // A body with markup: shown as text, nothing of it runs.
    browser
        .goto(&format!("{base}/events/{hostile}"))
        .await
        .unwrap();
    let shown = text_of(&browser, "pre.body").await;
    assert!(shown.contains("<script>window.pwned=1</script>"), "{shown}");
    let pwned = browser
        .execute(
            "return [window.pwned === undefined, document.scripts.length, document.images.length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(pwned, json!([true, 0, 0]));

    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(gemhook_browser_tests),
    ignore = "needs Chromium: apt-get install chromium chromium-driver"
)]
async fn console_in_a_browser_on_sqlite() {
    BACKEND.scope(Backend::Sqlite, scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(all(gemhook_browser_tests, gemhook_postgres_tests)),
    ignore = "needs Chromium and Postgres"
)]
async fn console_in_a_browser_on_postgres() {
    crate::require_postgres!();
    BACKEND.scope(Backend::Postgres, scenario()).await;
}
