//! `tessera import` and `tessera export`, run as child processes against both backends: counts
//! and refusals, re-runs that change nothing, resuming an interrupted import, dry runs, CSV and
//! JSON Lines, two importers at once, and the export → import round trip.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{Backend, ISSUER, OTHER_ISSUER, TestDb, eventually, on_both_backends};

on_both_backends!(
    an_import_provisions_valid_lines_refuses_the_rest_and_a_rerun_changes_nothing,
    a_dry_run_reports_what_would_happen_and_writes_nothing,
    an_interrupted_import_is_finished_by_importing_the_whole_file_again,
    csv_files_are_read_by_their_header_and_bad_headers_stop_before_writing,
    two_concurrent_imports_of_one_file_make_each_user_once,
    an_export_imported_into_an_empty_database_exports_the_same,
    an_import_from_a_pipe_reads_it_once,
    a_disabled_user_is_not_added_to_a_team,
    many_refused_lines_keep_a_count_and_the_first_numbers,
    an_export_whose_reader_goes_away_ends_quietly,
    an_export_blocked_on_its_reader_stops_at_sigterm,
    a_user_written_before_the_database_failed_is_counted,
);

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A `tessera` command on the test database, with only [`ISSUER`] allowed.
fn tessera(dir: &Path, db: &TestDb, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TESSERA_LOG_FORMAT", "json")
        .env("TESSERA_DATABASE_URL", &db.url)
        .env("TESSERA_ALLOWED_ISSUERS", ISSUER)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn run(mut command: Command) -> Output {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command finished in time")
        .expect("the command ran");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `tessera import FILE --json …`; returns the exit code and the summary.
async fn import(dir: &Path, db: &TestDb, file: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["import", file, "--json"];
    args.extend_from_slice(extra);
    let output = run(tessera(dir, db, &args)).await;
    let summary = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|_| panic!("import printed no JSON ({}): {}{}", output.code, output.stdout, output.stderr));
    (output.code, summary)
}

/// The counts of a summary: lines, created, existing, refused, joined.
fn counts(summary: &Value) -> [u64; 5] {
    ["lines", "created", "existing", "refused", "joined"].map(|key| summary[key].as_u64().expect(key))
}

/// The refusals of a summary, as (code, line numbers), sorted by code.
fn refusals(summary: &Value) -> Vec<(String, Vec<u64>)> {
    let mut found: Vec<(String, Vec<u64>)> = summary["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let lines: Vec<u64> = r["lines"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
            assert_eq!(r["count"].as_u64().unwrap(), lines.len() as u64);
            (r["code"].as_str().unwrap().to_owned(), lines)
        })
        .collect();
    found.sort();
    found
}

fn line(subject: &str, email: Option<&str>, name: Option<&str>) -> String {
    let mut value = json!({"issuer": ISSUER, "subject": subject, "email_verified": true});
    if let Some(email) = email {
        value["email"] = json!(email);
    }
    if let Some(name) = name {
        value["name"] = json!(name);
    }
    value.to_string()
}

/// Lines 1 to 41 (one blank): 32 new identities (one joining team `imported`), one repeat, and
/// seven refusals, one of each kind.
fn mixed_file() -> String {
    let mut lines = vec![
        line("ada", Some("ada@example.com"), Some("Ada Lovelace")),
        String::new(),
        "{not json".to_owned(),
        json!({"issuer": ISSUER, "subject": "x", "colour": "red"}).to_string(),
        json!({"issuer": ISSUER, "email": "nosubject@example.com"}).to_string(),
        json!({"issuer": ISSUER, "subject": "bad-email", "email": "not-an-email"}).to_string(),
        json!({"issuer": "not a url", "subject": "bad-issuer"}).to_string(),
        json!({"issuer": OTHER_ISSUER, "subject": "elsewhere"}).to_string(),
        json!({"issuer": ISSUER, "subject": "nowhere", "team": "no-such-team"}).to_string(),
        json!({"issuer": ISSUER, "subject": "joiner", "team": "imported"}).to_string(),
        line("ada", Some("ada@example.com"), Some("Ada Lovelace")),
    ];
    lines.extend((0..30).map(|i| line(&format!("b{i}"), Some(&format!("b{i}@example.com")), None)));
    lines.join("\n") + "\n"
}

fn mixed_refusals() -> Vec<(String, Vec<u64>)> {
    let mut expected: Vec<(String, Vec<u64>)> = [
        ("malformed_json", 3),
        ("invalid_request", 4),
        ("missing_field", 5),
        ("invalid_email", 6),
        ("invalid_issuer", 7),
        ("issuer_not_allowed", 8),
        ("team_not_found", 9),
    ]
    .into_iter()
    .map(|(code, line)| (code.to_owned(), vec![line]))
    .collect();
    expected.sort();
    expected
}

async fn create_team(dir: &Path, db: &TestDb, slug: &str) {
    let created = run(tessera(dir, db, &["teams", "create", slug, "Imported people"])).await;
    assert_eq!(created.code, 0, "{}", created.stderr);
}

async fn an_import_provisions_valid_lines_refuses_the_rest_and_a_rerun_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    create_team(dir.path(), &db, "imported").await;
    std::fs::write(dir.path().join("people.jsonl"), mixed_file()).unwrap();

    let (code, summary) = import(dir.path(), &db, "people.jsonl", &[]).await;
    assert_eq!(code, 1, "refused lines make the exit code 1: {summary}");
    assert_eq!(counts(&summary), [40, 32, 1, 7, 1], "{summary}");
    assert_eq!(summary["dry_run"], false);
    assert_eq!(refusals(&summary), mixed_refusals());
    let sql = db.sql().await;
    // 32 users with their own default team and membership, plus the team `imported` and its one
    // member; one `user.created` and one `team.member_added` event.
    let after = sql.provisioning_counts().await;
    assert_eq!(after, [32, 32, 33, 33, after[4]]);
    assert_eq!(sql.count("outbox_events WHERE topic = 'user.created'").await, 32);
    let ada = store
        .find_identity(
            &tessera::domain::Issuer::parse(ISSUER).unwrap(),
            &tessera::domain::Subject::parse("ada").unwrap(),
        )
        .await
        .unwrap()
        .expect("ada was provisioned");
    assert_eq!(ada.user.email.as_deref(), Some("ada@example.com"));
    assert!(ada.user.email_verified);
    assert_eq!(ada.user.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(ada.default_team.unwrap().name, "Ada's Team", "the bootstrap's default team");
    let joiner = sql
        .count(
            "memberships m JOIN teams t ON t.id = m.team_id JOIN identities i ON i.user_id = m.user_id
             WHERE t.slug = 'imported' AND i.subject = 'joiner' AND m.role = 'member' AND NOT m.is_default",
        )
        .await;
    assert_eq!(joiner, 1, "the line's team is joined as member, beside the user's own default team");

    let (code, again) = import(dir.path(), &db, "people.jsonl", &[]).await;
    assert_eq!(code, 1);
    assert_eq!(counts(&again), [40, 0, 33, 7, 0], "everything exists: {again}");
    assert_eq!(sql.provisioning_counts().await, after, "a re-run writes nothing");

    // People read a table, and no email is printed.
    let table = run(tessera(dir.path(), &db, &["import", "people.jsonl"])).await;
    assert_eq!(table.code, 1);
    assert!(
        table.stdout.contains("existing: 33") && table.stdout.contains("invalid_email: 1 (line 6)"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains('@') && !table.stderr.contains('@'), "{}{}", table.stdout, table.stderr);
}

async fn a_dry_run_reports_what_would_happen_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let _store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    create_team(dir.path(), &db, "imported").await;
    std::fs::write(dir.path().join("people.jsonl"), mixed_file()).unwrap();
    let sql = db.sql().await;
    let before = sql.provisioning_counts().await;

    let (code, summary) = import(dir.path(), &db, "people.jsonl", &["--dry-run"]).await;
    assert_eq!(code, 1);
    assert_eq!(summary["dry_run"], true);
    assert_eq!(counts(&summary), [40, 32, 1, 7, 1], "the same counts as the import: {summary}");
    assert_eq!(refusals(&summary), mixed_refusals());
    assert_eq!(sql.provisioning_counts().await, before, "nothing written");

    let (_, imported) = import(dir.path(), &db, "people.jsonl", &[]).await;
    assert_eq!(counts(&imported), [40, 32, 1, 7, 1]);
    let after = sql.provisioning_counts().await;
    let (_, dry) = import(dir.path(), &db, "people.jsonl", &["--dry-run"]).await;
    assert_eq!(counts(&dry), [40, 0, 33, 7, 0]);
    assert_eq!(sql.provisioning_counts().await, after);

    // A new identity named with two teams joins both; an existing user named twice with one
    // team joins it once: a dry run counts what the import will.
    create_team(dir.path(), &db, "second").await;
    let with_team = |subject: &str, team: &str| json!({"issuer": ISSUER, "subject": subject, "team": team}).to_string();
    let files = [
        ("new.jsonl", [with_team("d1", "imported"), with_team("d1", "second")], [2, 1, 1, 0, 2]),
        ("existing.jsonl", [with_team("ada", "second"), with_team("ada", "second")], [2, 0, 2, 0, 1]),
    ];
    for (name, lines, expected) in files {
        std::fs::write(dir.path().join(name), lines.join("\n") + "\n").unwrap();
        let (_, dry) = import(dir.path(), &db, name, &["--dry-run"]).await;
        let (_, real) = import(dir.path(), &db, name, &[]).await;
        assert_eq!(counts(&real), expected, "{name}: {real}");
        assert_eq!(counts(&dry), expected, "{name}: {dry}");
    }
}

async fn an_interrupted_import_is_finished_by_importing_the_whole_file_again(backend: Backend) {
    let db = TestDb::new(backend).await;
    let _store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..250).map(|i| line(&format!("p{i}"), None, Some(&format!("Person {i}")))).collect();
    let full = lines.join("\n") + "\n";
    // What an interrupted copy leaves: 120 whole lines and half of the next.
    let cut = lines[..120].join("\n").len() + 1 + lines[120].len() / 2;
    std::fs::write(dir.path().join("part.jsonl"), &full[..cut]).unwrap();
    std::fs::write(dir.path().join("all.jsonl"), &full).unwrap();

    let (code, part) = import(dir.path(), &db, "part.jsonl", &["--concurrency", "4"]).await;
    assert_eq!(code, 1);
    assert_eq!(counts(&part), [121, 120, 0, 1, 0], "{part}");
    assert_eq!(refusals(&part), [("malformed_json".to_owned(), vec![121])]);

    let (code, all) = import(dir.path(), &db, "all.jsonl", &[]).await;
    assert_eq!(code, 0, "{all}");
    assert_eq!(counts(&all), [250, 130, 120, 0, 0], "{all}");
    let sql = db.sql().await;
    assert_eq!(sql.provisioning_counts().await[..4], [250, 250, 250, 250]);
    assert_eq!(sql.count("outbox_events WHERE topic = 'user.created'").await, 250);
}

async fn csv_files_are_read_by_their_header_and_bad_headers_stop_before_writing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let sql = db.sql().await;
    let csv = format!(
        "subject,issuer,name,email,email_verified,team\n\
         c1,{ISSUER},\"Lovelace, Ada\",ada@example.com,yes,\n\
         c2,{ISSUER},,,yes,\n\
         \n\
         c3,{ISSUER},Too,many,fields,here,extra\n\
         c4,{ISSUER},Maybe,m@example.com,maybe,\n\
         \"c5\nwith a line break\",{ISSUER},Bob,bob@example.com,false,\n\
         c6,{ISSUER},Cy,cy@example.com,0,\n          c7,{ISSUER},Padded,,,\n"
    );
    std::fs::write(dir.path().join("people.csv"), csv).unwrap();
    let (code, summary) = import(dir.path(), &db, "people.csv", &[]).await;
    assert_eq!(code, 1);
    assert_eq!(counts(&summary), [7, 3, 0, 4, 0], "{summary}");
    // A subject with spaces around it (` c7`) is refused, not imported as another subject than
    // the provider's `c7`, which would sign in as a second user.
    assert_eq!(
        refusals(&summary),
        [("invalid_request".to_owned(), vec![5, 6]), ("invalid_subject".to_owned(), vec![7, 10])],
        "numbered by the file's lines (a quoted line break is no new record)"
    );
    let issuer = tessera::domain::Issuer::parse(ISSUER).unwrap();
    let find = |subject: &str| {
        let (store, issuer, subject) =
            (store.clone(), issuer.clone(), tessera::domain::Subject::parse(subject).unwrap());
        async move { store.find_identity(&issuer, &subject).await.unwrap().expect("provisioned").user }
    };
    let ada = find("c1").await;
    assert_eq!(
        (ada.name.as_deref(), ada.email.as_deref(), ada.email_verified),
        (Some("Lovelace, Ada"), Some("ada@example.com"), true)
    );
    let anonymous = find("c2").await;
    assert_eq!((anonymous.name, anonymous.email, anonymous.email_verified), (None, None, false));
    assert!(!find("c6").await.email_verified);
    let after = sql.provisioning_counts().await;

    // A header with an unknown or missing column, or a file whose format cannot be told, stops
    // the import before anything is read: exit 2.
    for (name, content) in [
        ("colour.csv", format!("issuer,subject,colour\n{ISSUER},z1,red\n")),
        ("nosubject.csv", format!("issuer,email\n{ISSUER},z@example.com\n")),
        ("people.txt", format!("issuer,subject\n{ISSUER},z2\n")),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
        let output = run(tessera(dir.path(), &db, &["import", name])).await;
        assert_eq!(output.code, 2, "{name}: {}{}", output.stdout, output.stderr);
        assert!(output.stderr.contains("column") || output.stderr.contains("--format"), "{}", output.stderr);
    }
    // A file without a header row: its first record is not echoed (it may hold an email).
    std::fs::write(dir.path().join("headless.csv"), format!("ada@example.com,{ISSUER},u1\n")).unwrap();
    let output = run(tessera(dir.path(), &db, &["import", "headless.csv"])).await;
    assert_eq!(output.code, 2, "{}", output.stderr);
    assert!(output.stderr.contains("unknown column number 1"), "{}", output.stderr);
    assert!(!output.stderr.contains("ada@") && !output.stdout.contains("ada@"), "{}", output.stderr);
    assert_eq!(sql.provisioning_counts().await, after, "nothing written");
    // `--format` reads a file whatever its name.
    let (code, txt) = import(dir.path(), &db, "people.txt", &["--format", "csv"]).await;
    assert_eq!((code, counts(&txt)), (0, [1, 1, 0, 0, 0]), "{txt}");
    // Spreadsheet leftovers: rows of empty fields are skipped like blank lines, and a JSON Lines
    // file that starts with a byte-order mark is read.
    std::fs::write(dir.path().join("sheet.csv"), format!("issuer,subject\n{ISSUER},z3\n,\n ,\n")).unwrap();
    let (code, sheet) = import(dir.path(), &db, "sheet.csv", &[]).await;
    assert_eq!((code, counts(&sheet)), (0, [1, 1, 0, 0, 0]), "{sheet}");
    std::fs::write(dir.path().join("bom.jsonl"), format!("\u{feff}{}\n", line("z4", None, None))).unwrap();
    let (code, bom) = import(dir.path(), &db, "bom.jsonl", &[]).await;
    assert_eq!((code, counts(&bom)), (0, [1, 1, 0, 0, 0]), "{bom}");
    // So is a CSV file behind a byte-order mark whose column names are quoted (PowerShell's
    // `Export-Csv`; the CSV reader skips the mark before it parses), its lines numbered as before.
    let quoted = format!("\u{feff}\"issuer\",\"subject\"\n{ISSUER},z8\n{ISSUER},z9,extra\n,,\n");
    std::fs::write(dir.path().join("bom.csv"), quoted).unwrap();
    let (code, bom) = import(dir.path(), &db, "bom.csv", &[]).await;
    assert_eq!((code, counts(&bom)), (1, [2, 1, 0, 1, 0]), "{bom}");
    assert_eq!(refusals(&bom), [("invalid_request".to_owned(), vec![3])]);
    // A line of 100 KiB (a JSON array on one line, say) is refused, and the lines after it read.
    let long = format!("[{}]", vec![line("z5", None, None); 2000].join(","));
    assert!(long.len() > 100 * 1024);
    let file = format!("{}\n{long}\n{}\n", line("z6", None, None), line("z7", None, None));
    std::fs::write(dir.path().join("array.jsonl"), file).unwrap();
    let (code, array) = import(dir.path(), &db, "array.jsonl", &[]).await;
    assert_eq!((code, counts(&array)), (1, [3, 2, 0, 1, 0]), "{array}");
    assert_eq!(refusals(&array), [("field_too_long".to_owned(), vec![2])]);
}

/// Refused lines are counted whole, and listed by their smallest 100 numbers.
async fn many_refused_lines_keep_a_count_and_the_first_numbers(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.store().await; // migrated
    let dir = tempfile::tempdir().unwrap();
    // 250 lines of an issuer that is not allowed, refused by seven workers in no set order.
    let lines: Vec<String> =
        (0..250).map(|i| json!({"issuer": OTHER_ISSUER, "subject": format!("r{i}")}).to_string()).collect();
    std::fs::write(dir.path().join("refused.jsonl"), lines.join("\n") + "\n").unwrap();
    let (code, summary) = import(dir.path(), &db, "refused.jsonl", &["--concurrency", "7"]).await;
    assert_eq!((code, counts(&summary)), (1, [250, 0, 0, 250, 0]), "{summary}");
    let only = &summary["refusals"][0];
    assert_eq!((&only["code"], &only["count"]), (&json!("issuer_not_allowed"), &json!(250)), "{summary}");
    assert_eq!(only["lines"], json!((1..=100).collect::<Vec<u64>>()));
}

async fn two_concurrent_imports_of_one_file_make_each_user_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let _store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..400).map(|i| line(&format!("race{i}"), None, None)).collect();
    std::fs::write(dir.path().join("race.jsonl"), lines.join("\n")).unwrap();

    let (first, second) = tokio::join!(
        import(dir.path(), &db, "race.jsonl", &["--concurrency", "8"]),
        import(dir.path(), &db, "race.jsonl", &["--concurrency", "8"]),
    );
    for (code, summary) in [&first, &second] {
        assert_eq!(*code, 0, "{summary}");
        let [lines, created, existing, refused, _] = counts(summary);
        assert_eq!((lines, created + existing, refused), (400, 400, 0), "{summary}");
    }
    assert_eq!(counts(&first.1)[1] + counts(&second.1)[1], 400, "each identity created by one importer");
    let sql = db.sql().await;
    assert_eq!(sql.provisioning_counts().await[..4], [400, 400, 400, 400]);
    assert_eq!(sql.count("outbox_events WHERE topic = 'user.created'").await, 400);
}

/// Runs `tessera export ARGS` and returns what it wrote to stdout, or to the file it names.
async fn export(dir: &Path, db: &TestDb, args: &[&str]) -> String {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let output = run(tessera(dir, db, &all)).await;
    assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
    match args.iter().position(|a| *a == "--output") {
        Some(i) => {
            let path = dir.join(args[i + 1]);
            // Every user's email and name: readable by the owner alone.
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            std::fs::read_to_string(path).unwrap()
        }
        None => output.stdout,
    }
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

async fn an_export_imported_into_an_empty_database_exports_the_same(backend: Backend) {
    let source = TestDb::new(backend).await;
    let _store = source.store().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lines = vec![
        line("rt-ada", Some("ada@example.com"), Some("Ada \"Countess\" Lovelace, née Byron")),
        line("rt-noemail", None, Some("Nobody")),
        line("rt-noname", Some("x@example.com"), None),
        json!({"issuer": ISSUER, "subject": "rt-unverified", "email": "u@example.com", "email_verified": false})
            .to_string(),
        json!({"issuer": ISSUER, "subject": "rt-ünïcode 名前", "name": "Zoë 名前"}).to_string(),
        // The provider an identity came through (here not the issuer entry's name, as a sign-in
        // through a browser provider records it) and a subject with a space at its end, as an
        // issuer may name one, survive the round trip.
        json!({"issuer": ISSUER, "subject": "rt-provider", "provider": "sketchy"}).to_string(),
        json!({"issuer": ISSUER, "subject": "rt-spaced "}).to_string(),
    ];
    // More than one export page.
    lines.extend((0..1100).map(|i| line(&format!("rt{i}"), Some(&format!("rt{i}@example.com")), None)));
    std::fs::write(dir.path().join("people.jsonl"), lines.join("\n")).unwrap();
    let (code, summary) = import(dir.path(), &source, "people.jsonl", &[]).await;
    assert_eq!((code, counts(&summary)[1]), (0, 1107), "{summary}");

    let jsonl = export(dir.path(), &source, &[]).await;
    assert_eq!(jsonl.lines().count(), 1107);
    let ada: Value = jsonl
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["subject"] == "rt-ada")
        .expect("ada is exported");
    assert_eq!(
        ada,
        json!({"issuer": ISSUER, "subject": "rt-ada", "email": "ada@example.com", "email_verified": true,
               "name": "Ada \"Countess\" Lovelace, née Byron", "provider": "issuer.example.com"}),
        "in the format import reads"
    );
    // An existing, world-readable file is made private too (the helper checks the mode).
    std::fs::write(dir.path().join("out.csv"), "old").unwrap();
    std::fs::set_permissions(dir.path().join("out.csv"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // An earlier export, readable by all, is replaced whole (and made private) once the new one
    // is complete; nothing is left beside it.
    std::fs::write(dir.path().join("out.csv"), "an earlier export\n").unwrap();
    let everyone = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    std::fs::set_permissions(dir.path().join("out.csv"), everyone).unwrap();
    let csv = export(dir.path(), &source, &["--output", "out.csv"]).await;
    assert!(csv.starts_with("issuer,subject,email,email_verified,name,team,provider\n"), "{csv}");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // In a directory others may write to (as /tmp is), a link another user made is not followed
    // (it would choose which of root's files the export replaces); one of our own is.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::write(dir.path().join("precious"), "keep").unwrap();
    std::os::unix::fs::symlink("../precious", shared.join("planted.csv")).unwrap();
    std::os::unix::fs::lchown(shared.join("planted.csv"), Some(65534), Some(65534)).expect("the tests run as root");
    let refused = run(tessera(dir.path(), &source, &["export", "--output", "shared/planted.csv"])).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("a link another user made"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("precious")).unwrap(), "keep");
    // Nor when reached through a link of our own (each hop is checked, as the kernel would).
    std::os::unix::fs::symlink("shared/planted.csv", dir.path().join("chain.csv")).unwrap();
    let refused = run(tessera(dir.path(), &source, &["export", "--output", "chain.csv"])).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("precious")).unwrap(), "keep");
    // Nor a link to a directory on the way (the kernel checks every link of a path).
    std::os::unix::fs::symlink("..", shared.join("planted-dir")).unwrap();
    std::os::unix::fs::lchown(shared.join("planted-dir"), Some(65534), Some(65534)).unwrap();
    let refused = run(tessera(dir.path(), &source, &["export", "--output", "shared/planted-dir/precious"])).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("precious")).unwrap(), "keep");
    std::os::unix::fs::symlink("../precious", shared.join("mine.csv")).unwrap();
    assert_eq!(export(dir.path(), &source, &["--output", "shared/mine.csv"]).await, csv);
    assert_eq!(std::fs::read_to_string(dir.path().join("precious")).unwrap(), csv, "the file it points at");
    assert_eq!(export(dir.path(), &source, &["--format", "csv"]).await, csv, "stdout or a file, the same");
    std::fs::write(dir.path().join("out.jsonl"), &jsonl).unwrap();

    for (file, format) in [("out.jsonl", "jsonl"), ("out.csv", "csv")] {
        let target = TestDb::new(backend).await;
        let _target_store = target.store().await;
        let (code, imported) = import(dir.path(), &target, file, &[]).await;
        let again = export(dir.path(), &target, &["--format", format]).await;
        if format == "jsonl" {
            assert_eq!((code, counts(&imported)), (0, [1107, 1107, 0, 0, 0]), "{file}: {imported}");
            assert_eq!(sorted_lines(&again), sorted_lines(&jsonl), "{file} round-trips");
        } else {
            // CSV cannot tell a subject's own spaces from those of `issuer, subject`: that line
            // alone is refused, and the rest round-trips.
            assert_eq!((code, counts(&imported)), (1, [1107, 1106, 0, 1, 0]), "{file}: {imported}");
            assert_eq!(refusals(&imported)[0].0, "invalid_subject");
            let original: Vec<String> = sorted_lines(&csv).into_iter().filter(|l| !l.contains("rt-spaced")).collect();
            assert_eq!(sorted_lines(&again), original, "{file} round-trips");
        }
    }
}

async fn an_import_from_a_pipe_reads_it_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.store().await; // migrated
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> =
        (0..50).map(|n| line(&format!("piped-{n}"), Some(&format!("piped{n}@example.com")), None)).collect();
    // `tessera import /dev/stdin` with the file on a pipe, as `zcat people.jsonl.gz | …` sends it.
    let mut command = tessera(dir.path(), &db, &["import", "/dev/stdin", "--format", "jsonl", "--json"]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, (lines.join("\n") + "\n").as_bytes()).await.unwrap();
    drop(stdin);
    let output =
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("in time").unwrap();
    let summary: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(counts(&summary), [50, 50, 0, 0, 0], "{summary}");
    assert_eq!(db.sql().await.count("identities").await, 50);
}

async fn a_disabled_user_is_not_added_to_a_team(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    create_team(dir.path(), &db, "imported").await;
    std::fs::write(dir.path().join("first.jsonl"), line("ada", Some("ada@example.com"), None) + "\n").unwrap();
    assert_eq!(counts(&import(dir.path(), &db, "first.jsonl", &[]).await.1), [1, 1, 0, 0, 0]);
    let ada = db.sql().await.uuids("SELECT id FROM users").await[0];
    let disable = tessera::store::UserChange { disabled: Some(true), ..Default::default() };
    store.update_user(tessera::domain::UserId::from_uuid(ada), &disable, chrono::Utc::now()).await.unwrap();

    // A later file puts her in a team: she exists, disabled, and joins nothing.
    let joining = json!({"issuer": ISSUER, "subject": "ada", "team": "imported"}).to_string() + "\n";
    std::fs::write(dir.path().join("second.jsonl"), joining).unwrap();
    let (code, summary) = import(dir.path(), &db, "second.jsonl", &[]).await;
    assert_eq!((code, counts(&summary)), (0, [1, 0, 1, 0, 0]), "{summary}");
    let sql = db.sql().await;
    assert_eq!(sql.count("memberships m JOIN teams t ON t.id = m.team_id WHERE t.slug = 'imported'").await, 0);
}

/// The database failing while a batch's team is looked up stops the import (after the retries),
/// as it does everywhere else in it: the lines are not refused as if they were at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_while_looking_up_a_team_stops_the_import() {
    use tessera::service::import::{Line, Record};
    let db = TestDb::new(Backend::Postgres).await;
    let relay = crate::helpers::Relay::start(&db.url).await;
    let mut config = db.config();
    config.database.url = tessera::config::DatabaseUrl::parse(&relay.url).unwrap();
    config.database.acquire_timeout = Duration::from_secs(1);
    let store = tessera::store::connect(&config.database).await.unwrap();
    store.migrate().await.unwrap();
    let importer = tessera::cli::import::importer(&config, store, false);
    relay.cut().await;
    let mut lines: Vec<Line> = (1..=3)
        .map(|number| Line {
            number,
            record: Ok(Record {
                issuer: Some(ISSUER.to_owned()),
                subject: Some(format!("cut-{number}")),
                team: Some("imported".to_owned()),
                ..Record::default()
            }),
        })
        .collect();
    // A line refused before the failure is settled, and reported with it for the summary.
    lines.insert(0, Line { number: 0, record: Ok(Record { issuer: Some(ISSUER.to_owned()), ..Record::default() }) });
    let stopped = importer.import(lines).await.expect_err("the database is gone");
    let done: Vec<_> = stopped.done.iter().map(|o| (o.number, o.outcome)).collect();
    assert_eq!(done, [(0, tessera::service::import::Outcome::Refused(tessera::error::ErrorCode::MissingField))]);
}

/// `tessera export` of more than a pipe's buffer (64 KiB) of output, started with its stdout and
/// stderr piped to the test: the export is still writing when the test reads its first line.
async fn a_long_export(
    backend: Backend,
    args: &[&str],
) -> (TestDb, std::sync::Arc<dyn tessera::store::Store>, tempfile::TempDir, tokio::process::Child) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> =
        (0..1500).map(|i| line(&format!("pipe{i}"), Some(&format!("pipe{i}@example.com")), Some("P"))).collect();
    std::fs::write(dir.path().join("many.jsonl"), lines.join("\n")).unwrap();
    assert_eq!(import(dir.path(), &db, "many.jsonl", &[]).await.0, 0);
    let mut export = tessera(dir.path(), &db, &[&["export"], args].concat());
    // One worker, as a container limited to one CPU gets: a wait on a file must not hold it.
    export.env("TOKIO_WORKER_THREADS", "1");
    let child = export.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    (db, store, dir, child)
}

/// `tessera export | head -1`: the reader goes away after a line, and the export ends as other
/// commands do when their output's reader has gone, without an error.
async fn an_export_whose_reader_goes_away_ends_quietly(backend: Backend) {
    let (_db, _store, _dir, mut child) = a_long_export(backend, &[]).await;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first).await.unwrap();
    assert!(first.contains("pipe"), "{first}");
    drop(stdout);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// `tessera export | stalled-reader`, or `tessera export -o FIFO` with no reader: an export
/// blocked on its output — on its runtime's one worker — still stops at SIGTERM (exit 130),
/// rather than waiting for the reader: only `kill -9` would end it.
async fn an_export_blocked_on_its_reader_stops_at_sigterm(backend: Backend) {
    let (_db, _store, _dir, child) = a_long_export(backend, &[]).await;
    stops_at_sigterm(child, "pipe_write").await;
    let fifo = tempfile::tempdir().unwrap();
    let fifo = fifo.path().join("out.jsonl");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (_db, _store, _dir, child) = a_long_export(backend, &["--output", fifo.to_str().unwrap()]).await;
    stops_at_sigterm(child, "wait_for_partner").await;
}

/// Sends SIGTERM to `child` once one of its threads waits in the kernel at `waits_in` (its
/// `wchan`), and checks that it stops, saying so, with exit 130.
async fn stops_at_sigterm(mut child: tokio::process::Child, waits_in: &str) {
    let pid = child.id().unwrap();
    let blocked = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        tasks.filter_map(|t| std::fs::read_to_string(t.path().join("wchan")).ok()).any(|w| w.contains(waits_in))
    };
    eventually(&format!("the export waits in {waits_in}"), || async { blocked() }).await;
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("stopped").unwrap();
    assert_eq!(status.code(), Some(130));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).await.unwrap();
    assert!(stderr.contains("tessera: interrupted"), "{stderr}");
}

/// A line whose user is written before the database fails (on the team it joins) is counted as
/// created in the summary, not lost with the failure.
async fn a_user_written_before_the_database_failed_is_counted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let _store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    create_team(dir.path(), &db, "joined").await;
    // Every join as a plain member fails (a user's own default team makes them its owner).
    let sql = db.sql().await;
    sql.inject(
        "INSERT",
        "memberships",
        Some("NEW.role = 'member'"),
        "SELECT RAISE(ABORT, 'injected');",
        "RAISE EXCEPTION 'injected';",
    )
    .await;
    let record = json!({"issuer": ISSUER, "subject": "before-failure", "team": "joined"});
    std::fs::write(dir.path().join("one.jsonl"), record.to_string()).unwrap();
    let (code, summary) = import(dir.path(), &db, "one.jsonl", &[]).await;
    assert_ne!(code, 0, "{summary}");
    assert_eq!(counts(&summary)[1..3], [1, 0], "the user was created: {summary}");
    assert_eq!(sql.count("users").await, 1);
}
