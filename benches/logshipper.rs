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
//! Latest results, 2026-12-04, this machine (2 cores, nothing else
//! running during the bench): criterion's estimate of the time per
//! iteration and the resulting throughput. Pod log events now leave out
//! their path by default (`file_field: auto`), so the JSON encoders write
//! about a third fewer bytes per event than in the runs before.
//!
//! | bench                     | time per iteration          | throughput          |
//! |---------------------------|-----------------------------|---------------------|
//! | parse/cri_1MiB            | 739 µs [731 µs, 748 µs]     | 1.32 GiB/s          |
//! | encode/json_lines         | 63.4 µs [63.3 µs, 63.6 µs]  | 15.8 M events/s     |
//! | encode/elasticsearch_bulk | 66.5 µs [66.1 µs, 67.1 µs]  | 15.0 M events/s     |
//! | encode/loki               | 123 µs [121 µs, 125 µs]     | 8.2 M events/s      |
//! | encode/forward            | 42.6 µs [40.6 µs, 44.7 µs]  | 23.5 M events/s     |
//! | encode/syslog             | 449 µs [432 µs, 470 µs]     | 2.2 M events/s      |
//!
//! Everything ran about twice as fast as on 2026-11-30 (parser 697 MiB/s,
//! JSON lines 7.5 M events/s, syslog 1.1 M), the parser too, whose code
//! did not change: the machine was quieter, and the shorter events' gain
//! is hidden in that factor.
//! Earlier runs moved by ±15% (forward) to ±40% (the parser, 422-697
//! MiB/s on 2026-11-30) between runs: compare within one run before
//! concluding. Measured by thread CPU time on the load bench's lines,
//! which share their second and so hit the timestamp caches, the parser
//! went from ~100 to ~80 ns per line and JSON lines from ~125 to ~100 ns
//! per event (2026-11-30).
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
