//! `tessera import FILE` and `tessera export`: identities in bulk, as JSON Lines or CSV, against
//! the configured database. Reading, concurrency, progress and the summary live here; the rules
//! (validation, provisioning, teams) in [`crate::service::import`].

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::admin::print_json;
use super::{fail, open_store};
use crate::config::Config;
use crate::error::ErrorCode;
use crate::service::import::{COLUMNS, Importer, Line, LineOutcome, Outcome, Record, export_page};
use crate::service::principals::PrincipalCache;
use crate::service::provisioning::Provisioner;
use crate::service::teams::Teams;
use crate::store::{Store, StoreError};
use crate::upstream::issuers::IssuerRegistry;

/// Lines handed to a worker at a time (one existence query per issuer and batch).
const BATCH: usize = 100;
/// How often a progress line is printed when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How many line numbers per reason the summary lists.
const LINES_PER_REASON: usize = 100;

/// The format of an import or export file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

impl Format {
    /// The format a file name's extension says: `.jsonl`, `.ndjson`, `.json` or `.csv`.
    pub fn of_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// Options of `tessera import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file: JSON Lines or CSV with the columns issuer, subject, email, email_verified, name,
    /// team and provider (only issuer and subject are required).
    pub file: PathBuf,
    /// The file's format; by default its extension says (.jsonl, .ndjson, .json or .csv).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Read and check every line, report what would happen, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How many lines are provisioned at once (default: database.max_connections).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: Option<u32>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `tessera export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The format; by default the output file's extension says, else JSON Lines.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Why an import could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CSV header is not usable; nothing was imported.
    #[error("the CSV header {0}")]
    Header(String),
    /// The database failed (after retries); lines imported so far stay imported.
    #[error("the import stopped")]
    Store(#[from] StoreError),
}

/// What an import did, printed at the end (`--json`: this, as JSON).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Whether nothing was written (`--dry-run`).
    pub dry_run: bool,
    /// Lines read (blank lines and the CSV header not counted).
    pub lines: u64,
    /// Users provisioned (or, in a dry run, that would be).
    pub created: u64,
    /// Identities that already had a user.
    pub existing: u64,
    /// Lines refused.
    pub refused: u64,
    /// Users who joined their line's team.
    pub joined: u64,
    /// Refused lines by reason, the most frequent first: the code, how many, and the first line
    /// numbers.
    pub refusals: Vec<Refusals>,
    /// Wall time.
    pub seconds: f64,
}

/// The refused lines of one reason.
#[derive(Debug, Clone, Serialize)]
pub struct Refusals {
    /// The error code.
    pub code: &'static str,
    /// How many lines.
    pub count: u64,
    /// The first line numbers, ascending.
    pub lines: Vec<u64>,
}

/// The running counts of an import.
#[derive(Debug, Default)]
struct Tally {
    lines: AtomicU64,
    created: AtomicU64,
    existing: AtomicU64,
    joined: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, Reason>>,
}

/// The refused lines of one reason as they come: how many, and the smallest numbers only (a
/// file refused whole is not held in memory line by line).
#[derive(Debug, Default)]
struct Reason {
    count: u64,
    /// At most [`LINES_PER_REASON`], the largest on top.
    smallest: std::collections::BinaryHeap<u64>,
}

impl Reason {
    fn note(&mut self, line: u64) {
        self.count += 1;
        if self.smallest.len() < LINES_PER_REASON {
            self.smallest.push(line);
        } else if self.smallest.peek().is_some_and(|&largest| line < largest) {
            self.smallest.pop();
            self.smallest.push(line);
        }
    }
}

impl Tally {
    fn add(&self, outcomes: &[LineOutcome]) {
        let mut refused = Vec::new();
        for outcome in outcomes {
            match outcome.outcome {
                Outcome::Created => self.created.fetch_add(1, Ordering::Relaxed),
                Outcome::Existing => self.existing.fetch_add(1, Ordering::Relaxed),
                Outcome::Refused(code) => {
                    refused.push((code, outcome.number));
                    0
                }
            };
            if outcome.joined {
                self.joined.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !refused.is_empty() {
            let mut by_code = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            for (code, number) in refused {
                by_code.entry(code.as_str()).or_default().note(number);
            }
        }
        self.lines.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
    }

    fn summary(&self, dry_run: bool, seconds: f64) -> Summary {
        let by_code = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut refusals: Vec<Refusals> = by_code
            .iter()
            .map(|(code, reason)| Refusals {
                code,
                count: reason.count,
                lines: reason.smallest.clone().into_sorted_vec(),
            })
            .collect();
        refusals.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(b.code)));
        Summary {
            dry_run,
            lines: self.lines.load(Ordering::Relaxed),
            created: self.created.load(Ordering::Relaxed),
            existing: self.existing.load(Ordering::Relaxed),
            refused: refusals.iter().map(|r| r.count).sum(),
            joined: self.joined.load(Ordering::Relaxed),
            refusals,
            seconds,
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar with rate and ETA when stderr is a terminal, else a line every few seconds.
    Auto,
    /// Nothing.
    Hidden,
}

/// Runs `tessera import`.
pub async fn import(config: &Config, args: ImportArgs) -> ExitCode {
    let Some(format) = args.format.or_else(|| Format::of_path(&args.file)) else {
        err!(
            "tessera: cannot tell the format of {} from its extension: pass --format jsonl or --format csv",
            args.file.display()
        );
        return ExitCode::from(2);
    };
    let store = match open_store(config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let importer = Arc::new(importer(config, store.clone(), args.dry_run));
    let concurrency = args.concurrency.unwrap_or(config.database.max_connections) as usize;
    let done = import_file(importer, &args.file, format, concurrency, ProgressMode::Auto).await;
    store.close().await;
    match done {
        Ok(summary) => {
            print_summary(&summary, &args.file, args.json);
            if summary.refused > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err((ImportError::Store(e), summary)) => {
            print_summary(&summary, &args.file, args.json);
            err!("tessera: {}", resume_hint(&summary));
            fail(&ImportError::Store(e))
        }
        // Read failures after some lines were imported: what was written is summed up, and
        // the exit code says the database holds some of the file (exit 2 means none of it).
        Err((e, summary)) if summary.lines > 0 => {
            print_summary(&summary, &args.file, args.json);
            err!("tessera: {e}");
            err!("tessera: {}", resume_hint(&summary));
            ExitCode::FAILURE
        }
        Err((e, _)) => {
            err!("tessera: {e}");
            ExitCode::from(2)
        }
    }
}

/// The import service on `store`, with the configured issuers.
pub fn importer(config: &Config, store: Arc<dyn Store>, dry_run: bool) -> Importer {
    // No key is fetched: the registry only answers which issuers are allowed.
    let issuers = Arc::new(IssuerRegistry::from_config(config));
    let (principals, _) = PrincipalCache::with_token_cache(&config.cache);
    let provisioner = Provisioner::new(store.clone(), issuers.clone(), principals.clone());
    let teams = Teams::new(store.clone(), issuers, principals);
    Importer::new(store, provisioner, teams, dry_run)
}

/// Imports a file with `concurrency` lines at once. On a database failure, returns it with the
/// summary of the batches done so far.
pub async fn import_file(
    importer: Arc<Importer>,
    path: &Path,
    format: Format,
    concurrency: usize,
    progress: ProgressMode,
) -> Result<Summary, (ImportError, Summary)> {
    let started = Instant::now();
    let dry_run = importer.dry_run();
    let empty = || Summary { dry_run, ..Summary::default() };
    // Opening a FIFO waits for its writer.
    let source = blocking(|| Source::open(path, format)).map_err(|e| (e, empty()))?;
    // The total of the progress display is counted beforehand, from a regular file only: a
    // pipe (`/dev/stdin`, `<(zcat …)`) can be read once, by the import itself.
    let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    let total = match progress {
        ProgressMode::Auto if regular => Some(blocking(|| count_lines(path, format)).map_err(|e| (e, empty()))?),
        ProgressMode::Auto | ProgressMode::Hidden => None,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<Line>>(concurrency.max(1) * 2);
    let reader = tokio::task::spawn_blocking(move || source.read_into(&sender));
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let tally = Arc::new(Tally::default());
    let reporter = (progress == ProgressMode::Auto).then(|| Reporter::start(total, tally.clone()));
    // Set by the first worker the database stops: the others finish the batch they hold (so
    // that what they wrote is counted) and take no other; the reader stops once nobody receives.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (receiver, importer, tally) = (receiver.clone(), importer.clone(), tally.clone());
        let stopping = stopping.clone();
        workers.spawn(async move {
            loop {
                let batch = receiver.lock().await.recv().await;
                let Some(batch) = batch else { return Ok(()) };
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(());
                }
                match importer.import(batch).await {
                    Ok(outcomes) => tally.add(&outcomes),
                    Err(stopped) => {
                        tally.add(&stopped.done);
                        stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Err(stopped.error);
                    }
                }
            }
        });
    }
    drop(receiver);
    let mut failure = None;
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(ImportError::Store(e));
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let read = reader.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    if let Some(reporter) = reporter {
        reporter.finish();
    }
    let summary = tally.summary(dry_run, started.elapsed().as_secs_f64());
    match (failure, read) {
        (Some(e), _) => Err((e, summary)),
        (None, Err(e)) => Err((e, summary)),
        (None, Ok(())) => Ok(summary),
    }
}

/// An open input file, positioned after the CSV header.
enum Source {
    Jsonl {
        path: String,
        reader: BufReader<File>,
    },
    Csv {
        path: String,
        reader: Box<csv::Reader<Breaks<File>>>,
        columns: [Option<usize>; COLUMNS.len()],
        width: usize,
        lines: LineCounter,
    },
}

impl Source {
    fn open(path: &Path, format: Format) -> Result<Self, ImportError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| ImportError::Read { path: name.clone(), source })?;
        match format {
            Format::Jsonl => Ok(Source::Jsonl { path: name, reader: BufReader::with_capacity(1 << 16, file) }),
            Format::Csv => {
                let seen = Arc::new(Mutex::new(VecDeque::new()));
                let file = Breaks { inner: file, offset: 0, seen: seen.clone(), last: None };
                let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
                let header = reader.byte_headers().map_err(|e| csv_error(&name, e))?.clone();
                let (columns, width) = header_columns(&header)?;
                Ok(Source::Csv {
                    path: name,
                    reader: Box::new(reader),
                    columns,
                    width,
                    lines: LineCounter { seen, newlines: 0 },
                })
            }
        }
    }

    /// Reads every line, sending them in batches, until the end or until nobody receives.
    fn read_into(self, sender: &tokio::sync::mpsc::Sender<Vec<Line>>) -> Result<(), ImportError> {
        let mut batch = Vec::with_capacity(BATCH);
        let send = |line: Line, batch: &mut Vec<Line>| {
            batch.push(line);
            if batch.len() < BATCH {
                return true;
            }
            sender.blocking_send(std::mem::replace(batch, Vec::with_capacity(BATCH))).is_ok()
        };
        match self {
            Source::Jsonl { path, mut reader } => {
                let mut buffer = Vec::new();
                let mut number = 0;
                loop {
                    buffer.clear();
                    let (read, too_long) = read_line(&mut reader, &mut buffer)
                        .map_err(|source| ImportError::Read { path: path.clone(), source })?;
                    if read == 0 {
                        break;
                    }
                    number += 1;
                    if too_long {
                        if !send(Line { number, record: Err(ErrorCode::FieldTooLong) }, &mut batch) {
                            return Ok(());
                        }
                        continue;
                    }
                    // A byte-order mark, as spreadsheet and Windows editors write, is not JSON.
                    let text =
                        if number == 1 { buffer.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buffer) } else { &buffer };
                    let text = text.trim_ascii();
                    if text.is_empty() {
                        continue;
                    }
                    if !send(Line { number, record: json_record(text) }, &mut batch) {
                        return Ok(());
                    }
                }
            }
            Source::Csv { path, mut reader, columns, width, mut lines } => {
                let mut row = csv::ByteRecord::new();
                // Each record is sent once the next is read: the last one may be cut short.
                let mut held: Option<Line> = None;
                // The line of the last row read, when it was a row of empty fields.
                let mut empty_last = None;
                while reader.read_byte_record(&mut row).map_err(|e| csv_error(&path, e))? {
                    let number = lines.first_line(row.position().map_or(0, |p| p.byte()));
                    // A blank line, or a row of empty fields (`,,,,`, as spreadsheets leave at
                    // the end): nothing to import, as a blank line of JSON Lines.
                    if row.iter().all(|field| field.trim_ascii().is_empty()) {
                        empty_last = Some(number);
                        if let Some(line) = held.take()
                            && !send(line, &mut batch)
                        {
                            return Ok(());
                        }
                        continue;
                    }
                    empty_last = None;
                    let record = match row.as_slice().len() > MAX_LINE {
                        true => Err(ErrorCode::FieldTooLong),
                        false => csv_record(&row, &columns, width),
                    };
                    if let Some(line) = held.replace(Line { number, record })
                        && !send(line, &mut batch)
                    {
                        return Ok(());
                    }
                }
                // A last record without its line break may be a file copied only in part, its
                // last field cut short (`user-123` read as `user-12`), which nothing else can
                // tell: a user made from it would be a wrong one for good. So may a last row of
                // empty fields: a record cut within its leading empty fields (`,https://…` read
                // as `,`), which would otherwise go unsaid.
                let terminated = matches!(reader.get_ref().last, Some(b'\n' | b'\r'));
                let last = match (held, empty_last) {
                    (Some(mut line), _) => {
                        if !terminated {
                            line.record = Err(ErrorCode::UnterminatedRecord);
                        }
                        Some(line)
                    }
                    (None, Some(number)) if !terminated => {
                        Some(Line { number, record: Err(ErrorCode::UnterminatedRecord) })
                    }
                    (None, _) => None,
                };
                if let Some(line) = last
                    && !send(line, &mut batch)
                {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            let _ = sender.blocking_send(batch);
        }
        Ok(())
    }
}

/// A reader that notes where the line breaks (`\r`, `\n`) it reads are, so that CSV records can
/// be numbered by the line they start on: the CSV reader's own position of a record is where it
/// started reading, before the blank lines it skips.
/// Each is noted with whether it ends a line: a `\n`, or a `\r` (alone, as old Mac files end
/// lines, or the first of a `\r\n`, whose `\n` then does not end another).
struct Breaks<R> {
    inner: R,
    offset: u64,
    seen: Arc<Mutex<VecDeque<(u64, bool)>>>,
    /// The last byte read (the file's last, once the reader reached its end).
    last: Option<u8>,
}

impl<R: Read> Read for Breaks<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (i, byte) in buffer[..read].iter().enumerate() {
            if matches!(byte, b'\n' | b'\r') {
                seen.push_back((self.offset + i as u64, *byte == b'\r' || self.last != Some(b'\r')));
            }
            self.last = Some(*byte);
        }
        self.offset += read as u64;
        Ok(read)
    }
}

/// Numbers CSV records by the line they start on, from what [`Breaks`] saw.
struct LineCounter {
    seen: Arc<Mutex<VecDeque<(u64, bool)>>>,
    newlines: u64,
}

impl LineCounter {
    /// The line of the first byte at or after `start` that is not a line break.
    fn first_line(&mut self, start: u64) -> u64 {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut at = start;
        while let Some(&(offset, newline)) = seen.front() {
            if offset > at {
                break;
            }
            if offset == at {
                at += 1;
            }
            self.newlines += u64::from(newline);
            seen.pop_front();
        }
        self.newlines + 1
    }
}

fn csv_error(path: &str, error: csv::Error) -> ImportError {
    let source = match error.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{other:?}")),
    };
    ImportError::Read { path: path.to_owned(), source }
}

/// The longest line (or CSV record) read, in bytes: a record of the longest issuer, subject,
/// email, name and team is a few KiB; a longer one is a file in another format (a JSON array on
/// one line, say), refused (`field_too_long`) without being held in memory.
const MAX_LINE: usize = 64 * 1024;

/// Reads one line (with its `\n`) into `buffer`, at most [`MAX_LINE`] bytes of it; the rest of a
/// longer line is read past, not kept. Returns the bytes kept (0 at the end of the file) and
/// whether the line was longer.
fn read_line(reader: &mut impl BufRead, buffer: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    let read = reader.by_ref().take(MAX_LINE as u64).read_until(b'\n', buffer)?;
    if read < MAX_LINE || buffer.last() == Some(&b'\n') {
        return Ok((read, false));
    }
    loop {
        let available = reader.fill_buf()?;
        match available.iter().position(|&b| b == b'\n') {
            _ if available.is_empty() => return Ok((read, true)),
            Some(end) => {
                reader.consume(end + 1);
                return Ok((read, true));
            }
            None => {
                let all = available.len();
                reader.consume(all);
            }
        }
    }
}

/// The position of each known column in the header; unknown or repeated columns and a missing
/// `issuer` or `subject` are refused before anything is imported.
fn header_columns(header: &csv::ByteRecord) -> Result<([Option<usize>; COLUMNS.len()], usize), ImportError> {
    let mut columns = [None; COLUMNS.len()];
    for (index, name) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(name);
        let name = name.trim_start_matches('\u{feff}').trim().to_ascii_lowercase();
        let Some(known) = COLUMNS.iter().position(|c| *c == name) else {
            // Named by position, never by its text: a file without a header row has a record
            // there, whose fields (a person's name, an email) stay out of the output.
            return Err(ImportError::Header(format!(
                "has an unknown column number {} (is the first line a header?): the columns are {}",
                index + 1,
                COLUMNS.join(", ")
            )));
        };
        if columns[known].replace(index).is_some() {
            return Err(ImportError::Header(format!("names the column {name:?} twice")));
        }
    }
    for required in ["issuer", "subject"] {
        if columns[COLUMNS.iter().position(|c| *c == required).unwrap_or(0)].is_none() {
            return Err(ImportError::Header(format!("has no {required:?} column (the first line is the header)")));
        }
    }
    Ok((columns, header.len()))
}

fn json_record(text: &[u8]) -> Result<Record, ErrorCode> {
    serde_json::from_slice(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ErrorCode::InvalidRequest,
        _ => ErrorCode::MalformedJson,
    })
}

fn csv_record(
    row: &csv::ByteRecord,
    columns: &[Option<usize>; COLUMNS.len()],
    width: usize,
) -> Result<Record, ErrorCode> {
    if row.len() != width {
        return Err(ErrorCode::InvalidRequest);
    }
    let mut fields = [None, None, None, None, None, None, None];
    for (field, column) in fields.iter_mut().zip(columns) {
        if let Some(index) = column {
            let text = std::str::from_utf8(&row[*index]).map_err(|_| ErrorCode::InvalidRequest)?;
            *field = Some(text.to_owned()).filter(|t| !t.trim().is_empty());
        }
    }
    let [issuer, subject, email, email_verified, name, team, provider] = fields;
    // Every other field is trimmed; spaces around a subject (a CSV written `issuer, subject`)
    // would make an identity the provider never names.
    if subject.as_deref().is_some_and(|subject| subject.trim() != subject) {
        return Err(ErrorCode::InvalidSubject);
    }
    let email_verified = match email_verified.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
        None => None,
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Some(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Some(false),
        Some(_) => return Err(ErrorCode::InvalidRequest),
    };
    Ok(Record { issuer, subject, email, email_verified, name, team, provider })
}

/// Counts the lines an import will read, for the progress bar's length.
fn count_lines(path: &Path, format: Format) -> Result<u64, ImportError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| ImportError::Read { path: name.clone(), source })?;
    let mut count = 0;
    match format {
        Format::Jsonl => {
            let mut reader = BufReader::with_capacity(1 << 16, file);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                let (read, _) = read_line(&mut reader, &mut buffer)
                    .map_err(|source| ImportError::Read { path: name.clone(), source })?;
                if read == 0 {
                    break;
                }
                if !buffer.trim_ascii().is_empty() {
                    count += 1;
                }
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
            let mut row = csv::ByteRecord::new();
            while reader.read_byte_record(&mut row).map_err(|e| csv_error(&name, e))? {
                // The rows `Source::read_into` skips are not counted.
                if !row.iter().all(|field| field.trim_ascii().is_empty()) {
                    count += 1;
                }
            }
        }
    }
    Ok(count)
}

/// Shows progress on stderr: a bar on a terminal, else a line every few seconds.
struct Reporter {
    bar: Option<ProgressBar>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// `total`: the lines of the file, when they could be counted beforehand.
    fn start(total: Option<u64>, tally: Arc<Tally>) -> Self {
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = if total.is_some() {
                "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} lines, {rate} lines/s, eta {eta}"
            } else {
                "{elapsed_precise} {human_pos} lines, {rate} lines/s"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                let style =
                    style.with_key("rate", |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                        let _ = write!(out, "{:.0}", state.per_sec());
                    });
                bar.set_style(style.progress_chars("=> "));
            }
            let shown = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    shown.set_position(tally.lines.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            return Self { bar: Some(bar), ticker };
        }
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PLAIN_PROGRESS_EVERY).await;
                err!("{}", plain_progress(tally.lines.load(Ordering::Relaxed), total, started.elapsed()));
            }
        });
        Self { bar: None, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `import: 120000/1000000 lines (12%), 8123 lines/s, eta 108 s`, or without a total (a pipe)
/// `import: 120000 lines, 8123 lines/s`.
fn plain_progress(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let Some(total) = total else { return format!("import: {done} lines, {rate:.0} lines/s") };
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let eta = if rate > 0.0 { format!("{:.0} s", total.saturating_sub(done) as f64 / rate) } else { "-".to_owned() };
    format!("import: {done}/{total} lines ({percent}%), {rate:.0} lines/s, eta {eta}")
}

/// What to do after an import stopped part-way: run it again (what it wrote is skipped), or,
/// for a dry run, which wrote nothing, run the dry run again.
fn resume_hint(summary: &Summary) -> &'static str {
    if summary.dry_run {
        "nothing was written: run the dry run again"
    } else {
        "run the same import again to go on: what is imported is skipped"
    }
}

fn print_summary(summary: &Summary, file: &Path, json: bool) {
    if json {
        print_json(summary);
        return;
    }
    let rate = summary.lines as f64 / summary.seconds.max(0.001);
    let dry = if summary.dry_run { " (dry run: nothing was written)" } else { "" };
    out!("{}: {} lines in {:.1} s, {rate:.0} lines/s{dry}", file.display(), summary.lines, summary.seconds);
    let created = if summary.dry_run { "would create" } else { "created" };
    out!("{created}: {}", summary.created);
    out!("existing: {}", summary.existing);
    out!("refused: {}", summary.refused);
    out!("joined a team: {}", summary.joined);
    for reason in &summary.refusals {
        let mut lines: Vec<String> = reason.lines.iter().take(10).map(u64::to_string).collect();
        if reason.count > lines.len() as u64 {
            lines.push("…".to_owned());
        }
        out!("  {}: {} (line {})", reason.code, reason.count, lines.join(", "));
    }
}

/// Where an export is written: a file beside the target, readable by its owner alone (it lists
/// every user's email and name), renamed over the target once the export is complete, so that
/// a failure part-way leaves an earlier export in place; or, for a target that is not a regular
/// file (`/dev/null`, a pipe), the target itself.
fn export_file(path: &std::path::Path) -> std::io::Result<(File, Option<Replace>)> {
    // A link is followed: the file it leads to is the one replaced, the link stays.
    let target = output_target(path)?;
    let special = std::fs::symlink_metadata(&target).is_ok_and(|m| !m.is_file() && !m.file_type().is_symlink());
    if special {
        return Ok((std::fs::OpenOptions::new().write(true).open(&target)?, None));
    }
    let name = target.file_name().ok_or_else(|| std::io::Error::other("the output names no file"))?;
    // A random suffix: a file an interrupted export left behind (its process id reused, as PID 1
    // in a container always is) must not block the next one. Created new (never through a link).
    let suffix: String = crate::crypto::random_bytes::<6>().iter().map(|b| format!("{b:02x}")).collect();
    let partial = target.with_file_name(format!(".{}.partial-{suffix}", name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    Ok((options.open(&partial)?, Some(Replace { partial, target })))
}

/// The file an export to `path` replaces: `path`, or, where a link is met anywhere along it, the
/// path it leads to — walked a component at a time as the kernel walks a path, each link met
/// refused as [`may_follow`] says. Resolved once: the export is renamed over what this returns,
/// which a link swapped in later does not redirect (a rename replaces a link, it never follows
/// one).
fn output_target(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    /// As many links as the kernel follows in one path (`ELOOP` past them).
    const MAX_HOPS: usize = 40;
    /// A component still to walk.
    enum Part {
        Root,
        Parent,
        Name(std::ffi::OsString),
    }
    // Last component first; a link's target goes on top, to be walked from the link's directory.
    let push_all = |pending: &mut Vec<Part>, path: &std::path::Path| {
        pending.extend(path.components().rev().filter_map(|part| match part {
            Component::RootDir => Some(Part::Root),
            Component::ParentDir => Some(Part::Parent),
            Component::Normal(name) => Some(Part::Name(name.to_owned())),
            Component::Prefix(_) | Component::CurDir => None,
        }))
    };
    // A real path: no link in it.
    let mut resolved = if path.is_absolute() { std::path::PathBuf::from("/") } else { std::env::current_dir()? };
    let mut pending = Vec::new();
    push_all(&mut pending, path);
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        let name = match part {
            Part::Root => {
                resolved = std::path::PathBuf::from("/");
                continue;
            }
            Part::Parent => {
                resolved.pop();
                continue;
            }
            Part::Name(name) => name,
        };
        let candidate = resolved.join(name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(link) if link.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(std::io::Error::other("the output is a chain of too many links"));
                }
                may_follow(&resolved, &link)?;
                push_all(&mut pending, &std::fs::read_link(&candidate)?);
            }
            // A directory, the file, or nothing yet (the file to create).
            _ => resolved = candidate,
        }
    }
    if resolved.file_name().is_none() {
        return Err(std::io::Error::other("the output names no file"));
    }
    Ok(resolved)
}

/// Refuses to follow `link` (in the directory `dir`, a real path) where another user made it in
/// a directory others may write to (as `/tmp` is), which the kernel would not follow either (`fs.protected_symlinks`,
/// which not every machine turns on): it would let them choose which of root's files an export
/// replaces.
fn may_follow(dir: &std::path::Path, link: &std::fs::Metadata) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::metadata(dir)?;
        // Sticky and writable by others: a shared directory.
        let shared = dir.mode() & 0o1002 == 0o1002;
        let ours = link.uid() == rustix::process::geteuid().as_raw() || link.uid() == dir.uid();
        if shared && !ours {
            return Err(std::io::Error::other(
                "it is a link another user made in a shared directory; name the file itself",
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, link);
    Ok(())
}

/// An export written beside its target, to be moved over it once complete.
struct Replace {
    partial: std::path::PathBuf,
    target: std::path::PathBuf,
}

impl Replace {
    /// Moves the complete export over its target: flushed to disk first, so that a power loss
    /// leaves the earlier export or the new one, never an empty file.
    fn commit(&self) -> std::io::Result<()> {
        File::open(&self.partial)?.sync_all()?;
        std::fs::rename(&self.partial, &self.target)
    }
}

/// Runs `tessera export`.
pub async fn export(config: &Config, args: ExportArgs) -> ExitCode {
    let format = args.format.or_else(|| args.output.as_deref().and_then(Format::of_path)).unwrap_or(Format::Jsonl);
    let store = match open_store(config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let (out, replace): (Box<dyn Write + Send>, _) = match &args.output {
        // Opening a FIFO waits for its reader.
        Some(path) => match blocking(|| export_file(path)) {
            Ok((file, replace)) => (Box::new(file), replace),
            Err(e) => {
                err!("tessera: cannot write {}: {e}", path.display());
                store.close().await;
                return ExitCode::from(2);
            }
        },
        None => (Box::new(std::io::stdout()), None),
    };
    let done = export_to(store.as_ref(), format, out).await;
    store.close().await;
    let done = match replace {
        Some(replace) => {
            let done = done.and_then(|count| replace.commit().map(|()| count).map_err(Into::into));
            if done.is_err() {
                let _ = std::fs::remove_file(&replace.partial);
            }
            done
        }
        None => done,
    };
    match done {
        Ok(count) => {
            err!("exported {count} identities");
            ExitCode::SUCCESS
        }
        // The reader of stdout has gone (`tessera export | head`): not a failure, as for the
        // other commands' output.
        Err(e) if args.output.is_none() && broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => fail(e.as_ref()),
    }
}

/// Whether a write failed because the reader of a pipe has gone.
fn broken_pipe(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let kind = if let Some(io) = error.downcast_ref::<std::io::Error>() {
        Some(io.kind())
    } else if let Some(json) = error.downcast_ref::<serde_json::Error>() {
        json.io_error_kind()
    } else if let Some(csv) = error.downcast_ref::<csv::Error>() {
        match csv.kind() {
            csv::ErrorKind::Io(io) => Some(io.kind()),
            _ => None,
        }
    } else {
        None
    };
    kind == Some(std::io::ErrorKind::BrokenPipe)
}

/// Writes every identity to `out`, a page at a time; returns how many.
pub async fn export_to(
    store: &dyn Store,
    format: Format,
    out: Box<dyn Write + Send>,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let out = BufWriter::with_capacity(1 << 16, out);
    match format {
        Format::Jsonl => {
            let mut out = out;
            let count = each_record(store, |record| {
                serde_json::to_writer(&mut out, record)?;
                out.write_all(b"\n")?;
                Ok(())
            })
            .await?;
            blocking(|| out.flush())?;
            Ok(count)
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(COLUMNS)?;
            let count = each_record(store, |record| {
                let verified = if record.email_verified == Some(true) { "true" } else { "false" };
                writer.write_record([
                    record.issuer.as_deref().unwrap_or(""),
                    record.subject.as_deref().unwrap_or(""),
                    record.email.as_deref().unwrap_or(""),
                    verified,
                    record.name.as_deref().unwrap_or(""),
                    record.team.as_deref().unwrap_or(""),
                    record.provider.as_deref().unwrap_or(""),
                ])?;
                Ok(())
            })
            .await?;
            blocking(|| writer.flush())?;
            Ok(count)
        }
    }
}

/// Runs `f`, which may wait on a file (a pipe nobody drains, a FIFO nobody writes to, a large file
/// read through), without holding up the runtime's other tasks — the wait for Ctrl-C among them
/// (see `cli::run`): on a multi-threaded runtime, its worker hands its tasks to another thread
/// meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Calls `write` for every identity's record, in id order; returns how many.
async fn each_record(
    store: &dyn Store,
    mut write: impl FnMut(&Record) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut count = 0;
    let mut after = None;
    loop {
        let (records, next) = export_page(store, after).await?;
        blocking(|| records.iter().try_for_each(&mut write))?;
        count += records.len() as u64;
        match next {
            Some(next) => after = Some(next),
            None => return Ok(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_export_left_behind_does_not_block_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("people.jsonl");
        // The first export is interrupted (its partial file stays); the next one, of a process
        // with the same id, as a container's PID 1 always has, still starts.
        let (_first, first) = export_file(&target).unwrap();
        let (_next, next) = export_file(&target).unwrap();
        let (first, next) = (first.unwrap(), next.unwrap());
        assert_ne!(first.partial, next.partial);
        next.commit().unwrap();
        assert!(target.is_file() && first.partial.is_file());
    }

    /// Reads a CSV file's lines as an import does.
    fn csv_lines(content: &str) -> Vec<(u64, Result<Record, ErrorCode>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("people.csv");
        std::fs::write(&path, content).unwrap();
        let source = Source::open(&path, Format::Csv).unwrap();
        let (sender, mut receiver) = tokio::sync::mpsc::channel(100);
        source.read_into(&sender).unwrap();
        drop(sender);
        let mut lines = Vec::new();
        while let Ok(batch) = receiver.try_recv() {
            lines.extend(batch.into_iter().map(|l| (l.number, l.record)));
        }
        lines
    }

    #[test]
    fn csv_records_are_numbered_by_the_line_they_start_on() {
        let numbers = |content: &str| csv_lines(content).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(numbers("issuer,subject\na,1\n\n\nb,2\n\"c\n3\",x\nd,4\n"), [2, 5, 6, 8]);
        assert_eq!(numbers("issuer,subject\r\na,1\r\n\r\nb,2"), [2, 4], "CRLF, and no final line break");
        assert_eq!(numbers("issuer,subject\na,1\n\"b\n\",2"), [2, 3]);
        assert_eq!(numbers("issuer,subject\ra,1\r\rb,2\r"), [2, 4], "lines ended by a lone CR");
    }

    #[test]
    fn a_last_csv_record_without_its_line_break_is_refused() {
        let codes =
            |content: &str| csv_lines(content).into_iter().map(|(n, record)| (n, record.err())).collect::<Vec<_>>();
        // Cut short in its last field: `user-123` would be read as `user-12`.
        let cut = [(2, None), (3, Some(ErrorCode::UnterminatedRecord))];
        assert_eq!(codes("issuer,subject\ni,user-1\ni,user-12"), cut);
        assert_eq!(codes("issuer,subject\r\ni,user-1\r\ni,user-12"), cut, "CRLF");
        assert_eq!(codes("issuer,subject\ni,user-1\ni,\"user-12"), cut, "inside a quote");
        // Whole: a line break after the last record, whatever follows it.
        assert_eq!(codes("issuer,subject\ni,user-1\ni,user-123\n"), [(2, None), (3, None)]);
        assert_eq!(codes("issuer,subject\ni,user-1\r"), [(2, None)], "a lone CR");
        assert_eq!(codes("issuer,subject\ni,user-1\n,\n"), [(2, None)], "a row of empty fields after it");
        assert_eq!(codes("issuer,subject\ni,user-1\n\n"), [(2, None)]);
        // A last row of empty fields without its line break: a record cut in its leading empty
        // fields (the first column optional), not to go unsaid.
        let cut_early = [(2, None), (3, Some(ErrorCode::UnterminatedRecord))];
        assert_eq!(codes("email,issuer,subject\n,i,user-1\n,"), cut_early);
        assert_eq!(codes("email,issuer,subject\n,i,user-1\n , "), cut_early);
    }

    #[test]
    fn csv_fields_become_a_record_and_bad_ones_a_code() {
        let lines =
            csv_lines("name,email_verified,subject,issuer\n\"Lovelace, Ada\",YES,s,i\n,,s2,i\nx,maybe,s3,i\nshort\n");
        let ada = lines[0].1.clone().unwrap();
        assert_eq!(ada.name.as_deref(), Some("Lovelace, Ada"));
        assert_eq!((ada.email_verified, ada.subject.as_deref(), ada.email), (Some(true), Some("s"), None));
        assert_eq!(lines[1].1.clone().unwrap().name, None, "an empty field is no value");
        assert_eq!(lines[2].1, Err(ErrorCode::InvalidRequest), "email_verified is true/false, 1/0 or yes/no");
        assert_eq!(lines[3].1, Err(ErrorCode::InvalidRequest), "too few fields");
    }

    #[test]
    fn a_json_line_is_malformed_or_of_the_wrong_shape() {
        assert_eq!(json_record(b"{\"issuer\": "), Err(ErrorCode::MalformedJson));
        assert_eq!(json_record(b"[1, 2]"), Err(ErrorCode::InvalidRequest));
        assert_eq!(json_record(b"{\"subject\": 7}"), Err(ErrorCode::InvalidRequest));
        assert_eq!(json_record(b"{\"subject\": \"s\"}").unwrap().subject.as_deref(), Some("s"));
    }

    #[test]
    fn plain_progress_says_how_far_how_fast_and_how_long_still() {
        let line = plain_progress(250, Some(1000), Duration::from_secs(5));
        assert_eq!(line, "import: 250/1000 lines (25%), 50 lines/s, eta 15 s");
        assert_eq!(plain_progress(250, None, Duration::from_secs(5)), "import: 250 lines, 50 lines/s", "a pipe");
        assert_eq!(Format::of_path(Path::new("x.NDJSON")), Some(Format::Jsonl));
        assert_eq!(Format::of_path(Path::new("x.txt")), None);
    }
}
