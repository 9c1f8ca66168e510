//! Operators' commands against the configured database: `tessera users …`, `tessera teams …`,
//! `tessera clients …`. They go through the same services as the admin API (the same rules,
//! events and answers), print tables for people and, with `--json`, the admin API's bodies.
//! Their changes are in the audit log as the admin API's are, by the actor `system` named `cli`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{fail, time};
use crate::config::Config;
use crate::domain::{DisplayName, Email, Slug, TeamRef, UserId};
use crate::error::PublicError;
use crate::http::responses::{
    ClientResponse, TeamListResponse, TeamResponse, UserListResponse, UserProfileResponse, UserResponse,
};
use crate::service::audit::Audit;
use crate::service::op::clients::{Clients, MAX_PAGE as MAX_CLIENT_PAGE};
use crate::service::principals::PrincipalCache;
use crate::service::provisioning::Provisioner;
use crate::service::teams::Teams;
use crate::service::users::{PageRequest, UserFilter, Users};
use crate::store::{ActorKind, NewAuditEvent, Store};
use crate::upstream::issuers::IssuerRegistry;

/// User actions.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users, oldest first, a page at a time.
    List {
        /// Only the user(s) with this email (compared ignoring ASCII case, as linking does).
        #[arg(long, value_parser = parse_email)]
        email: Option<Email>,
        /// Only members of this team (id or slug).
        #[arg(long, value_parser = parse_team)]
        team: Option<TeamRef>,
        /// Only disabled users.
        #[arg(long, conflicts_with = "enabled")]
        disabled: bool,
        /// Only enabled users.
        #[arg(long)]
        enabled: bool,
        /// Paging and output.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a user with their identities and teams.
    Show {
        /// The user id.
        #[arg(value_parser = parse_user_id)]
        id: UserId,
        /// Print the admin API's JSON body.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their tokens and bootstraps are refused, their sessions deleted.
    Disable {
        /// The user id.
        #[arg(value_parser = parse_user_id)]
        id: UserId,
        /// Print the admin API's JSON body.
        #[arg(long)]
        json: bool,
    },
    /// Enable a disabled user again.
    Enable {
        /// The user id.
        #[arg(value_parser = parse_user_id)]
        id: UserId,
        /// Print the admin API's JSON body.
        #[arg(long)]
        json: bool,
    },
}

/// Team actions.
#[derive(Debug, Subcommand)]
pub enum TeamsCommand {
    /// List teams, oldest first, a page at a time.
    List {
        /// Only teams whose slug starts with this (a-z, 0-9 and -, as slugs are).
        #[arg(long, value_parser = slug_prefix)]
        slug_prefix: Option<String>,
        /// Paging and output.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Create a team.
    Create {
        /// Its slug: 1 to 63 characters of a-z, 0-9 and single inner hyphens.
        #[arg(value_parser = parse_slug)]
        slug: Slug,
        /// Its display name.
        name: String,
        /// A user to make its owner.
        #[arg(long, value_parser = parse_user_id)]
        owner: Option<UserId>,
        /// Print the admin API's JSON body.
        #[arg(long)]
        json: bool,
    },
}

/// Client actions (read-only: clients are changed through the admin API or the configuration
/// file).
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// List the registered clients, by id.
    List {
        /// Print JSON (`{"clients": [...]}`).
        #[arg(long)]
        json: bool,
    },
    /// Show one client.
    Show {
        /// The client id.
        id: String,
        /// Print the admin API's JSON body.
        #[arg(long)]
        json: bool,
    },
}

/// Paging and output options of a listing.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// How many rows (1 to 200).
    #[arg(long, default_value_t = crate::service::users::DEFAULT_PAGE, value_parser = clap::value_parser!(u32).range(1..=200))]
    limit: u32,
    /// Where to start: the cursor the previous page printed.
    #[arg(long)]
    cursor: Option<String>,
    /// Print the admin API's JSON body.
    #[arg(long)]
    json: bool,
}

fn parse_email(value: &str) -> Result<Email, String> {
    Email::parse(value).map_err(|e| e.to_string())
}

fn parse_team(value: &str) -> Result<TeamRef, String> {
    TeamRef::parse(value).map_err(|e| e.to_string())
}

fn parse_user_id(value: &str) -> Result<UserId, String> {
    value.trim().parse().map_err(|_| "a user id is a UUID such as 0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a".to_owned())
}

fn parse_slug(value: &str) -> Result<Slug, String> {
    Slug::parse(value).map_err(|e| e.to_string())
}

/// The services the commands use, on the configured database.
struct Services {
    store: Arc<dyn Store>,
    provisioner: Provisioner,
    users: Users,
    teams: Teams,
    clients: Clients,
    audit: Audit,
}

impl Services {
    async fn open(config: &Config) -> Result<Self, ExitCode> {
        let store = super::open_store(config).await?;
        // No key is fetched: the registry only answers which issuers are allowed.
        let issuers = Arc::new(IssuerRegistry::from_config(config));
        let (principals, _) = PrincipalCache::with_token_cache(&config.cache);
        let issuer = config.auth.public_url.as_ref().map(|url| url.as_str().trim_end_matches('/').to_owned());
        Ok(Self {
            provisioner: Provisioner::new(store.clone(), issuers.clone(), principals.clone()),
            users: Users::new(store.clone(), principals.clone()),
            teams: Teams::new(store.clone(), issuers, principals),
            clients: Clients::new(store.clone(), issuer),
            audit: Audit::new(store.clone(), &config.audit),
            store,
        })
    }

    /// Records a change made by a command, after it committed, with the details and the retries
    /// of the admin API's rows for the same change.
    async fn record(&self, action: &str, target: (&str, String), details: serde_json::Value) {
        let event = NewAuditEvent::new(ActorKind::System, action)
            .actor(None, Some("cli".into()))
            .target(target.0, target.1)
            .details(details);
        self.audit.record_change(event).await;
    }

    async fn close(self, code: ExitCode) -> ExitCode {
        self.store.close().await;
        code
    }
}

/// Prints a refusal with its public code (`tessera: user_not_found: …`); exit code 1.
/// A malformed argument (a cursor that does not decode): exit 2, as for clap's own refusals.
/// A `--slug-prefix` that some slug could begin with; anything else (`Acme`) would list nothing
/// and exit 0, where the API answers 400.
fn slug_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() || crate::domain::Slug::could_begin(value) {
        Ok(value.to_owned())
    } else {
        Err(format!("up to {} characters of a-z, 0-9 and -", crate::domain::Slug::MAX_LEN))
    }
}

fn usage<E: PublicError>(error: &E) -> ExitCode {
    err!("tessera: {}: {}", error.code().as_str(), error.detail());
    ExitCode::from(2)
}

fn refused<E: PublicError>(error: &E) -> ExitCode {
    if error.code().status().is_server_error() {
        return fail(error);
    }
    err!("tessera: {}: {}", error.code().as_str(), error.detail());
    ExitCode::FAILURE
}

pub(super) fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => out!("{text}"),
        Err(e) => err!("tessera: {e}"),
    }
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

/// Runs a `tessera users …` command.
pub async fn users(config: &Config, action: UsersCommand) -> ExitCode {
    let services = match Services::open(config).await {
        Ok(services) => services,
        Err(code) => return code,
    };
    let code = run_users(&services, action).await;
    services.close(code).await
}

async fn run_users(services: &Services, action: UsersCommand) -> ExitCode {
    match action {
        UsersCommand::List { email, team, disabled, enabled, page } => {
            let request = match PageRequest::parse(page.cursor.as_deref(), Some(page.limit)) {
                Ok(request) => request,
                Err(e) => return usage(&e),
            };
            let disabled = if disabled { Some(true) } else { enabled.then_some(false) };
            let filter = UserFilter { email, identity: None, team, disabled };
            let found = match services.users.list(&filter, request).await {
                Ok(found) => found,
                Err(e) => return refused(&e),
            };
            if page.json {
                print_json(&UserListResponse::from(found));
                return ExitCode::SUCCESS;
            }
            out!("{:<36} {:<32} {:<24} {:<8} created_at", "id", "email", "name", "disabled");
            for user in &found.items {
                out!(
                    "{:<36} {:<32} {:<24} {:<8} {}",
                    user.id,
                    or_dash(user.email.as_deref()),
                    or_dash(user.name.as_deref()),
                    if user.disabled { "yes" } else { "no" },
                    time(Some(user.created_at))
                );
            }
            print_next(found.next_cursor.as_deref());
            ExitCode::SUCCESS
        }
        UsersCommand::Show { id, json } => match services.provisioner.user_profile(id).await {
            Ok(profile) if json => {
                print_json(&UserProfileResponse::from(profile));
                ExitCode::SUCCESS
            }
            Ok(profile) => {
                let user = &profile.user;
                out!("id:         {}", user.id);
                out!("email:      {}", or_dash(user.email.as_deref()));
                out!("name:       {}", or_dash(user.name.as_deref()));
                out!("disabled:   {}", if user.disabled { "yes" } else { "no" });
                out!("created_at: {}", time(Some(user.created_at)));
                out!("identities:");
                for identity in &profile.identities {
                    let primary = if profile.primary_identity_id == Some(identity.id) { " (primary)" } else { "" };
                    out!(
                        "  {} {} via {}{primary}",
                        identity.issuer.as_str(),
                        identity.subject.as_str(),
                        identity.provider
                    );
                }
                out!("teams:");
                for membership in &profile.teams {
                    let default = if membership.is_default { " (default)" } else { "" };
                    out!(
                        "  {} {} {}{default}",
                        membership.team.id,
                        membership.team.slug.as_str(),
                        membership.role.as_str()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => refused(&e),
        },
        UsersCommand::Disable { id, json } => set_disabled(services, id, true, json).await,
        UsersCommand::Enable { id, json } => set_disabled(services, id, false, json).await,
    }
}

async fn set_disabled(services: &Services, id: UserId, disabled: bool, json: bool) -> ExitCode {
    let changed = services.provisioner.set_disabled(id, disabled).await;
    // A user already so (with no session left to end) changed nothing: no audit row. One
    // already disabled whose sessions were ended has `fields` empty, as the API writes it.
    if let Ok(update) = &changed
        && update.changed
    {
        let action = if disabled { "user.disabled" } else { "user.enabled" };
        let details = serde_json::json!({ "fields": update.fields });
        services.record(action, ("user", id.to_string()), details).await;
    }
    match changed.map(|update| update.user) {
        Ok(user) if json => {
            print_json(&UserResponse::from(user));
            ExitCode::SUCCESS
        }
        Ok(user) => {
            out!("user {} is {}", user.id, if user.disabled { "disabled" } else { "enabled" });
            ExitCode::SUCCESS
        }
        Err(e) => refused(&e),
    }
}

fn print_next(cursor: Option<&str>) {
    if let Some(cursor) = cursor {
        // On stderr, so that the table on stdout stays a table.
        err!("more: run again with --cursor {cursor}");
    }
}

/// Runs a `tessera teams …` command.
pub async fn teams(config: &Config, action: TeamsCommand) -> ExitCode {
    let services = match Services::open(config).await {
        Ok(services) => services,
        Err(code) => return code,
    };
    let code = run_teams(&services, action).await;
    services.close(code).await
}

async fn run_teams(services: &Services, action: TeamsCommand) -> ExitCode {
    match action {
        TeamsCommand::List { slug_prefix, page } => {
            let request = match PageRequest::parse(page.cursor.as_deref(), Some(page.limit)) {
                Ok(request) => request,
                Err(e) => return usage(&e),
            };
            let found = match services.teams.list(slug_prefix.as_deref().filter(|p| !p.is_empty()), request).await {
                Ok(found) => found,
                Err(e) => return refused(&e),
            };
            if page.json {
                print_json(&TeamListResponse::from(found));
                return ExitCode::SUCCESS;
            }
            out!("{:<36} {:<32} {:<32} created_at", "id", "slug", "name");
            for team in &found.items {
                out!("{:<36} {:<32} {:<32} {}", team.id, team.slug.as_str(), team.name, time(Some(team.created_at)));
            }
            print_next(found.next_cursor.as_deref());
            ExitCode::SUCCESS
        }
        TeamsCommand::Create { slug, name, owner, json } => {
            let name = match DisplayName::parse_optional(Some(&name)) {
                Ok(Some(name)) => name,
                Ok(None) => {
                    err!("tessera: the team name must not be blank");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    err!("tessera: the team name: {e}");
                    return ExitCode::from(2);
                }
            };
            let created = services.teams.create(slug, name.as_str().to_owned(), owner).await;
            if let Ok(team) = &created {
                let mut details = serde_json::json!({ "slug": team.slug.as_str() });
                if let Some(owner) = owner {
                    details["owner"] = owner.to_string().into();
                }
                services.record("team.created", ("team", team.id.to_string()), details).await;
            }
            match created {
                Ok(team) if json => {
                    print_json(&TeamResponse::from(team));
                    ExitCode::SUCCESS
                }
                Ok(team) => {
                    out!("created team {} ({})", team.slug.as_str(), team.id);
                    ExitCode::SUCCESS
                }
                Err(e) => refused(&e),
            }
        }
    }
}

/// The JSON of `tessera clients list --json`.
#[derive(Serialize)]
struct ClientList {
    clients: Vec<ClientResponse>,
}

/// Runs a `tessera clients …` command.
pub async fn clients(config: &Config, action: ClientsCommand) -> ExitCode {
    let services = match Services::open(config).await {
        Ok(services) => services,
        Err(code) => return code,
    };
    let code = run_clients(&services, action).await;
    services.close(code).await
}

async fn run_clients(services: &Services, action: ClientsCommand) -> ExitCode {
    match action {
        ClientsCommand::List { json } => {
            let mut all = Vec::new();
            loop {
                let after = all.last().map(|c: &crate::domain::Client| c.id.clone());
                let (page, more) = match services.clients.list(after.as_ref(), MAX_CLIENT_PAGE).await {
                    Ok(page) => page,
                    Err(e) => return refused(&e),
                };
                all.extend(page);
                if !more {
                    break;
                }
            }
            let clients: Vec<ClientResponse> = all.into_iter().map(ClientResponse::from).collect();
            if json {
                print_json(&ClientList { clients });
                return ExitCode::SUCCESS;
            }
            out!("{:<32} {:<12} {:<8} {:<32} created_at", "client_id", "kind", "source", "name");
            for client in &clients {
                out!(
                    "{:<32} {:<12} {:<8} {:<32} {}",
                    client.client_id,
                    enum_text(&client.kind),
                    enum_text(&client.source),
                    client.name,
                    time(Some(client.created_at))
                );
            }
            ExitCode::SUCCESS
        }
        ClientsCommand::Show { id, json } => match services.clients.find(&id).await {
            Ok(client) => {
                let client = ClientResponse::from(client);
                if json {
                    print_json(&client);
                    return ExitCode::SUCCESS;
                }
                out!("client_id:     {}", client.client_id);
                out!("name:          {}", client.name);
                out!("kind:          {}", enum_text(&client.kind));
                out!("source:        {}", enum_text(&client.source));
                out!("has_secret:    {}", if client.has_secret { "yes" } else { "no" });
                out!("redirect_uris: {}", client.redirect_uris.join(" "));
                out!("scopes:        {}", client.scopes.join(" "));
                out!("grant_types:   {}", client.grant_types.join(" "));
                out!("created_at:    {}", time(Some(client.created_at)));
                ExitCode::SUCCESS
            }
            Err(e) => refused(&e),
        },
    }
}

/// The JSON string of a small serialised enum (`kind`, `source`).
fn enum_text(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => "-".to_owned(),
    }
}
