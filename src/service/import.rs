//! Bulk import and export of identities (`tessera import`, `tessera export`): every imported line
//! goes through the admin bootstrap's provisioning, so an imported user is the same as a
//! bootstrapped one (same transaction, same default team, same `user.created` event).
//!
//! Re-importing changes nothing: a batched existence check skips identities that already exist
//! (without touching their `last_seen_at`), and provisioning settles races with other importers.
//! A line's optional `team` names an existing team (id or slug) that the user joins as `member`;
//! a user who is already a member keeps their role.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::Transient;
use super::provisioning::{IdentityClaim, ProvisionError, Provisioner};
use super::teams::{MemberChange, MemberWrite, TeamError, Teams};
use crate::domain::{
    DisplayName, Email, EmailError, IdentityId, Issuer, IssuerError, Role, Subject, TeamId, TeamRef, TextError, UserId,
};
use crate::error::{ErrorCode, PublicError};
use crate::store::{Store, StoreError};

/// One line of an import or export file, as read: every field optional until validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The issuer (normalised on import, as everywhere).
    pub issuer: Option<String>,
    /// The subject at the issuer.
    pub subject: Option<String>,
    /// The email, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the issuer vouched for the email (false when absent).
    #[serde(default)]
    pub email_verified: Option<bool>,
    /// The display name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A team (id or slug) the user joins as member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The provider the identity came through (as `POST /admin/users/bootstrap` takes it); the
    /// issuer entry's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// The columns of a record, in file order (the CSV header).
pub const COLUMNS: [&str; 7] = ["issuer", "subject", "email", "email_verified", "name", "team", "provider"];

/// A line of the input: its number in the file and its record, or why it could not be read.
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: u64,
    /// The record, or the code of what is wrong with the line's syntax.
    pub record: Result<Record, ErrorCode>,
}

/// What became of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new user was provisioned (or, in a dry run, would be).
    Created,
    /// The identity already had a user.
    Existing,
    /// The line was refused, for this reason; nothing was written for it.
    Refused(ErrorCode),
}

/// What became of one line, with its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineOutcome {
    /// The line number.
    pub number: u64,
    /// Created, existing or refused.
    pub outcome: Outcome,
    /// Whether the user joined the line's team (or, in a dry run, would).
    pub joined: bool,
}

/// A validated line.
struct Valid {
    number: u64,
    claim: IdentityClaim,
    team: Option<TeamId>,
}

/// How many team references an import remembers.
const TEAM_CACHE_ENTRIES: usize = 10_000;

/// How often a line is tried again after a transient database failure.
const RETRIES: u32 = 4;

/// The import service: validates lines and provisions them, a batch at a time.
#[derive(Debug)]
pub struct Importer {
    store: Arc<dyn Store>,
    provisioner: Provisioner,
    teams: Teams,
    dry_run: bool,
    /// Teams by the reference a file gives (`None`: no such team), looked up once per import.
    team_cache: Mutex<HashMap<String, Option<TeamId>>>,
    /// In a dry run, the identities that would be created, so that a repeated line counts once.
    would_create: Mutex<HashSet<IdentityKey>>,
    /// In a dry run, the memberships that would be added (by a digest, as identities are), so
    /// that each counts once, as it would.
    would_join: Mutex<HashSet<IdentityKey>>,
}

/// A batch stopped by the database failing: the failure, and the outcomes of its lines settled
/// before it.
#[derive(Debug)]
pub struct Stopped {
    /// The failure.
    pub error: StoreError,
    /// The outcomes of the lines imported or refused before it.
    pub done: Vec<LineOutcome>,
}

/// Who a dry run would add to a team: an identity it would create, or an existing user.
#[derive(Debug, Clone, Copy)]
enum Member {
    New(IdentityKey),
    User(UserId),
}

/// An identity of a dry run, by a 128-bit digest of its issuer and subject: a file of millions of
/// new identities is remembered in 16 bytes each, not in their text.
type IdentityKey = [u8; 16];

fn identity_key(issuer: &str, subject: &str) -> IdentityKey {
    let mut text = Vec::with_capacity(issuer.len() + subject.len() + 1);
    text.extend_from_slice(issuer.as_bytes());
    // No issuer holds a NUL: the pair is read back unambiguously.
    text.push(0);
    text.extend_from_slice(subject.as_bytes());
    digest16(&text)
}

/// The first 128 bits of `text`'s SHA-256: what a dry run remembers of a line.
fn digest16(text: &[u8]) -> [u8; 16] {
    let mut key = [0; 16];
    key.copy_from_slice(&crate::crypto::sha256(text)[..16]);
    key
}

impl Importer {
    /// Creates the service; with `dry_run` it reads and validates but writes nothing.
    pub fn new(store: Arc<dyn Store>, provisioner: Provisioner, teams: Teams, dry_run: bool) -> Self {
        Self {
            store,
            provisioner,
            teams,
            dry_run,
            team_cache: Mutex::new(HashMap::new()),
            would_create: Mutex::new(HashSet::new()),
            would_join: Mutex::new(HashSet::new()),
        }
    }

    /// Whether this importer writes nothing.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// In a dry run, whether adding `member` to `team` is new to this import.
    fn would_join(&self, member: Member, team: TeamId) -> bool {
        let (tag, member) = match member {
            Member::New(key) => (b'n', key),
            Member::User(user) => (b'u', *user.as_uuid().as_bytes()),
        };
        let mut text = Vec::with_capacity(33);
        text.push(tag);
        text.extend_from_slice(&member);
        text.extend_from_slice(team.as_uuid().as_bytes());
        self.would_join.lock().unwrap_or_else(|e| e.into_inner()).insert(digest16(&text))
    }

    /// Imports a batch of lines, in order. A refused line does not stop the batch; a database
    /// failure (after retries of transient ones) does, and is returned with the outcomes of the
    /// lines settled before it (imported, or refused), so that a summary counts them: a re-run
    /// picks up the rest.
    pub async fn import(&self, lines: Vec<Line>) -> Result<Vec<LineOutcome>, Stopped> {
        let mut outcomes = Vec::with_capacity(lines.len());
        match self.import_into(lines, &mut outcomes).await {
            Ok(()) => Ok(outcomes),
            Err(error) => Err(Stopped { error, done: outcomes }),
        }
    }

    async fn import_into(&self, lines: Vec<Line>, outcomes: &mut Vec<LineOutcome>) -> Result<(), StoreError> {
        let mut valid = Vec::with_capacity(lines.len());
        for line in lines {
            let (claim, team) = match self.validate(line.record) {
                Ok(valid) => valid,
                Err(code) => {
                    outcomes.push(refused(line.number, code));
                    continue;
                }
            };
            // The database failing is not the line's fault: it stops the import, as below.
            let team = match team {
                None => None,
                Some(reference) => match self.team(&reference).await? {
                    Ok(team) => Some(team),
                    Err(code) => {
                        outcomes.push(refused(line.number, code));
                        continue;
                    }
                },
            };
            valid.push(Valid { number: line.number, claim, team });
        }
        let existing = self.existing(&valid).await?;
        for line in valid {
            let key = (line.claim.issuer.as_str().to_owned(), line.claim.subject.as_str().to_owned());
            let outcome = match existing.get(&key) {
                // A disabled user joins no team, as on the provisioning path.
                Some((_, true)) => Ok(LineOutcome { number: line.number, outcome: Outcome::Existing, joined: false }),
                Some((user, false)) => self.join(line.number, Outcome::Existing, *user, line.team).await,
                None => self.provision(line).await,
            };
            match outcome {
                Ok(outcome) => outcomes.push(outcome),
                // A user written before the failure (its team not joined) is counted.
                Err(Failure { error, settled }) => {
                    outcomes.extend(settled);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Parses a record into a claim and the team it names, or the code of the first thing wrong
    /// with it.
    fn validate(&self, record: Result<Record, ErrorCode>) -> Result<(IdentityClaim, Option<String>), ErrorCode> {
        let record = record?;
        let issuer = Issuer::parse(required(record.issuer.as_deref())?)
            .map_err(|e| if e == IssuerError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidIssuer })?;
        // Taken as written (a CSV record's spaces around it are refused when it is read).
        let subject = required(record.subject.as_deref())?;
        let subject = Subject::parse(subject).map_err(|e| text_code(e, ErrorCode::InvalidSubject))?;
        let email = match record.email.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            None => None,
            Some(email) => Some(Email::parse(email).map_err(|e| {
                if e == EmailError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidEmail }
            })?),
        };
        let name = DisplayName::parse_optional(record.name.as_deref().filter(|n| !n.trim().is_empty()))
            .map_err(|e| text_code(e, ErrorCode::InvalidName))?;
        if !self.provisioner.allows(&issuer) {
            return Err(ErrorCode::IssuerNotAllowed);
        }
        let team = record.team.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
        let provider = crate::domain::provider_label(record.provider.as_deref())
            .map_err(|e| text_code(e, ErrorCode::InvalidRequest))?;
        let claim = IdentityClaim {
            issuer,
            subject,
            email,
            email_verified: record.email_verified.unwrap_or(false),
            name,
            provider,
        };
        Ok((claim, team))
    }

    /// The id of the team a file names, looked up once per import; the line's refusal when there
    /// is no such team, or the database's failure (after retries), which stops the import.
    async fn team(&self, reference: &str) -> Result<Result<TeamId, ErrorCode>, StoreError> {
        if let Some(known) = self.team_cache.lock().unwrap_or_else(|e| e.into_inner()).get(reference) {
            return Ok(known.ok_or(ErrorCode::TeamNotFound));
        }
        let Ok(parsed) = TeamRef::parse(reference) else { return Ok(Err(ErrorCode::InvalidTeam)) };
        let found = match retry(|| self.teams.find(&parsed)).await {
            Ok(team) => Some(team.id),
            Err(TeamError::TeamNotFound) => None,
            Err(TeamError::Store(e)) => return Err(e),
            Err(e) => return Ok(Err(e.code())),
        };
        let mut cache = self.team_cache.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded, so that a file naming a million teams that do not exist does not hold them
        // all: past the bound, references are looked up each time.
        if cache.len() < TEAM_CACHE_ENTRIES {
            cache.insert(reference.to_owned(), found);
        }
        Ok(found.ok_or(ErrorCode::TeamNotFound))
    }

    /// The users of those of the lines' identities that exist, by (issuer, subject).
    /// The lines' identities that exist: their users, and whether each is disabled.
    async fn existing(&self, lines: &[Valid]) -> Result<HashMap<(String, String), (UserId, bool)>, StoreError> {
        let mut by_issuer: HashMap<&Issuer, Vec<Subject>> = HashMap::new();
        for line in lines {
            by_issuer.entry(&line.claim.issuer).or_default().push(line.claim.subject.clone());
        }
        let mut found = HashMap::new();
        for (issuer, subjects) in by_issuer {
            for (subject, user, disabled) in retry(|| self.store.existing_identities(issuer, &subjects)).await? {
                found.insert((issuer.as_str().to_owned(), subject.as_str().to_owned()), (user, disabled));
            }
        }
        Ok(found)
    }

    /// Provisions a line's identity through the admin bootstrap.
    async fn provision(&self, line: Valid) -> Result<LineOutcome, Failure> {
        if self.dry_run {
            let key = identity_key(line.claim.issuer.as_str(), line.claim.subject.as_str());
            let first = self.would_create.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
            let outcome = if first { Outcome::Created } else { Outcome::Existing };
            let joined = line.team.is_some_and(|team| self.would_join(Member::New(key), team));
            return Ok(LineOutcome { number: line.number, outcome, joined });
        }
        match retry(|| self.provisioner.bootstrap(line.claim.clone())).await {
            Ok(provisioned) => {
                let outcome = if provisioned.created { Outcome::Created } else { Outcome::Existing };
                self.join(line.number, outcome, provisioned.user.id, line.team).await
            }
            // Another importer (or a sign-in) got there first, and the user is disabled.
            Err(ProvisionError::UserDisabled) => {
                Ok(LineOutcome { number: line.number, outcome: Outcome::Existing, joined: false })
            }
            Err(ProvisionError::Store(e)) => Err(e.into()),
            Err(e) => Ok(refused(line.number, e.code())),
        }
    }

    /// Makes `user` a member of `team` unless they already are one (in any role).
    async fn join(
        &self,
        number: u64,
        outcome: Outcome,
        user: UserId,
        team: Option<TeamId>,
    ) -> Result<LineOutcome, Failure> {
        // The line's user is written by now: a failure reports it, not joined.
        let failed = |error| Failure { error, settled: Some(LineOutcome { number, outcome, joined: false }) };
        let Some(team) = team else {
            return Ok(LineOutcome { number, outcome, joined: false });
        };
        let team_id = team;
        let team = TeamRef::Id(team);
        // The user is written by now: a team that went away meanwhile (deleted while the import
        // ran) leaves the line created or existing, not joined, and says so in a warning; the
        // line is not "refused", which would claim nothing was written.
        let not_joined = |e: TeamError| {
            tracing::warn!(line = number, team_id = %team_id, code = e.code().as_str(), "the line's user was not added to its team");
            LineOutcome { number, outcome, joined: false }
        };
        let role = match retry(|| self.teams.role_of(&team, user)).await {
            Ok((_, role)) => role,
            Err(TeamError::Store(e)) => return Err(failed(e)),
            Err(e) => return Ok(not_joined(e)),
        };
        if role.is_some() {
            return Ok(LineOutcome { number, outcome, joined: false });
        }
        if self.dry_run {
            return Ok(LineOutcome { number, outcome, joined: self.would_join(Member::User(user), team_id) });
        }
        // Add-only: a role given between the look above and this write stays as it is.
        match retry(|| self.teams.write_member(&team, None, user, Role::Member, MemberWrite::Join)).await {
            Ok(change) => Ok(LineOutcome { number, outcome, joined: change == MemberChange::Added }),
            Err(TeamError::Store(e)) => Err(failed(e)),
            Err(e) => Ok(not_joined(e)),
        }
    }
}

/// A database failure while importing a line, with the line's outcome when its user was written
/// before it.
struct Failure {
    error: StoreError,
    settled: Option<LineOutcome>,
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self { error, settled: None }
    }
}

fn refused(number: u64, code: ErrorCode) -> LineOutcome {
    LineOutcome { number, outcome: Outcome::Refused(code), joined: false }
}

fn required(value: Option<&str>) -> Result<&str, ErrorCode> {
    value.filter(|v| !v.trim().is_empty()).ok_or(ErrorCode::MissingField)
}

fn text_code(error: TextError, invalid: ErrorCode) -> ErrorCode {
    match error {
        TextError::TooLong(_) => ErrorCode::FieldTooLong,
        TextError::Empty => ErrorCode::MissingField,
        TextError::ControlCharacters => invalid,
    }
}

impl Transient for ProvisionError {
    fn is_transient(&self) -> bool {
        matches!(self, ProvisionError::Store(e) if e.is_transient())
    }
}

impl Transient for TeamError {
    fn is_transient(&self) -> bool {
        matches!(self, TeamError::Store(e) if e.is_transient())
    }
}

/// Runs `attempt` again, with growing pauses, while it fails transiently: at most [`RETRIES`]
/// times.
async fn retry<T, E: Transient, F: Future<Output = Result<T, E>>>(attempt: impl FnMut() -> F) -> Result<T, E> {
    let mut retries = 0;
    super::retry_transient(attempt, |_, _| {
        retries += 1;
        retries <= RETRIES
    })
    .await
}

/// How many identities [`export_page`] reads at a time.
pub const EXPORT_PAGE: i64 = 1000;

/// A page of identities after `after`, as records (the user's email, verification and name; no
/// team), with the cursor of the next page (`None`: this was the last).
pub async fn export_page(
    store: &dyn Store,
    after: Option<IdentityId>,
) -> Result<(Vec<Record>, Option<IdentityId>), StoreError> {
    let page = store.export_identities(after, EXPORT_PAGE).await?;
    let next = if page.len() as i64 == EXPORT_PAGE { page.last().map(|e| e.identity.id) } else { None };
    let records = page
        .into_iter()
        .map(|e| Record {
            issuer: Some(e.identity.issuer.as_str().to_owned()),
            subject: Some(e.identity.subject.as_str().to_owned()),
            email: e.user.email,
            email_verified: Some(e.user.email_verified),
            name: e.user.name,
            team: None,
            provider: Some(e.identity.provider),
        })
        .collect();
    Ok((records, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_from_json_and_refuses_unknown_fields() {
        let record: Record =
            serde_json::from_str(r#"{"issuer":"https://a.example","subject":"s","email_verified":true}"#).unwrap();
        assert_eq!(record.subject.as_deref(), Some("s"));
        assert_eq!(record.email_verified, Some(true));
        assert!(serde_json::from_str::<Record>(r#"{"issuer":"x","subjet":"s"}"#).is_err());
        let written = serde_json::to_string(&Record { issuer: Some("i".into()), ..Record::default() }).unwrap();
        assert_eq!(written, r#"{"issuer":"i","subject":null,"email_verified":null}"#);
    }
}
