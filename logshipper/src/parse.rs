//! Bytes of a file into events: lines, then CRI / Docker json-file / raw
//! records, partial lines joined, then optional multiline grouping.
//!
//! Every event records the offset reading may resume from once it is
//! delivered; while a partial line or a multiline group is pending that is
//! the pending text's start, so a restart re-reads it whole.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Deserialize;

use crate::config::{Format, InputConfig};
use crate::event::{Chunk, Stream};
use crate::time::{now_nanos, parse_rfc3339};

/// Why an input's parser could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The multiline start pattern is not a valid regular expression.
    #[error("multiline start pattern: {0}")]
    Pattern(#[from] regex::Error),
}

/// Stream slots for pending text: stdout, stderr, and lines without a stream.
const SLOTS: usize = 3;

fn slot(stream: Option<Stream>) -> usize {
    match stream {
        Some(Stream::Stdout) => 0,
        Some(Stream::Stderr) => 1,
        None => 2,
    }
}

/// Text waiting for more lines: a partial CRI/Docker line or a multiline group.
#[derive(Debug, Default)]
struct Pending {
    text: String,
    active: bool,
    /// File offset of the first line.
    start: u64,
    /// File offset just past the last line.
    end: u64,
    timestamp: i64,
    lines: usize,
    updated: Option<Instant>,
}

impl Pending {
    fn begin(&mut self, text: &str, timestamp: i64, start: u64, end: u64) {
        self.text.clear();
        self.text.push_str(text);
        self.active = true;
        self.start = start;
        self.end = end;
        self.timestamp = timestamp;
        self.lines = 1;
    }
}

/// The compiled multiline rule.
#[derive(Debug, Clone)]
struct Multiline {
    start: Regex,
    max_lines: usize,
    timeout: Duration,
}

/// One parsed record before multiline grouping.
struct Record<'a> {
    text: Cow<'a, str>,
    timestamp: i64,
    stream: Option<Stream>,
    start: u64,
    end: u64,
}

/// Turns one file's bytes into events; keeps the state that spans reads.
#[derive(Debug)]
pub struct Parser {
    format: Format,
    max_event: usize,
    multiline: Option<Multiline>,
    carry: Vec<u8>,
    carry_start: u64,
    /// Set while the rest of an oversized line is being passed on in pieces.
    continuing: Option<(i64, Option<Stream>)>,
    partials: [Pending; SLOTS],
    groups: [Pending; SLOTS],
    malformed: u64,
}

impl Parser {
    /// A parser for `input`'s format and rules.
    pub fn new(input: &InputConfig) -> Result<Self, ParseError> {
        let multiline = match &input.multiline {
            Some(rule) => Some(Multiline {
                start: Regex::new(&rule.start)?,
                max_lines: rule.max_lines,
                timeout: rule.timeout.get(),
            }),
            None => None,
        };
        Ok(Self {
            format: input.format,
            max_event: usize::try_from(input.max_event_size.bytes()).unwrap_or(usize::MAX),
            multiline,
            carry: Vec::new(),
            carry_start: 0,
            continuing: None,
            partials: Default::default(),
            groups: Default::default(),
            malformed: 0,
        })
    }

    /// A fresh parser with the same rules, for a file that starts over.
    pub fn fresh(&self) -> Self {
        Self {
            format: self.format,
            max_event: self.max_event,
            multiline: self.multiline.clone(),
            carry: Vec::new(),
            carry_start: 0,
            continuing: None,
            partials: Default::default(),
            groups: Default::default(),
            malformed: 0,
        }
    }

    /// Lines that did not parse in the file's format since the last call;
    /// they were passed on whole as events without a stream.
    pub fn take_malformed(&mut self) -> u64 {
        std::mem::take(&mut self.malformed)
    }

    /// Parses `data`, read at file offset `offset`, appending whole events to `out`.
    pub fn feed(&mut self, data: &[u8], offset: u64, out: &mut Chunk) {
        let mut pos = 0;
        if !self.carry.is_empty() || self.continuing.is_some() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    if self.carry.is_empty() {
                        self.carry_start = offset;
                    }
                    self.carry.extend_from_slice(&data[..i]);
                    let line = std::mem::take(&mut self.carry);
                    self.line(&line, self.carry_start, offset + i as u64 + 1, out);
                    self.carry = line;
                    self.carry.clear();
                    pos = i + 1;
                }
                None => {
                    if self.carry.is_empty() {
                        self.carry_start = offset;
                    }
                    self.carry.extend_from_slice(data);
                    self.split_oversized(out);
                    return;
                }
            }
        }
        let base = pos;
        for i in memchr::memchr_iter(b'\n', &data[base..]) {
            let end = base + i;
            self.line(
                &data[pos..end],
                offset + pos as u64,
                offset + end as u64 + 1,
                out,
            );
            pos = end + 1;
        }
        if pos < data.len() {
            self.carry_start = offset + pos as u64;
            self.carry.extend_from_slice(&data[pos..]);
            self.split_oversized(out);
        }
    }

    /// Passes on everything pending, for a file that will not grow again.
    pub fn finish(&mut self, out: &mut Chunk) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            let end = self.carry_start + line.len() as u64;
            self.line(&line, self.carry_start, end, out);
        }
        self.continuing = None;
        for s in 0..SLOTS {
            self.flush_partial(s, out);
        }
        for s in 0..SLOTS {
            self.flush_group(s, out);
        }
    }

    /// Passes on multiline groups that waited longer than the rule's timeout.
    pub fn flush_idle(&mut self, now: Instant, out: &mut Chunk) {
        let Some(timeout) = self.multiline.as_ref().map(|m| m.timeout) else {
            return;
        };
        for s in 0..SLOTS {
            let group = &self.groups[s];
            if group.active
                && group
                    .updated
                    .is_some_and(|t| now.duration_since(t) >= timeout)
            {
                self.flush_group(s, out);
            }
        }
    }

    /// Whether text is held back waiting for more lines.
    pub fn has_pending(&self) -> bool {
        !self.carry.is_empty()
            || self.partials.iter().any(|p| p.active)
            || self.groups.iter().any(|g| g.active)
    }

    /// A line longer than the largest event is passed on in pieces, so
    /// memory stays bounded whatever a file contains.
    fn split_oversized(&mut self, out: &mut Chunk) {
        while self.carry.len() >= self.max_event {
            let mut cut = self.max_event;
            // Cutting inside a UTF-8 sequence would garble the character.
            while cut > 0 && (self.carry[cut] & 0xc0) == 0x80 {
                cut -= 1;
            }
            if cut == 0 {
                cut = self.max_event;
            }
            let (timestamp, stream, body) = match self.continuing {
                Some((timestamp, stream)) => (timestamp, stream, &self.carry[..cut]),
                None => match self.format {
                    Format::Cri => match parse_cri(&self.carry[..cut]) {
                        Some((timestamp, stream, _, content)) => (timestamp, Some(stream), content),
                        None => (now_nanos(), None, &self.carry[..cut]),
                    },
                    Format::Raw | Format::DockerJson => (now_nanos(), None, &self.carry[..cut]),
                },
            };
            let end = self.carry_start + cut as u64;
            let text = utf8(body).into_owned();
            self.continuing = Some((timestamp, stream));
            self.emit(&text, timestamp, stream, end, out);
            self.carry.drain(..cut);
            self.carry_start = end;
        }
    }

    fn line(&mut self, line: &[u8], start: u64, end: u64, out: &mut Chunk) {
        if let Some((timestamp, stream)) = self.continuing.take() {
            self.record(
                Record {
                    text: utf8(line),
                    timestamp,
                    stream,
                    start,
                    end,
                },
                out,
            );
            return;
        }
        match self.format {
            Format::Raw => {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                self.record(
                    Record {
                        text: utf8(line),
                        timestamp: now_nanos(),
                        stream: None,
                        start,
                        end,
                    },
                    out,
                );
            }
            Format::Cri => match parse_cri(line) {
                Some((timestamp, stream, partial, content)) => {
                    let record = Record {
                        text: utf8(content),
                        timestamp,
                        stream: Some(stream),
                        start,
                        end,
                    };
                    self.piece(record, partial, out);
                }
                None => self.malformed(line, start, end, out),
            },
            Format::DockerJson => match serde_json::from_slice::<DockerLine<'_>>(line) {
                Ok(docker) => {
                    let stream = match docker.stream.as_deref() {
                        Some("stderr") => Stream::Stderr,
                        _ => Stream::Stdout,
                    };
                    let timestamp = docker
                        .time
                        .as_deref()
                        .and_then(|t| parse_rfc3339(t.as_bytes()))
                        .unwrap_or_else(now_nanos);
                    // Docker splits long lines at 16KiB; only the last piece ends in a newline.
                    let (text, partial) = match docker.log {
                        Cow::Borrowed(s) => match s.strip_suffix('\n') {
                            Some(s) => (Cow::Borrowed(s), false),
                            None => (Cow::Borrowed(s), true),
                        },
                        Cow::Owned(mut s) => {
                            let partial = !s.ends_with('\n');
                            if !partial {
                                s.pop();
                            }
                            (Cow::Owned(s), partial)
                        }
                    };
                    let record = Record {
                        text,
                        timestamp,
                        stream: Some(stream),
                        start,
                        end,
                    };
                    self.piece(record, partial, out);
                }
                Err(_) => self.malformed(line, start, end, out),
            },
        }
    }

    fn malformed(&mut self, line: &[u8], start: u64, end: u64, out: &mut Chunk) {
        self.malformed += 1;
        self.record(
            Record {
                text: utf8(line),
                timestamp: now_nanos(),
                stream: None,
                start,
                end,
            },
            out,
        );
    }

    /// One line of a format that splits long lines: partial pieces wait for the last.
    fn piece(&mut self, record: Record<'_>, partial: bool, out: &mut Chunk) {
        let s = slot(record.stream);
        let Record {
            text,
            timestamp,
            stream,
            start,
            end,
        } = record;
        if partial {
            let pending = &mut self.partials[s];
            if pending.active {
                pending.text.push_str(&text);
                pending.end = end;
            } else {
                pending.begin(&text, timestamp, start, end);
            }
            if pending.text.len() >= self.max_event {
                self.flush_partial(s, out);
            }
            return;
        }
        let pending = &mut self.partials[s];
        if pending.active {
            pending.active = false;
            let mut joined = std::mem::take(&mut pending.text);
            joined.push_str(&text);
            let (timestamp, start) = (pending.timestamp, pending.start);
            self.record(
                Record {
                    text: Cow::Borrowed(&joined),
                    timestamp,
                    stream,
                    start,
                    end,
                },
                out,
            );
            joined.clear();
            self.partials[s].text = joined;
        } else {
            self.record(
                Record {
                    text,
                    timestamp,
                    stream,
                    start,
                    end,
                },
                out,
            );
        }
    }

    fn flush_partial(&mut self, s: usize, out: &mut Chunk) {
        let pending = &mut self.partials[s];
        if !pending.active {
            return;
        }
        pending.active = false;
        let text = std::mem::take(&mut pending.text);
        let (timestamp, start, end) = (pending.timestamp, pending.start, pending.end);
        let stream = [Some(Stream::Stdout), Some(Stream::Stderr), None][s];
        self.record(
            Record {
                text: Cow::Borrowed(&text),
                timestamp,
                stream,
                start,
                end,
            },
            out,
        );
        self.partials[s].text = text;
        self.partials[s].text.clear();
    }

    /// A whole record: grouped by the multiline rule if there is one.
    fn record(&mut self, record: Record<'_>, out: &mut Chunk) {
        let Some(rule) = &self.multiline else {
            self.emit(
                &record.text,
                record.timestamp,
                record.stream,
                record.end,
                out,
            );
            return;
        };
        let s = slot(record.stream);
        let starts = rule.start.is_match(&record.text);
        let max_lines = rule.max_lines;
        let group = &self.groups[s];
        let fits =
            group.lines < max_lines && group.text.len() + 1 + record.text.len() <= self.max_event;
        if group.active && !starts && fits {
            let group = &mut self.groups[s];
            group.text.push('\n');
            group.text.push_str(&record.text);
            group.end = record.end;
            group.lines += 1;
            group.updated = Some(Instant::now());
            if group.lines >= max_lines {
                self.flush_group(s, out);
            }
            return;
        }
        self.flush_group(s, out);
        let group = &mut self.groups[s];
        group.begin(&record.text, record.timestamp, record.start, record.end);
        group.updated = Some(Instant::now());
    }

    fn flush_group(&mut self, s: usize, out: &mut Chunk) {
        let group = &mut self.groups[s];
        if !group.active {
            return;
        }
        group.active = false;
        let text = std::mem::take(&mut group.text);
        let (timestamp, end) = (group.timestamp, group.end);
        let stream = [Some(Stream::Stdout), Some(Stream::Stderr), None][s];
        self.emit(&text, timestamp, stream, end, out);
        self.groups[s].text = text;
        self.groups[s].text.clear();
    }

    fn emit(&self, text: &str, timestamp: i64, stream: Option<Stream>, end: u64, out: &mut Chunk) {
        let floor = self
            .partials
            .iter()
            .chain(&self.groups)
            .filter(|p| p.active)
            .map(|p| p.start)
            .min()
            .unwrap_or(u64::MAX);
        out.push(text, timestamp, stream, end.min(floor));
    }
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
}

/// Splits a CRI line `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <text>`
/// into its timestamp, stream, whether it is partial, and text.
pub fn parse_cri(line: &[u8]) -> Option<(i64, Stream, bool, &[u8])> {
    let ts_end = memchr::memchr(b' ', line)?;
    let timestamp = parse_rfc3339(&line[..ts_end])?;
    let rest = &line[ts_end + 1..];
    let stream = match rest.get(..7)? {
        b"stdout " => Stream::Stdout,
        b"stderr " => Stream::Stderr,
        _ => return None,
    };
    let rest = &rest[7..];
    let (tags, content) = match memchr::memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let partial = match tags.split(|&b| b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some((timestamp, stream, partial, content))
}

fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    // The validator's word-at-a-time path first; the lossy one, a byte at a
    // time, only for lines that are not UTF-8.
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileField, MultilineConfig};
    use crate::event::{FileId, Source};
    use orca_core::config::ByteSize;
    use std::sync::Arc;

    fn input(format: Format) -> InputConfig {
        InputConfig {
            name: "t".into(),
            paths: vec!["/x".into()],
            format,
            ..InputConfig::default()
        }
    }

    fn chunk() -> Chunk {
        Chunk::new(
            FileId(1),
            Arc::new(Source::new("t".into(), "/x".into(), FileField::Auto)),
        )
    }

    /// (text, stream, commit) of every event.
    fn events(out: &Chunk) -> Vec<(String, Option<Stream>, u64)> {
        out.events
            .iter()
            .map(|e| (out.line(e).to_string(), e.stream, e.commit))
            .collect()
    }

    fn feed_all(parser: &mut Parser, data: &[u8], step: usize) -> Chunk {
        let mut out = chunk();
        for (i, piece) in data.chunks(step).enumerate() {
            parser.feed(piece, (i * step) as u64, &mut out);
        }
        out
    }

    #[test]
    fn cri_lines_and_partials_joined_across_reads() {
        let data = b"2024-01-01T00:00:00.000000001Z stdout F hello\n\
2024-01-01T00:00:01Z stdout P part one, \n\
2024-01-01T00:00:02Z stderr F err line\n\
2024-01-01T00:00:03Z stdout P part two, \n\
2024-01-01T00:00:04Z stdout F end\n\
2024-01-01T00:00:05Z stdout F \n";
        for step in [1, 7, 64, data.len()] {
            let mut parser = Parser::new(&input(Format::Cri)).expect("parser");
            let out = feed_all(&mut parser, data, step);
            let first_p = 46;
            assert_eq!(
                events(&out),
                [
                    ("hello".into(), Some(Stream::Stdout), 46),
                    ("err line".into(), Some(Stream::Stderr), first_p),
                    ("part one, part two, end".into(), Some(Stream::Stdout), 201),
                    ("".into(), Some(Stream::Stdout), data.len() as u64),
                ],
                "step {step}"
            );
            assert_eq!(out.events[0].timestamp, 1_704_067_200_000_000_001);
            assert_eq!(
                out.events[2].timestamp, 1_704_067_201_000_000_000,
                "first piece's time"
            );
            assert!(!parser.has_pending());
        }
    }

    #[test]
    fn cri_malformed_lines_pass_through() {
        let mut parser = Parser::new(&input(Format::Cri)).expect("parser");
        let out = feed_all(
            &mut parser,
            b"not a cri line\n2024-01-01T00:00:00Z stdout X y\n",
            4096,
        );
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.line(&out.events[0]), "not a cri line");
        assert_eq!(out.events[0].stream, None);
        assert_eq!(parser.take_malformed(), 2);
    }

    #[test]
    fn parse_cri_fields() {
        assert_eq!(
            parse_cri(b"2024-01-01T00:00:00Z stderr P:x some text"),
            Some((
                1_704_067_200_000_000_000,
                Stream::Stderr,
                true,
                &b"some text"[..]
            ))
        );
        assert_eq!(
            parse_cri(b"2024-01-01T00:00:00Z stdout F"),
            Some((1_704_067_200_000_000_000, Stream::Stdout, false, &b""[..]))
        );
        assert_eq!(parse_cri(b"2024-01-01T00:00:00Z stdin F x"), None);
    }

    #[test]
    fn oversized_partials_and_lines_are_split_not_dropped() {
        let mut config = input(Format::Cri);
        config.max_event_size = ByteSize::kib(1);
        let mut parser = Parser::new(&config).expect("parser");
        let piece = "a".repeat(600);
        let mut data = String::new();
        for _ in 0..3 {
            data.push_str(&format!("2024-01-01T00:00:00Z stdout P {piece}\n"));
        }
        data.push_str("2024-01-01T00:00:00Z stdout F end\n");
        let out = feed_all(&mut parser, data.as_bytes(), 100);
        let texts: Vec<String> = events(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(texts.concat(), format!("{piece}{piece}{piece}end"));
        assert!(texts.iter().all(|t| t.len() <= 1024 + 600), "{texts:?}");

        let mut raw = Parser::new(&{
            let mut c = input(Format::Raw);
            c.max_event_size = ByteSize::kib(1);
            c
        })
        .expect("parser");
        let long = "b".repeat(2500);
        let out = feed_all(&mut raw, format!("{long}\nshort\n").as_bytes(), 300);
        let texts: Vec<String> = events(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert_eq!(texts[..3].concat(), long);
        assert_eq!(texts[3], "short");
        let commits: Vec<u64> = out.events.iter().map(|e| e.commit).collect();
        assert!(commits.windows(2).all(|w| w[0] <= w[1]), "{commits:?}");
        assert_eq!(commits[3], 2507);
    }

    #[test]
    fn raw_lines_strip_cr_and_finish_flushes_the_tail() {
        let mut parser = Parser::new(&input(Format::Raw)).expect("parser");
        let mut out = feed_all(&mut parser, b"one\r\ntwo\nunterminated", 4096);
        assert!(parser.has_pending());
        parser.finish(&mut out);
        let texts: Vec<(String, u64)> = events(&out).into_iter().map(|e| (e.0, e.2)).collect();
        assert_eq!(
            texts,
            [
                ("one".into(), 5),
                ("two".into(), 9),
                ("unterminated".into(), 21)
            ]
        );
    }

    #[test]
    fn docker_json_lines_and_split_logs() {
        let data = concat!(
            r#"{"log":"hello \"world\"\n","stream":"stdout","time":"2024-01-01T00:00:00.5Z"}"#,
            "\n",
            r#"{"log":"first half ","stream":"stderr","time":"2024-01-01T00:00:01Z"}"#,
            "\n",
            r#"{"log":"second half\n","stream":"stderr","time":"2024-01-01T00:00:02Z"}"#,
            "\n",
            "garbage\n"
        );
        let mut parser = Parser::new(&input(Format::DockerJson)).expect("parser");
        let out = feed_all(&mut parser, data.as_bytes(), 13);
        let got: Vec<(String, Option<Stream>)> =
            events(&out).into_iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            got,
            [
                ("hello \"world\"".into(), Some(Stream::Stdout)),
                ("first half second half".into(), Some(Stream::Stderr)),
                ("garbage".into(), None),
            ]
        );
        assert_eq!(out.events[0].timestamp, 1_704_067_200_500_000_000);
        assert_eq!(out.events[1].timestamp, 1_704_067_201_000_000_000);
    }

    #[test]
    fn multiline_groups_with_pending_commit_floor() {
        let mut config = input(Format::Raw);
        config.multiline = Some(MultilineConfig {
            start: r"^\S".into(),
            max_lines: 3,
            ..MultilineConfig::default()
        });
        let mut parser = Parser::new(&config).expect("parser");
        let data = b"Exception: boom\n  at a\n  at b\nnext\n  cont\n  more\n  overflow\nlast\n";
        let out = feed_all(&mut parser, data, 5);
        let got: Vec<(String, u64)> = events(&out).into_iter().map(|e| (e.0, e.2)).collect();
        assert_eq!(
            got,
            [
                ("Exception: boom\n  at a\n  at b".into(), 30),
                ("next\n  cont\n  more".into(), 49),
                ("  overflow".into(), 60),
            ]
        );
        assert!(parser.has_pending(), "`last` waits for a continuation");
        let mut tail = chunk();
        parser.flush_idle(Instant::now() + Duration::from_secs(5), &mut tail);
        assert_eq!(events(&tail), [("last".into(), None, data.len() as u64)]);
    }
}
