//! The node agents' fault-injection suite: every fault of issue 22, each
//! injected for real, and where its probe lives.
//!
//! The probes stay beside the process they drive, because Cargo gives a
//! package's own tests alone the path of its binaries
//! (`CARGO_BIN_EXE_orca`, `CARGO_BIN_EXE_orca-logshipper`); this file is
//! their index, and its test fails when a probe named here is renamed or
//! removed, so the list cannot drift from the tests that keep the faults
//! fixed. Run one with `cargo test -p PACKAGE --test TARGET NAME`.
//!
//! Log shipper (`orca-logshipper`, target `shipper`; a real process on real
//! files, delivering to real sockets on loopback):
//! - a receiver that stops reading, its memory bound: `logshipper/tests/shipper/stalled.rs` `a_receiver_that_stops_reading_holds_memory_to_the_bound_and_loses_nothing`
//! - a sink that is down then answering 503, its memory bound: `logshipper/tests/shipper/sink_down.rs` `a_sink_down_loses_nothing_and_memory_stays_bounded`
//! - an HTTP output answering 400 while a file output beside it gets every line: `logshipper/tests/shipper/failing_output.rs` `batches_rejected_for_good_are_dead_lettered_and_the_other_output_gets_everything`
//! - an output failing past its retry limit: `logshipper/tests/shipper/failing_output.rs` `a_batch_failing_past_max_attempts_is_dropped_and_counted`
//! - an output down, held to its own queue, named by /healthz: `logshipper/tests/shipper/failing_output.rs` `an_output_that_is_down_falls_behind_only_as_far_as_its_queue`
//! - a file chmod'ed unreadable: `logshipper/tests/shipper/unreadable.rs` `an_unreadable_file_is_reported_retried_and_shipped_once_readable`
//! - a checkpointed file unreadable at restart: `logshipper/tests/shipper/unreadable.rs` `a_checkpointed_file_unreadable_at_restart_keeps_its_checkpoint`
//! - a corrupt checkpoint: `logshipper/tests/shipper/corrupt.rs` `a_corrupt_checkpoint_is_reported_and_files_are_read_again`
//! - corrupt checkpoints kept, bounded in number: `logshipper/src/checkpoint.rs` `only_the_newest_damaged_files_are_kept`
//! - a file deleted mid-read: `logshipper/tests/shipper/deleted.rs` `a_file_deleted_mid_read_is_read_to_its_end_then_closed`
//! - a tcp write timing out half-way (no fragment): `logshipper/src/sinks/tcp.rs` `a_write_that_times_out_leaves_no_fragment`
//! - SIGKILL and restart: `logshipper/tests/shipper/kill.rs` `every_line_survives_sigkill_and_restart`
//! - rotations, truncations, deletes and SIGKILLs at random: `logshipper/tests/shipper/model.rs` `random_operations_against_the_model`
//!
//! Node proxy (`orca-cli`, target `node_proxy`; `orca node-proxy` in
//! network namespaces the test creates, against a real etcd):
//! - etcd killed under a running proxy (/healthz 503 after --unhealthy-after, rules staying, recovery): `cli/tests/node_proxy.rs` `an_etcd_outage_turns_healthz_503_while_the_rules_stay`
//! - etcd away when the proxy restarts: `cli/tests/node_proxy.rs` `with_etcd_away_a_restarted_proxy_keeps_the_table_then_catches_up`
//! - a NodePort Service from outside, and UDP: `cli/tests/node_proxy.rs` `node_port_from_outside_and_udp`
//! - a UDP flow whose endpoint leaves: `cli/tests/node_proxy.rs` `a_udp_client_follows_when_its_endpoint_leaves`
//! - a NodePort at 127.0.0.1, refused at once: `cli/tests/node_proxy.rs` `a_node_port_at_loopback_is_refused_at_once`
//! - the proxy killed and restarted under traffic: `cli/tests/node_proxy.rs` `restart_under_traffic_loses_no_connection_attempt_and_cleanup_removes_all`
//!
//! Watches (`orca-tests`, target `watch`; a real etcd killed and restarted):
//! - an etcd outage in the watch status every component reports: `tests/watch.rs` `a_watch_status_reports_an_etcd_outage_and_the_recovery`
//! - a watcher across an etcd restart: `tests/watch.rs` `a_watcher_survives_an_etcd_restart`

use std::path::Path;

/// Each `//! - ` line of this file's doc: the fault, the file, the test.
fn probes() -> Vec<(&'static str, &'static str, &'static str)> {
    include_str!("faults.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//! - "))
        .map(|entry| {
            let (fault, place) = entry
                .split_once(": `")
                .unwrap_or_else(|| panic!("no `file` `test` in {entry:?}"));
            let mut quoted = place.split('`').filter(|s| !s.trim().is_empty());
            match (quoted.next(), quoted.next(), quoted.next()) {
                (Some(file), Some(test), None) => (fault, file, test),
                _ => panic!("expected `file` `test` in {entry:?}"),
            }
        })
        .collect()
}

#[test]
fn every_probe_named_here_is_a_test_in_its_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let probes = probes();
    assert!(probes.len() >= 20, "the index lost entries: {probes:?}");
    for (fault, file, test) in probes {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{fault}: cannot read {file}: {e}"));
        let at = text
            .find(&format!("fn {test}("))
            .unwrap_or_else(|| panic!("{fault}: no fn {test} in {file}"));
        let before = text[..at].trim_end();
        let before = before.strip_suffix("async").unwrap_or(before).trim_end();
        assert!(
            before.ends_with("#[test]") || before.ends_with("#[tokio::test]"),
            "{fault}: fn {test} in {file} is not a test"
        );
    }
}
