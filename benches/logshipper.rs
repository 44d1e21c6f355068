//! The log shipper's hot paths: the CRI parser and the output encoders.
//!
//! Run: `cargo bench -p orca-benches --bench logshipper`. The end-to-end
//! comparison with a raw copy is `benches/load/logshipper_vs_copy.sh`.
//!
//! - `parse/cri_1MiB`: 1 MiB of CRI lines (~110 bytes each, one in ten
//!   split into a `P` and an `F` piece) through `Parser::feed`, as a reader
//!   does with each read; throughput in input bytes.
//! - `encode/*`: one batch of 1000 pod-log events (~75-byte lines) into
//!   each output's payload; throughput in events.
//!
//! Latest results, 2026-11-30, this machine (2 cores, nothing else
//! running during the bench), after the JSON escape through a stack
//! buffer with eight-byte stores and the one-pass fraction parse and
//! two-digit format: criterion's estimate of the time per iteration and
//! the resulting throughput.
//!
//! | bench                     | time per iteration          | throughput          |
//! |---------------------------|-----------------------------|---------------------|
//! | parse/cri_1MiB            | 1.43 ms [1.37 ms, 1.49 ms]  | 697 MiB/s           |
//! | encode/json_lines         | 133 µs [129 µs, 138 µs]     | 7.5 M events/s      |
//! | encode/elasticsearch_bulk | 150 µs [146 µs, 153 µs]     | 6.7 M events/s      |
//! | encode/loki               | 256 µs [245 µs, 267 µs]     | 3.9 M events/s      |
//! | encode/forward            | 189 µs [186 µs, 192 µs]     | 5.3 M events/s      |
//! | encode/syslog             | 926 µs [880 µs, 968 µs]     | 1.1 M events/s      |
//!
//! The run of 2026-11-29 gave 579 MiB/s for the parser and 6.5 M events/s
//! for JSON lines. A run earlier on 2026-11-30, with the
//! machine busy, gave 422 MiB/s and 6.9 M events/s, and forward (whose
//! code did not change) moves by ±15% between runs: compare within one
//! run before concluding. Measured by thread CPU time on the load bench's
//! lines, which share their second and so hit the timestamp caches, the
//! parser went from ~100 to ~80 ns per line and JSON lines from ~125 to
//! ~100 ns per event.
//!
//! Absolute numbers are noisy on this shared machine; compare within one run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orca_logshipper::config::{FileField, Format, InputConfig};
use orca_logshipper::event::{Chunk, FileId, Source, Stream};
use orca_logshipper::parse::Parser;
use orca_logshipper::sinks::Batch;
use orca_logshipper::sinks::forward::forward_message;
use orca_logshipper::sinks::json::{elasticsearch_bulk, json_lines, loki};
use orca_logshipper::sinks::syslog::SyslogFormat;

const POD_LOG: &str =
    "/var/log/pods/shop_cart-7d4b9c-x2x9z_0f8e2a64-1c2d-4e5f-8a9b-0c1d2e3f4a5b/cart/0.log";

fn text(seq: usize) -> String {
    format!(
        "10.244.1.{} - - \"GET /api/v1/cart/{seq} HTTP/1.1\" 200 512 \"-\" \"curl/8.5\"",
        seq % 250
    )
}

fn cri_input(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 256);
    let mut seq = 0;
    while out.len() < bytes {
        let ts = format!(
            "2026-11-25T10:{:02}:{:02}.{:09}Z",
            seq / 60 % 60,
            seq % 60,
            seq
        );
        let line = text(seq);
        if seq % 10 == 0 {
            let (a, b) = line.split_at(30);
            out.extend_from_slice(format!("{ts} stdout P {a}\n{ts} stdout F {b}\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{ts} stdout F {line}\n").as_bytes());
        }
        seq += 1;
    }
    out
}

fn parse(c: &mut Criterion) {
    let data = cri_input(1 << 20);
    let input = InputConfig {
        name: "pods".into(),
        paths: vec!["/var/log/pods/*/*/*.log".into()],
        format: Format::Cri,
        ..InputConfig::default()
    };
    let source = Arc::new(Source::new("pods".into(), POD_LOG.into(), FileField::Auto));
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("cri_1MiB", |b| {
        b.iter(|| {
            let mut parser = Parser::new(&input).expect("parser");
            let mut chunk = Chunk::new(FileId(1), Arc::clone(&source));
            // Reads come in 128 KiB pieces, cutting lines anywhere.
            for (i, piece) in data.chunks(128 << 10).enumerate() {
                parser.feed(piece, (i * (128 << 10)) as u64, &mut chunk);
            }
            black_box(chunk.events.len())
        });
    });
    group.finish();
}

fn batch() -> Batch {
    let source = Arc::new(Source::new("pods".into(), POD_LOG.into(), FileField::Auto));
    let mut chunk = Chunk::new(FileId(1), source);
    for seq in 0..1000 {
        let stream = if seq % 5 == 0 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        chunk.push(
            &text(seq),
            1_795_600_000_000_000_000 + seq as i64,
            Some(stream),
            seq as u64,
        );
    }
    Batch::of([Arc::new(chunk)])
}

fn encode(c: &mut Criterion) {
    let batch = batch();
    let syslog = SyslogFormat::new(1, "node-1".into());
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(batch.len() as u64));
    let mut out = Vec::new();
    group.bench_function("json_lines", |b| {
        b.iter(|| {
            out.clear();
            json_lines(&batch, &mut out);
            black_box(out.len())
        });
    });
    group.bench_function("elasticsearch_bulk", |b| {
        b.iter(|| {
            out.clear();
            elasticsearch_bulk(&batch, "orca-logs", &mut out);
            black_box(out.len())
        });
    });
    group.bench_function("loki", |b| {
        b.iter(|| {
            out.clear();
            loki(&batch, &mut out);
            black_box(out.len())
        });
    });
    group.bench_function("forward", |b| {
        b.iter(|| {
            out.clear();
            forward_message(
                &batch,
                "kube.cart",
                Some("AAAAAAAAAAAAAAAAAAAAAA=="),
                &mut out,
            );
            black_box(out.len())
        });
    });
    group.bench_function("syslog", |b| {
        b.iter(|| {
            out.clear();
            syslog.encode(&batch, &mut out);
            black_box(out.len())
        });
    });
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
