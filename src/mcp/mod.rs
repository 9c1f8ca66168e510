//! The MCP server (Model Context Protocol): two tools, `manage_auth_profiles`, through which an AI
//! agent acting for a user manages that user's teams' auth profiles (connected accounts), and
//! `list_teams`, which says what those teams are.
//!
//! A front door beside [`crate::http`], served by it at `/mcp` over Streamable HTTP (see
//! `http::mcp`, which checks the bearer token and hands the user in as a [`Caller`]). Like an HTTP
//! handler, a tool call parses its arguments (with the REST API's parsers), calls the service
//! that holds its rules (the auth-profile service: team membership, ownership, the pending-profile
//! rules; the validator's read of the user, for `list_teams`), and answers with the REST API's
//! response types. A failure is a tool error (`isError: true`) whose
//! JSON content is `{"code", "detail", …}` from the one error table, members such as
//! `existing_slug` included — never a success carrying an error, never database text.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CustomRequest, CustomResult, Implementation, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::schemars::JsonSchema;
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::domain::{ProfileRef, TeamRef, UserId};
use crate::error::ErrorCode;
use crate::http::auth_profiles::api::{CreateRequest, parse_create, parse_display_name, parse_scopes, parse_slug};
use crate::http::extract::parse_team;
use crate::http::problem::ApiError;
use crate::http::responses::{
    AuthProfileListResponse, AuthProfileResponse, AuthProfileTestResponse, AuthProfileUpdateResponse,
    AuthProfileWithLinkResponse, CredentialResponse, TeamMembershipResponse,
};
use crate::service::auth_profiles::AuthProfiles;
use crate::service::profile_actions::{ProfileActions, ProfilePatch};
use crate::service::validation::Validator;

/// The auth-profile tool's name, as the system it comes from names it.
pub const TOOL: &str = "manage_auth_profiles";

/// The tool that lists the caller's teams (what `manage_auth_profiles` takes as `team`).
pub const TEAMS_TOOL: &str = "list_teams";

/// The user a tool call acts for: put into the HTTP request's extensions by `http::mcp` once the
/// bearer token is verified, read back by [`McpServer::call_tool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub UserId);

/// What `manage_auth_profiles` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(crate = "rmcp::schemars", inline)]
pub enum Action {
    /// The team's profiles, and the caller's own personal ones.
    List,
    /// One profile, by `slug`.
    Get,
    /// A new profile: an OAuth one comes back `pending_auth` with a `connect_url` to show the
    /// user, who opens it in a browser signed in to Tessera. Without `slug`, the caller's pending
    /// profile for the same connector and provider is reused with a fresh link.
    Create,
    /// Revokes the profile `slug`: credentials wiped, the slug free again.
    Delete,
    /// A fresh `connect_url` for the profile `slug`: to reconnect it, or repair a `needs_reauth`
    /// one.
    Connect,
    /// The credential of the profile `slug`, whatever its kind: an OAuth profile's access token
    /// (refreshed first when it expires within five minutes), an `env` profile's values, a
    /// browser session's storage state.
    Credentials,
    /// Changes the profile `slug`: `display_name`, `new_slug`, `scopes` (wider scopes on a
    /// connected OAuth profile need a reconnection: the answer says so and carries a
    /// `connect_url`).
    Update,
    /// Makes the profile `slug` the team's default for its connector.
    #[serde(alias = "set-default")]
    SetDefault,
    /// Checks that the credential of the profile `slug` works, at the provider; never returns it.
    Test,
}

impl Action {
    /// The optional arguments the action reads.
    fn reads(self) -> &'static [&'static str] {
        match self {
            Action::List => &[],
            Action::Get | Action::Delete | Action::Credentials | Action::SetDefault | Action::Test => &["slug"],
            Action::Connect => &["slug", "allow_account_change"],
            Action::Update => &["slug", "display_name", "new_slug", "scopes"],
            Action::Create => &["slug", "connector_key", "profile_kind", "provider", "display_name", "scopes"],
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::Get => "get",
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Connect => "connect",
            Action::Credentials => "credentials",
            Action::Update => "update",
            Action::SetDefault => "set_default",
            Action::Test => "test",
        }
    }
}

/// The arguments of `manage_auth_profiles` (the names of the system it comes from).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct Arguments {
    /// What to do.
    pub action: Action,
    /// The team: its id or slug.
    pub team: String,
    /// The profile's slug: required by every action but `list` and `create`; optional for
    /// `create` (derived from `display_name` when absent).
    #[serde(default)]
    pub slug: Option<String>,
    /// `create`: the connector that uses the profile, e.g. `github-issues`.
    #[serde(default)]
    pub connector_key: Option<String>,
    /// `create`: `oauth_account` (the user's own account), `oauth_app` (a team-wide account),
    /// `env` (API keys, filled in by the member through the returned connect link) or
    /// `browser_session` (created pending, with no link: its signed-in browser state is stored by
    /// a backend through the REST API, `PUT …/auth-profiles/{slug}/browser-session`, before the
    /// pending profile expires).
    #[serde(default)]
    pub profile_kind: Option<String>,
    /// `create`: the provider, e.g. `github` (OAuth kinds need a provider configured in Tessera).
    #[serde(default)]
    pub provider: Option<String>,
    /// `create`, `update`: the profile's display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// `update`: the profile's new slug.
    #[serde(default)]
    pub new_slug: Option<String>,
    /// `create`, `update`: the scopes to ask the provider for (its own defaults when absent).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// `connect`: whether the link may connect another provider account than the one connected
    /// before (default false).
    #[serde(default)]
    pub allow_account_change: Option<bool>,
}

/// The `manage_auth_profiles` tool as `tools/list` describes it.
pub fn tool() -> Tool {
    Tool::new(
        TOOL,
        "Manage the auth profiles (connected accounts) of a team you are a member of: list them, read one, \
         create one (an OAuth profile comes back with a connect_url: show it to the user, who opens it in a \
         browser to connect the account), delete one, get a new connect link, get its credential (an OAuth \
         access token, an env profile's values or a browser session's storage state), update it (display \
         name, new_slug, scopes), make it its connector's team default (set_default), or test that its \
         credential works at the provider. Errors carry a stable `code`; a pending_auth_conflict \
         names the pending profile in `existing_slug`.",
        JsonObject::new(),
    )
    .with_input_schema::<Arguments>()
    .with_annotations(ToolAnnotations::new().destructive(true).open_world(true))
}

/// The `list_teams` tool as `tools/list` describes it: no arguments, read only.
pub fn teams_tool() -> Tool {
    let no_arguments = json!({"type": "object", "properties": {}, "additionalProperties": false});
    let Value::Object(schema) = no_arguments else { unreachable!("an object") };
    Tool::new(
        TEAMS_TOOL,
        "List the teams you are a member of: each team's id, slug and name, your role in it, and whether it is \
         your default team. Pass a team's slug or id as `team` to manage_auth_profiles.",
        schema,
    )
    .with_annotations(ToolAnnotations::new().read_only(true).destructive(false).open_world(false))
}

/// `call`'s answer, or, should it panic, an `internal_error` (logged with the panic's message).
async fn answered(
    call: impl std::future::Future<Output = Result<Value, ApiError>> + Send + 'static,
) -> Result<Value, ApiError> {
    match tokio::spawn(tracing::Instrument::in_current_span(call)).await {
        Ok(answer) => answer,
        Err(error) => {
            let cause = match error.try_into_panic() {
                Ok(panic) => format!("a tool call panicked: {}", crate::error::panic_message(panic.as_ref())),
                Err(_) => "a tool call was cancelled".to_owned(),
            };
            Err(ApiError::internal(std::io::Error::other(cause)))
        }
    }
}

/// The MCP server: [`tool`] over the auth-profile service, and [`teams_tool`] over the user's
/// profile as the validator reads it (as `/v1/me` does).
#[derive(Clone)]
pub struct McpServer {
    auth_profiles: AuthProfiles,
    validator: Arc<Validator>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").finish_non_exhaustive()
    }
}

impl McpServer {
    /// A server over `auth_profiles`, reading users' teams through `validator`.
    pub fn new(auth_profiles: AuthProfiles, validator: Arc<Validator>) -> Self {
        Self { auth_profiles, validator }
    }

    /// Runs one call of `list_teams` for `user` (which takes no arguments); the value is the
    /// result's JSON content: `{"teams": [...]}`, the default team first.
    pub async fn list_teams(&self, user: UserId, arguments: Option<JsonObject>) -> Result<Value, ApiError> {
        if arguments.is_some_and(|arguments| !arguments.is_empty()) {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "list_teams takes no arguments"));
        }
        let teams = self.validator.profile(user).await?.teams;
        Ok(json!({"teams": teams.into_iter().map(TeamMembershipResponse::from).collect::<Vec<_>>()}))
    }

    /// Runs one call of `manage_auth_profiles` for `user`; the value is the result's JSON content.
    /// `x_request_id` (the HTTP request's id) goes in the audit rows of the changes it makes.
    pub async fn manage_auth_profiles(
        &self,
        user: UserId,
        arguments: Option<JsonObject>,
        x_request_id: Option<&str>,
    ) -> Result<Value, ApiError> {
        let arguments = parse_arguments(arguments)?;
        let team = parse_team(arguments.team.trim())?;
        let service = &self.auth_profiles;
        let value = match arguments.action {
            Action::List => to_json(AuthProfileListResponse::from(service.list(&team, user).await?)),
            Action::Get => {
                let slug = slug_of(&arguments)?;
                to_json(AuthProfileResponse::from(service.get(&team, user, &slug).await?))
            }
            Action::Create => self.create(&team, user, arguments, x_request_id).await?,
            Action::Delete => {
                let slug = slug_of(&arguments)?;
                service.revoke(&team, user, &slug, x_request_id).await?;
                json!({"slug": arguments.slug, "status": "revoked"})
            }
            Action::Connect => {
                let slug = slug_of(&arguments)?;
                let allow = arguments.allow_account_change.unwrap_or(false);
                to_json(AuthProfileWithLinkResponse::from(service.connect_link(&team, user, &slug, allow).await?))
            }
            Action::Credentials => {
                let slug = slug_of(&arguments)?;
                to_json(CredentialResponse::from(service.credentials(&team, user, &slug).await?))
            }
            Action::Update => {
                let slug = slug_of(&arguments)?;
                let patch = ProfilePatch {
                    display_name: arguments.display_name.as_deref().map(parse_display_name).transpose()?,
                    slug: arguments.new_slug.as_deref().map(parse_slug).transpose()?,
                    scopes: arguments.scopes.map(parse_scopes).transpose()?,
                };
                // In this tool's names: `slug` names the profile here, `new_slug` renames it.
                if patch.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "`update` needs at least one of `display_name`, `new_slug` and `scopes`",
                    ));
                }
                let updated = ProfileActions::new(service).update(&team, user, &slug, patch).await?;
                to_json(AuthProfileUpdateResponse::from(updated))
            }
            Action::SetDefault => {
                let slug = slug_of(&arguments)?;
                to_json(AuthProfileResponse::from(ProfileActions::new(service).set_default(&team, user, &slug).await?))
            }
            Action::Test => {
                let slug = slug_of(&arguments)?;
                to_json(AuthProfileTestResponse::from(ProfileActions::new(service).test(&team, user, &slug).await?))
            }
        };
        Ok(value)
    }

    async fn create(
        &self,
        team: &TeamRef,
        user: UserId,
        arguments: Arguments,
        x_request_id: Option<&str>,
    ) -> Result<Value, ApiError> {
        let request = parse_create(CreateRequest {
            connector_key: arguments.connector_key,
            profile_kind: arguments.profile_kind,
            provider: arguments.provider,
            display_name: arguments.display_name,
            slug: arguments.slug,
            scopes: arguments.scopes,
            ..CreateRequest::default()
        })?;
        let created = self.auth_profiles.create(team, user, request, x_request_id).await?;
        Ok(to_json(AuthProfileWithLinkResponse::from(created)))
    }
}

/// The arguments, or a 400-class error saying what to fix (`missing_field` naming the field,
/// `invalid_request` otherwise).
fn parse_arguments(arguments: Option<JsonObject>) -> Result<Arguments, ApiError> {
    let mut arguments: Arguments =
        serde_json::from_value(Value::Object(arguments.unwrap_or_default())).map_err(|error| {
            let message = error.to_string();
            match message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
                Some(field) => ApiError::new(ErrorCode::MissingField, format!("`{field}` is required")).field(field),
                // Without the values serde quotes (a token pasted into the wrong argument, say).
                None => ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "the arguments do not fit the tool's schema: {}",
                        crate::http::extract::without_values(&message)
                    ),
                ),
            }
        })?;
    // An optional argument left blank is absent: agents often fill every parameter of a schema,
    // with "" for those they mean to leave out (a slug to derive from the display name, say).
    // One given is trimmed, as agents often pad what they fill in: `create` takes " notes " as
    // the slug every other action reads.
    for text in [
        &mut arguments.slug,
        &mut arguments.connector_key,
        &mut arguments.profile_kind,
        &mut arguments.provider,
        &mut arguments.display_name,
        &mut arguments.new_slug,
    ] {
        *text = text.take().map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
    }
    // So are an empty list of scopes and `false` (what such agents fill in for those): an
    // `update` with `"scopes": []` would otherwise reset a profile's scopes to the provider's
    // defaults, and a connected one to needing a reconnection. (The REST API resets them.)
    arguments.scopes = arguments.scopes.take().filter(|scopes| !scopes.is_empty());
    arguments.allow_account_change = arguments.allow_account_change.filter(|allow| *allow);
    // An argument the action does not read is refused, not ignored: the agent would take the
    // answer for a change it did not make (`connect` with new scopes, say).
    let given = [
        ("slug", arguments.slug.is_some()),
        ("connector_key", arguments.connector_key.is_some()),
        ("profile_kind", arguments.profile_kind.is_some()),
        ("provider", arguments.provider.is_some()),
        ("display_name", arguments.display_name.is_some()),
        ("new_slug", arguments.new_slug.is_some()),
        ("scopes", arguments.scopes.is_some()),
        ("allow_account_change", arguments.allow_account_change.is_some()),
    ];
    let read = arguments.action.reads();
    if let Some((field, _)) = given.into_iter().find(|(field, given)| *given && !read.contains(field)) {
        let action = arguments.action.as_str();
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, format!("`{action}` does not take `{field}`")).field(field)
        );
    }
    Ok(arguments)
}

/// The `slug` argument (a slug; the tool names profiles by slug only), required by every action that names one.
fn slug_of(arguments: &Arguments) -> Result<ProfileRef, ApiError> {
    // (Trimmed, and absent when blank, by `parse_arguments`.)
    let Some(slug) = arguments.slug.as_deref() else {
        let action = arguments.action.as_str();
        return Err(ApiError::new(ErrorCode::MissingField, format!("`slug` is required by `{action}`")).field("slug"));
    };
    parse_slug(slug).map(ProfileRef::Slug)
}

fn to_json(response: impl Serialize) -> Value {
    // The response types are plain data: serialising them cannot fail.
    serde_json::to_value(response).unwrap_or(Value::Null)
}

/// A tool error's JSON content: the code, the detail, and the code's members (`field`,
/// `existing_slug`, …). The error is logged here, as the REST API logs its answers.
pub fn tool_error(error: ApiError) -> Value {
    let described = error.describe();
    let mut body = Map::new();
    body.insert("code".into(), described.code.as_str().into());
    body.insert("detail".into(), described.detail.into());
    body.extend(described.extensions);
    Value::Object(body)
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("tessera", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tessera keeps your teams' connected accounts (auth profiles). Use list_teams to learn your \
                 teams, then manage_auth_profiles; when it returns a connect_url, show it to the user and ask \
                 them to open it.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![tool(), teams_tool()]))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        match name {
            TOOL => Some(tool()),
            TEAMS_TOOL => Some(teams_tool()),
            _ => None,
        }
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let teams = match request.name.as_ref() {
            TOOL => false,
            TEAMS_TOOL => true,
            // The client's name is not repeated: rmcp logs the answer at warn.
            _ => {
                return Err(ErrorData::invalid_params(
                    Cow::Owned(format!("there is no such tool; the tools are {TOOL} and {TEAMS_TOOL}")),
                    None,
                ));
            }
        };
        // `http::mcp` lets no request through without a verified caller.
        let parts = context.extensions.get::<http::request::Parts>();
        let caller = parts
            .and_then(|parts| parts.extensions.get::<Caller>())
            .copied()
            .ok_or_else(|| ErrorData::internal_error("the request carries no authenticated user", None))?;
        let x_request_id = parts.and_then(|parts| crate::http::audit::request_id(&parts.headers));
        // In a task of its own: the SDK runs this handler in a task whose panic nothing waits
        // for, and the HTTP request would then wait for an answer forever.
        let server = self.clone();
        let call = async move {
            if teams {
                server.list_teams(caller.0, request.arguments).await
            } else {
                server.manage_auth_profiles(caller.0, request.arguments, x_request_id.as_deref()).await
            }
        };
        let result = match answered(call).await {
            Ok(value) => CallToolResult::structured(value),
            Err(error) => {
                // Counted apart: the transport answers HTTP 200 either way, so a store outage
                // seen only by agents would show in no 5xx count.
                crate::observability::record_mcp_tool_error(error.code());
                CallToolResult::structured_error(tool_error(error))
            }
        };
        Ok(result.into())
    }

    /// A request the SDK could not read as one it knows. A `tools/call` lands here when its
    /// `name` is missing or its `arguments` are not an object (some agents send them as a
    /// string): the invalid params it is, saying what to send, not "method not found".
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        if request.method == "tools/call" {
            return Err(ErrorData::invalid_params(
                "tools/call takes `name` (a string) and `arguments` (an object, not a string of JSON)",
                None,
            ));
        }
        // Nor the method's: whatever the client sent, at warn, in every answer logged.
        Err(ErrorData::new(rmcp::model::ErrorCode::METHOD_NOT_FOUND, "there is no such method", None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tool_takes_the_seed_s_arguments_and_needs_action_and_team() {
        let tool = tool();
        let schema = Value::Object(tool.input_schema.as_ref().clone());
        let properties = schema["properties"].as_object().unwrap();
        let names: Vec<&str> = properties.keys().map(String::as_str).collect();
        for name in ["action", "team", "slug", "connector_key", "profile_kind", "provider", "display_name", "scopes"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert_eq!(schema["required"], json!(["action", "team"]));
        assert_eq!(schema["additionalProperties"], json!(false), "unknown arguments are refused");
        // The actions, each described, inline (no reference for a client to resolve).
        let action = &properties["action"];
        let values: Vec<&str> = match action.get("oneOf") {
            Some(variants) => variants.as_array().unwrap().iter().map(|v| v["const"].as_str().unwrap()).collect(),
            None => action["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect(),
        };
        assert_eq!(
            values,
            ["list", "get", "create", "delete", "connect", "credentials", "update", "set_default", "test"]
        );
        assert!(!schema.to_string().contains("$ref"), "{schema}");
    }

    #[tokio::test]
    async fn a_tool_call_that_panics_is_answered_as_an_internal_error() {
        let answer = answered(async { panic!("a bug") }).await;
        assert_eq!(answer.unwrap_err().code(), ErrorCode::InternalError);
        assert_eq!(answered(async { Ok(json!({"ok": true})) }).await.unwrap(), json!({"ok": true}));
    }

    #[test]
    fn list_teams_takes_no_arguments_and_changes_nothing() {
        let tool = teams_tool();
        let schema = Value::Object(tool.input_schema.as_ref().clone());
        assert_eq!(schema, json!({"type": "object", "properties": {}, "additionalProperties": false}));
        let hints = tool.annotations.unwrap();
        assert_eq!((hints.read_only_hint, hints.destructive_hint), (Some(true), Some(false)));
    }

    #[test]
    fn arguments_that_do_not_fit_say_what_to_fix() {
        let parse = |value: Value| match parse_arguments(value.as_object().cloned()) {
            Ok(_) => panic!("{value} parsed"),
            Err(error) => tool_error(error),
        };
        let missing = parse(json!({"action": "list"}));
        assert_eq!((missing["code"].as_str(), missing["field"].as_str()), (Some("missing_field"), Some("team")));
        assert_eq!(parse(json!({"team": "t"}))["field"], "action");
        let unknown = parse(json!({"action": "list", "team": "t", "org": "x"}));
        assert_eq!(unknown["code"], "invalid_request");
        assert!(unknown["detail"].as_str().unwrap().contains("unknown field"), "{unknown}");
        // A value sent is not quoted back (a secret pasted into the wrong argument).
        let pasted = parse(json!({"action": "get", "team": "t", "allow_account_change": "ghp_SECRET"}));
        assert_eq!(pasted["code"], "invalid_request");
        assert!(!pasted.to_string().contains("ghp_SECRET"), "{pasted}");
        assert_eq!(parse(json!({"action": "explode", "team": "t"}))["code"], "invalid_request");
        assert_eq!(parse(json!({"action": "get", "team": 7}))["code"], "invalid_request");
        let parsed = parse_arguments(json!({"action": "get", "team": "t", "slug": "s"}).as_object().cloned()).unwrap();
        assert_eq!(slug_of(&parsed).unwrap(), ProfileRef::Slug(crate::domain::Slug::parse("s").unwrap()));
        let no_slug = parse_arguments(json!({"action": "delete", "team": "t"}).as_object().cloned()).unwrap();
        let error = tool_error(slug_of(&no_slug).unwrap_err());
        assert_eq!(
            error,
            json!({"code": "missing_field", "detail": "`slug` is required by `delete`", "field": "slug"})
        );
    }

    #[test]
    fn blank_optional_arguments_are_absent() {
        let arguments = json!({
            "action": "create", "team": "t", "connector_key": "notes", "profile_kind": "env",
            "display_name": "Notes", "slug": "", "provider": " ", "new_slug": ""
        });
        let parsed = parse_arguments(arguments.as_object().cloned()).unwrap();
        assert_eq!((parsed.slug, parsed.provider, parsed.new_slug), (None, None, None));
        assert_eq!(parsed.display_name.as_deref(), Some("Notes"));
        // A blank one that is needed is missing, not malformed.
        let blank = parse_arguments(json!({"action": "delete", "team": "t", "slug": "  "}).as_object().cloned());
        assert_eq!(tool_error(slug_of(&blank.unwrap()).unwrap_err())["code"], "missing_field");
        // One padded is trimmed, for `create` as for every other action.
        let padded = json!({"action": "create", "team": "t", "slug": " notes "});
        assert_eq!(parse_arguments(padded.as_object().cloned()).unwrap().slug.as_deref(), Some("notes"));
        let padded = json!({"action": "update", "team": "t", "slug": "notes", "new_slug": "\tlog\n"});
        assert_eq!(parse_arguments(padded.as_object().cloned()).unwrap().new_slug.as_deref(), Some("log"));
        // So are an empty list of scopes and `false`: a rename filled in with `"scopes": []`
        // does not reset the profile's scopes.
        let filled = json!({"action": "update", "team": "t", "slug": "s", "display_name": "X", "new_slug": "",
                            "scopes": [], "allow_account_change": false, "provider": ""});
        let filled = parse_arguments(filled.as_object().cloned()).unwrap();
        assert_eq!((filled.scopes, filled.allow_account_change), (None, None));
    }

    #[test]
    fn an_argument_the_action_does_not_read_is_refused() {
        let refused = |value: Value| tool_error(parse_arguments(value.as_object().cloned()).unwrap_err());
        let connect = refused(json!({"action": "connect", "team": "t", "slug": "s", "scopes": ["repo"]}));
        assert_eq!((connect["code"].as_str(), connect["field"].as_str()), (Some("invalid_request"), Some("scopes")));
        let create = refused(json!({"action": "create", "team": "t", "connector_key": "c", "new_slug": "x"}));
        assert_eq!(create["field"], "new_slug");
        let update = refused(json!({"action": "update", "team": "t", "slug": "s", "provider": "github"}));
        assert_eq!(update["field"], "provider");
        assert_eq!(refused(json!({"action": "list", "team": "t", "slug": "s"}))["field"], "slug");
        let allowed = json!({"action": "connect", "team": "t", "slug": "s", "allow_account_change": true});
        assert_eq!(parse_arguments(allowed.as_object().cloned()).unwrap().allow_account_change, Some(true));
    }
}
