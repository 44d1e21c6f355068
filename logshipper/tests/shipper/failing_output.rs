//! One output failing must not stop the others: a destination that answers
//! 400 to everything gets its batches dead-lettered, one that fails for a
//! while is given up on after `retry.max_attempts`, and one that is down
//! falls behind only as far as its own queue, with `/healthz` saying so.

use std::time::Duration;

use crate::common::{
    Delivered, Dirs, Shipper, Writer, cri, free_port, healthz, metric, wait_until,
};
use crate::http_server::{Mode, TestServer};

const LINES: u64 = 20_000;

fn outputs(dirs: &Dirs, server: &TestServer, http_extra: &str) -> String {
    format!(
        "  - name: out\n    type: file\n    path: {}\n    batch: {{max_events: 1000, max_bytes: 4MiB, max_wait: 50ms}}\n  - name: es\n    type: http\n    url: http://127.0.0.1:{}/_bulk\n    format: json_lines\n    batch: {{max_events: 1000, max_bytes: 1MiB, max_wait: 50ms}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n    timeout: 2s\n{http_extra}",
        dirs.out.display(),
        server.port,
    )
}

fn write_lines(dirs: &Dirs, from: u64, to: u64) {
    let mut writer = Writer::open(dirs.container("api", "api").join("0.log"));
    for seq in from..to {
        writer.write(&cri(seq, 0));
    }
}

fn counter(admin: u16, name: &str, output: &str) -> f64 {
    metric(
        admin,
        &format!("orca_logshipper_{name}_total{{output=\"{output}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn batches_rejected_for_good_are_dead_lettered_and_the_other_output_gets_everything() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    server.set(Mode::Rejecting);
    let admin = free_port();
    let config = dirs.config(admin, "8MiB", &outputs(&dirs, &server, ""));
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs, 0, LINES);

    wait_until(
        "the file output has every line",
        Duration::from_secs(120),
        || Delivered::from_file(&dirs.out).missing(LINES).is_empty(),
    );
    wait_until("every line dead-lettered", Duration::from_secs(120), || {
        counter(admin, "output_dead_lettered_events", "es") == LINES as f64
    });
    assert_eq!(counter(admin, "output_failed_events", "es"), LINES as f64);
    assert_eq!(counter(admin, "output_events", "es"), 0.0);
    assert_eq!(counter(admin, "output_events", "out"), LINES as f64);
    assert_eq!(
        counter(admin, "output_retries", "es"),
        0.0,
        "a 400 is not retried"
    );
    assert_eq!(healthz(admin).map(|(status, _)| status), Some(200));
    assert!(shipper.terminate().success());

    let letters = std::fs::read_to_string(dirs.checkpoints.join("dead-letter/es.jsonl"))
        .expect("the dead-letter file");
    let mut kept = Delivered::default();
    let mut events = 0;
    for line in letters.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
        assert_eq!(record["output"], "es");
        let reason = record["reason"].as_str().expect("reason");
        assert!(
            reason.contains("HTTP 400") && reason.contains("mapper_parsing_exception"),
            "{reason}"
        );
        events += record["events"].as_u64().expect("events");
        let payload = record["payload"].as_str().expect("payload as sent");
        let batch = Delivered::from_json_lines(payload.as_bytes());
        for (seq, count) in batch.counts {
            *kept.counts.entry(seq).or_default() += count;
        }
    }
    assert_eq!(events, LINES);
    assert!(
        kept.missing(LINES).is_empty(),
        "every line kept as it would have been sent"
    );
    assert_eq!(kept.duplicates(), 0);
}

#[test]
fn a_batch_failing_past_max_attempts_is_dropped_and_counted() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    server.set(Mode::Failing);
    let admin = free_port();
    let extra = "    on_failure: drop\n";
    let text = outputs(&dirs, &server, extra)
        .replace("max_backoff: 200ms", "max_backoff: 200ms, max_attempts: 2");
    let config = dirs.config(admin, "8MiB", &text);
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs, 0, LINES);
    wait_until(
        "the file output has every line",
        Duration::from_secs(120),
        || Delivered::from_file(&dirs.out).missing(LINES).is_empty(),
    );
    wait_until("every line dropped", Duration::from_secs(120), || {
        counter(admin, "output_dropped_events", "es") == LINES as f64
    });
    assert_eq!(counter(admin, "output_failed_events", "es"), LINES as f64);
    // One retry per batch: the second attempt is the last.
    let retries = counter(admin, "output_retries", "es");
    let attempts = server.failed() as f64;
    assert!(
        retries > 0.0 && (attempts - 2.0 * retries).abs() < 1.0,
        "{retries} retries, {attempts} attempts"
    );
    assert!(shipper.terminate().success());
    let log = std::fs::read_to_string(dirs.root.path().join("shipper.log")).expect("log");
    assert!(log.contains("batch given up and dropped"), "{log}");
    assert!(!dirs.checkpoints.join("dead-letter").exists());
}

#[test]
fn an_output_that_is_down_falls_behind_only_as_far_as_its_queue() {
    let dirs = Dirs::new();
    let server = TestServer::start();
    server.set(Mode::Down);
    let admin = free_port();
    let extra = "    buffer: {max_bytes: 1MiB, when_full: drop_newest}\n    unhealthy_after: 1s\n";
    let config = dirs.config(admin, "8MiB", &outputs(&dirs, &server, extra));
    let shipper = Shipper::start(&config, &dirs.root.path().join("shipper.log"));
    write_lines(&dirs, 0, LINES);

    wait_until(
        "the file output has every line",
        Duration::from_secs(120),
        || Delivered::from_file(&dirs.out).missing(LINES).is_empty(),
    );
    let dropped = counter(admin, "output_dropped_events", "es");
    assert!(dropped > 0.0 && dropped < LINES as f64, "{dropped} dropped");
    wait_until(
        "/healthz names the stuck output",
        Duration::from_secs(30),
        || healthz(admin).is_some_and(|(status, body)| status == 503 && body.contains("output es")),
    );
    assert_eq!(
        metric(admin, "orca_logshipper_output_retrying{output=\"es\"}"),
        Some(1.0)
    );
    wait_until("the age metric grows", Duration::from_secs(30), || {
        metric(
            admin,
            "orca_logshipper_output_oldest_unacknowledged_age_seconds{output=\"es\"}",
        )
        .is_some_and(|age| age >= 1.0)
    });

    server.set(Mode::Up);
    wait_until(
        "the queued lines reach the server",
        Duration::from_secs(120),
        || counter(admin, "output_events", "es") + dropped >= LINES as f64,
    );
    write_lines(&dirs, LINES, LINES + 1000);
    wait_until(
        "new lines reach the server",
        Duration::from_secs(60),
        || server.delivered(|d| (LINES..LINES + 1000).all(|s| d.counts.contains_key(&s))),
    );
    wait_until("healthy again", Duration::from_secs(30), || {
        healthz(admin).is_some_and(|(status, _)| status == 200)
    });
    let sent = server.delivered(|d| d.counts.len() as f64);
    assert_eq!(
        sent + dropped,
        (LINES + 1000) as f64,
        "every line sent or counted as dropped"
    );
    assert!(shipper.terminate().success());
}
