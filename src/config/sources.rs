//! Reading and layering the configuration, through figment: the defaults (applied by the
//! validation in `mod.rs`) < the TOML file < `TESSERA_` environment variables.
//!
//! Environment variables take two spellings, one layer: the key path in capitals with `__`
//! between levels (`TESSERA_CACHE__PRINCIPAL_TTL_SECONDS` for `cache.principal_ttl_seconds`),
//! read by figment's `Env` provider, and the names of earlier releases (`TESSERA_DATABASE_URL`,
//! …, see [`FORMER_NAMES`]), read with their former meaning (comma-separated lists) and never
//! through the `__` splitter. Setting one key both ways is refused.
//!
//! Nothing here prints a value: figment's errors and providers can hold secrets (a database
//! password, an admin token), so errors are rewritten into [`ConfigError`]s that name the key and
//! the expected type only, and no provider or figment is ever formatted with `Debug`.

use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{ConfigError, RawConfig, split_list};

/// The prefix of every variable.
const PREFIX: &str = "TESSERA_";
/// What separates two levels of a key path in a variable name.
const SEPARATOR: &str = "__";

/// How a variable of an earlier release is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// One value, surrounding spaces removed.
    Scalar,
    /// A comma-separated list.
    List,
    /// Read by the validation code itself (with its own precedence and warnings); listed here so
    /// that setting it together with the `__` spelling of its key is refused.
    Validated,
}

/// The variables of earlier releases that set one key, with the key and how they are read.
/// `TESSERA_ALLOWED_ISSUERS`, `TESSERA_AUDIENCES` and the deprecated
/// `TESSERA_TOKEN_ENCRYPTION_KEY` add to or stand in for keys, and are read by the validation.
const FORMER_NAMES: &[(&str, &str, Form)] = &[
    ("TESSERA_LISTEN", "listen", Form::Scalar),
    ("TESSERA_ADMIN_TOKEN", "admin_tokens", Form::List),
    ("TESSERA_DATABASE_URL", "database.url", Form::Scalar),
    ("TESSERA_DATABASE_REPLICA_URL", "database.replica_url", Form::Scalar),
    ("TESSERA_DATABASE_MAX_CONNECTIONS", "database.max_connections", Form::Scalar),
    ("TESSERA_AUTO_MIGRATE", "database.auto_migrate", Form::Scalar),
    ("TESSERA_LOG_FORMAT", "log.format", Form::Scalar),
    ("TESSERA_LOG", "log.filter", Form::Scalar),
    ("TESSERA_PUBLIC_URL", "auth.public_url", Form::Scalar),
    ("TESSERA_COOKIE_SECURE", "auth.cookie_secure", Form::Scalar),
    (super::ENCRYPTION_KEYS_VAR, "encryption.keys", Form::Validated),
];

/// The variables that hold secrets. Each may instead be given as a file: `<VAR>_FILE` names it
/// (Docker and Kubernetes secrets mounted as files), so the secret stays out of the process
/// environment, which `/proc/<pid>/environ`, `docker inspect` and crash reports show.
const SECRET_VARS: &[&str] =
    &["TESSERA_ADMIN_TOKEN", "TESSERA_DATABASE_URL", "TESSERA_DATABASE_REPLICA_URL", super::ENCRYPTION_KEYS_VAR];

/// Those of [`SECRET_VARS`] that hold a comma-separated list: their file may also hold one entry
/// per line (a natural way to write a mounted secret).
const LIST_VARS: &[&str] = &["TESSERA_ADMIN_TOKEN", super::ENCRYPTION_KEYS_VAR];

/// Secrets whose `_FILE` form does not exist, though it looks as if it should: the `__`
/// spelling of the admin tokens, and the deprecated key variable.
const MISTAKEN_SECRET_FILES: &[&str] = &["admin_tokens", "token_encryption_key"];

/// The secrets of [`SECRET_VARS`] read from the files their `_FILE` variables name (each
/// file's content trimmed).
pub(super) struct SecretFiles(Vec<(&'static str, String)>);

impl SecretFiles {
    /// Reads each of [`SECRET_VARS`] whose `_FILE` variable `env` sets. Setting both spellings
    /// of one variable is refused, as is a value that is not an absolute path, and a file that
    /// cannot be read or is blank; no such error shows the value (a secret pasted in the wrong
    /// place would be printed).
    pub(super) fn read(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut from_files = Vec::new();
        for &var in SECRET_VARS {
            let file_var = format!("{var}_FILE");
            let Some(path) = env(&file_var).filter(|path| !path.trim().is_empty()) else { continue };
            if env(var).is_some_and(|value| !value.trim().is_empty()) {
                return Err(ConfigError::new(format!("{var}, {file_var}"), "both are set; keep one"));
            }
            // Not echoed unless it is a path: the secret itself is a likely mistake here.
            if !std::path::Path::new(path.trim()).is_absolute() {
                return Err(ConfigError::new(
                    file_var,
                    "expected the absolute path of a file that holds the secret (the value is not shown: it may be the secret itself)",
                ));
            }
            let mut value = super::secret_file(&path, file_var, false)?;
            if LIST_VARS.contains(&var) {
                value = value.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(",");
            }
            from_files.push((var, value));
        }
        Ok(Self(from_files))
    }

    /// `var`'s value, when it was read from its file.
    pub(super) fn get(&self, var: &str) -> Option<String> {
        self.0.iter().find(|(name, _)| *name == var).map(|(_, value)| value.clone())
    }

    /// The variables read from files.
    fn vars(&self) -> Vec<&'static str> {
        self.0.iter().map(|(var, _)| *var).collect()
    }
}

/// One variable of an earlier release, as a figment provider named after the variable, so that
/// an error in its value names it.
struct FormerName {
    var: &'static str,
    key: &'static str,
    value: Value,
}

impl Provider for FormerName {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.var)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let nested = figment::util::nest(self.key, self.value.clone());
        Ok(Profile::Default.collect(nested.into_dict().unwrap_or_default()))
    }
}

/// The `__` spelling: every `TESSERA_` variable with `__` in its name, and those naming a
/// top-level key (`TESSERA_ADMIN_TOKENS`), except the names of earlier releases.
/// The `TESSERA_<TABLE>__<KEY>` variables. One that is empty or blank counts as unset, as the
/// former names do: a deployment template that leaves `TESSERA_DATABASE__REPLICA_URL=` must not
/// clear the file's replica.
fn nested_env() -> Env {
    Env::prefixed(PREFIX)
        .filter(|name| read_by_splitter(name.as_str()) && !blank(&format!("{PREFIX}{}", name.as_str())))
        .split(SEPARATOR)
}

/// Whether the variable `var` is set to an empty or blank value (matched in any case, as the
/// prefix is).
fn blank(var: &str) -> bool {
    std::env::vars_os().any(|(name, value)| {
        name.to_str().is_some_and(|name| name.eq_ignore_ascii_case(var))
            && value.to_str().is_some_and(|value| value.trim().is_empty())
    })
}

fn read_by_splitter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains(SEPARATOR) || (!is_former_name(&name) && is_key(&name))
}

/// Whether `name` (without the prefix, any case) is one of [`FORMER_NAMES`].
fn is_former_name(name: &str) -> bool {
    FORMER_NAMES.iter().any(|(var, _, _)| var[PREFIX.len()..].eq_ignore_ascii_case(name))
}

/// Whether `path` (`cache.max_entries`) is a key of the file, top-level tables and lists
/// included. Asks serde rather than keeping a second list of the keys: an empty value at the
/// path either deserializes or fails at the path itself, where an unknown key fails as unknown.
pub(super) fn is_key(path: &str) -> bool {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return false;
    }
    match Figment::from(Serialized::default(path, ())).extract::<RawConfig>() {
        Ok(_) => true,
        Err(error) => {
            let segments: Vec<&str> = path.split('.').collect();
            !matches!(error.kind, Kind::UnknownField(..)) && error.path == segments
        }
    }
}

/// Where the configuration comes from, merged in order.
pub(super) struct Layers {
    figment: Figment,
    /// The `__` layer, when the process environment is read.
    nested: Option<Env>,
    /// How the file is named in a syntax error.
    file_label: String,
    /// The variables of earlier releases that are set (and so set their keys).
    former_set: Vec<&'static str>,
    /// Those of them read from the file their `_FILE` variable names: an error names that one.
    from_file: Vec<&'static str>,
}

impl Layers {
    /// The layers: the TOML `text` (if any), then the variables of earlier releases looked up
    /// through `env`, then, if `process_env`, the `__` variables of the process environment.
    pub(super) fn new(
        file: Option<(&str, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
        secret_files: &SecretFiles,
        process_env: bool,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        let mut file_label = String::from("config file");
        if let Some((text, label)) = file {
            file_label = label.to_owned();
            if let Err(error) = Toml::from_str::<Dict>(text) {
                return Err(syntax_error(text, label, &error));
            }
            figment = figment.merge(Toml::string(text));
        }
        let mut former_set = Vec::new();
        let from_file = secret_files.vars();
        for &(var, key, form) in FORMER_NAMES {
            let Some(text) = env(var).filter(|text| !text.trim().is_empty()) else { continue };
            former_set.push(var);
            let value = match form {
                Form::Scalar => Value::from(text.trim().to_owned()),
                Form::List => Value::from(split_list(&text)),
                Form::Validated => continue,
            };
            figment = figment.merge(FormerName { var, key, value });
        }
        let nested = if process_env {
            let nested = nested_env();
            check_spellings(&nested, env, &from_file)?;
            figment = figment.merge(nested.clone());
            Some(nested)
        } else {
            None
        };
        Ok(Self { figment, nested, file_label, former_set, from_file })
    }

    /// Deserializes the merged layers. Booleans take `true`/`false`, `yes`/`no`, `on`/`off`,
    /// `1`/`0`, and numbers may be quoted, whatever the layer: variables are text.
    pub(super) fn extract(&self) -> Result<RawConfig, ConfigError> {
        self.figment.extract_lossy::<RawConfig>().map_err(|error| self.translate(error))
    }

    /// Rewrites a validation error about a key set through the `__` spelling so that it names
    /// that variable instead of the file key's former variable (`database.max_connections
    /// (TESSERA_DATABASE_MAX_CONNECTIONS)` becomes `… (TESSERA_DATABASE__MAX_CONNECTIONS)`).
    /// An error naming a variable of an earlier release that is not set (the value came from the
    /// file) names the key alone.
    pub(super) fn attribute(&self, error: ConfigError) -> ConfigError {
        let base = error.key.split(" (").next().unwrap_or_default().to_owned();
        // A variable of an earlier release named beside a key that the file set (that variable
        // being unset): the key alone. For a value set nowhere, the variable stays, as a hint.
        let former = error.key.strip_prefix(&format!("{base} (")).and_then(|rest| rest.strip_suffix(')'));
        // A value read from a `_FILE` variable's file: the variable the operator set (beside
        // its key, or alone where the error names the variable alone: the key ring's).
        if let Some(var) = former.filter(|var| self.from_file.contains(var)) {
            return ConfigError { key: format!("{base} ({var}_FILE)"), ..error };
        }
        if self.from_file.contains(&error.key.as_str()) {
            return ConfigError { key: format!("{}_FILE", error.key), ..error };
        }
        if let Some(var) = former.filter(|var| FORMER_NAMES.iter().any(|(name, ..)| name == var))
            && (self.former_set.contains(&var) || self.figment.find_value(&base).is_err())
        {
            return error;
        }
        let segments: Vec<&str> = base.split(['.', '[', ']']).filter(|s| !s.is_empty()).collect();
        if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
            return error;
        }
        // The innermost value found tells where the key was set, unless it is a table merged
        // from several layers (`cache`).
        let found = (1..=segments.len()).rev().find_map(|end| self.figment.find_value(&segments[..end].join(".")).ok());
        let Some(value) = found.filter(|value| value.as_dict().is_none()) else { return error };
        let source = self.figment.get_metadata(value.tag()).map(|m| m.name.to_string());
        match self.nested_var(source.as_deref(), &segments) {
            Some(var) => ConfigError { key: format!("{base} ({var})"), ..error },
            None if former.is_some() => ConfigError { key: base, ..error },
            None => error,
        }
    }

    /// The `__` variable behind a value at `segments`, when `source` (the name of the provider
    /// that set it) is the `__` layer: the variable whose key path is the longest prefix of the
    /// path (one variable can set a whole list, `TESSERA_ISSUERS`, that fails at
    /// `issuers.0.issuer`).
    fn nested_var(&self, source: Option<&str>, segments: &[&str]) -> Option<String> {
        let nested = self.nested.as_ref()?;
        if source != Some(nested.metadata().name.as_ref()) {
            return None;
        }
        let path = segments.join(".");
        nested
            .iter()
            .map(|(key, _)| key.as_str().to_owned())
            .filter(|key| path == *key || path.starts_with(&format!("{key}.")))
            .max_by_key(String::len)
            .map(|key| env_name(&key))
    }

    fn translate(&self, error: figment::Error) -> ConfigError {
        let Some(error) = error.into_iter().next() else {
            return ConfigError::new(&self.file_label, "cannot be read");
        };
        let mut segments: Vec<&str> = error.path.iter().map(String::as_str).collect();
        if let Kind::MissingField(field) = &error.kind {
            segments.push(field);
        }
        let key = display_key(&segments);
        let message = match &error.kind {
            // A whole number too large for its key (`max_connections = 5000000000`).
            Kind::InvalidValue(Actual::Unsigned(_) | Actual::Signed(0..), expected)
                if describe_expected(expected) == "a whole number" =>
            {
                "the number is out of range".into()
            }
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                format!("expected {}, found {}", describe_expected(expected), describe_actual(actual))
            }
            Kind::UnknownField(field, expected) => {
                let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
                format!("unknown key `{field}`, expected one of {}", expected.join(", "))
            }
            Kind::MissingField(_) => "this key is required".into(),
            Kind::InvalidLength(_, expected) => format!("expected {expected}"),
            Kind::USizeOutOfRange(_) | Kind::ISizeOutOfRange(_) => "the number is out of range".into(),
            Kind::DuplicateField(field) => format!("`{field}` is set twice"),
            Kind::UnknownVariant(..) | Kind::Unsupported(..) | Kind::UnsupportedKey(..) | Kind::Message(_) => {
                "this value cannot be read here".into()
            }
        };
        let source = error.metadata.as_ref().map(|m| m.name.as_ref());
        let former = FORMER_NAMES.iter().find(|(var, _, _)| Some(*var) == source).map(|(var, _, _)| (*var).to_owned());
        match former.or_else(|| self.nested_var(source, &segments)) {
            Some(var) => ConfigError::new(format!("{key} ({var})"), message),
            None => ConfigError::new(key, message),
        }
    }
}

/// Refuses a key set both through its former name and its `__` spelling, and a single
/// underscore where `__` was meant (`TESSERA_CACHE_PRINCIPAL_TTL_SECONDS` would otherwise be
/// ignored silently: unrelated `TESSERA_` variables, such as `TESSERA_CONFIG` or those a
/// container platform adds, are not mistakes), and a `_FILE` form of a secret that has none
/// ([`MISTAKEN_SECRET_FILES`]). A former name whose value came from its `_FILE` (one of
/// `from_file`) is named as such, the variable the operator set.
fn check_spellings(nested: &Env, env: &dyn Fn(&str) -> Option<String>, from_file: &[&str]) -> Result<(), ConfigError> {
    let nested_figment = Figment::from(nested.clone());
    for &(var, key, _) in FORMER_NAMES {
        let set = env(var).is_some_and(|v| !v.trim().is_empty());
        if set && nested_figment.find_value(key).is_ok() {
            let spelled = env_name(key);
            let var = if from_file.contains(&var) { format!("{var}_FILE") } else { var.to_owned() };
            return Err(ConfigError::new(
                format!("{key} ({var}, {spelled})"),
                format!("both variables set this key; keep one ({spelled} is the current spelling)"),
            ));
        }
    }
    // The variables read by their exact name are read in upper case only, where the nested ones
    // (`TESSERA_DATABASE__URL`) are read in any case: `tessera_database_url` ignored would leave
    // the database at its default, a fresh local SQLite file. Judged by the name as set, prefix
    // included (the nested reader matches the prefix in any case, and says nothing of it).
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else { continue };
        let prefixed = name.get(..PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PREFIX));
        if !prefixed || value.trim().is_empty() || name == name.to_ascii_uppercase() {
            continue;
        }
        if let Some(exact) = exact_names().find(|exact| exact.eq_ignore_ascii_case(name)) {
            return Err(ConfigError::new(name, format!("this variable is not read; spell it {exact}, in upper case")));
        }
    }
    for (name, value) in Env::prefixed(PREFIX).iter() {
        let name = name.as_str();
        // Blank counts as unset (a deployment template's empty slot): nothing to refuse.
        if value.trim().is_empty() || name.contains(SEPARATOR) || is_former_name(name) || is_key(name) {
            continue;
        }
        // `TESSERA_CONFIG_FILE` (the `_FILE` habit of the secrets): ignored, it would start the
        // server on another configuration file, or on none.
        if name.eq_ignore_ascii_case("config_file") {
            return Err(ConfigError::new(
                env_name(name),
                "this variable is not read; TESSERA_CONFIG names the configuration file",
            ));
        }
        if let Some(base) = name.strip_suffix("_file")
            && takes_no_file(base)
        {
            let forms: Vec<String> = SECRET_VARS.iter().map(|var| format!("{var}_FILE")).collect();
            return Err(ConfigError::new(
                env_name(name),
                format!("this variable is not read: only {} take a file", forms.join(", ")),
            ));
        }
        if let Some(meant) = near_miss(name) {
            return Err(ConfigError::new(env_name(name), format!("this variable is not read; did you mean {meant}?")));
        }
        if let Some((table, rest)) = name.split_once('_')
            && is_key(&format!("{table}.{rest}"))
        {
            let key = format!("{table}.{rest}");
            return Err(ConfigError::new(
                env_name(name),
                format!(
                    "this variable is not read: `{key}` is set by {} (two underscores after the table name)",
                    env_name(&key)
                ),
            ));
        }
    }
    Ok(())
}

/// The variables read by their exact, upper-case name: the former names (the secrets among
/// them), the secrets' `_FILE` forms, and `TESSERA_CONFIG` (read by the command line).
fn exact_names() -> impl Iterator<Item = String> {
    let secret_files = SECRET_VARS.iter().map(|var| format!("{var}_FILE"));
    FORMER_NAMES.iter().map(|(var, _, _)| (*var).to_owned()).chain(secret_files).chain(
        ["TESSERA_ALLOWED_ISSUERS", "TESSERA_AUDIENCES", "TESSERA_CONFIG", super::auth::DEPRECATED_KEY_VAR]
            .map(str::to_owned),
    )
}

/// The variable `name` (without the prefix; not read) was most likely meant to be: one Tessera
/// reads whose name is at most two letters away (`TESSERA_DATABSE_URL`, `TESSERA_DATABASE_URI`,
/// `TESSERA_ALLOWED_ISSUER`, `TESSERA_DATABASE_URL_FILES`). Ignored, such a variable would leave
/// its setting at the default — a fresh local SQLite file for the database. Names farther away
/// (other programs', a container platform's `TESSERA_PORT`) are not mistakes.
fn near_miss(name: &str) -> Option<String> {
    let name = format!("{PREFIX}{name}").to_ascii_uppercase();
    // The top-level keys too, each set as a whole by its variable (`TESSERA_ISSUERS='[…]'`):
    // `TESSERA_ISSUER` ignored would leave every token refused.
    let whole = TOP_LEVEL_KEYS.iter().map(|key| format!("{PREFIX}{}", key.to_ascii_uppercase()));
    let read = exact_names().chain(whole);
    // Two letters off a long name, one off a middling one; a short one (`TESSERA_LOG`) is too
    // close to too many other words (`TESSERA_TAG`, `TESSERA_JOB`) to tell a slip from another's.
    read.filter(|known| *known != name).find(|known| {
        let allowed = match known.len() - PREFIX.len() {
            0..6 => 0,
            6..10 => 1,
            _ => 2,
        };
        allowed > 0 && strsim::damerau_levenshtein(known, &name) <= allowed
    })
}

/// The configuration's top-level keys, each of which a variable sets as a whole.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin_tokens",
    "database",
    "issuers",
    "log",
    "cache",
    "jwks",
    "server",
    "auth",
    "providers",
    "encryption",
    "oidc",
    "branding",
    "webhooks",
    "audit",
    "connectors",
    "metrics",
];

/// Whether `TESSERA_<base>_FILE` looks read but is not, so that setting it would be ignored:
/// the `_FILE` form of a secret that has none (`TESSERA_ADMIN_TOKENS_FILE`,
/// `TESSERA_TOKEN_ENCRYPTION_KEY_FILE`: the admin API shut, no key ring), or of a variable read
/// that is no secret (`TESSERA_PUBLIC_URL_FILE`, `TESSERA_ALLOWED_ISSUERS_FILE`,
/// `TESSERA_ISSUERS_FILE`: every token refused). Not `TESSERA_LOG_FILE` or
/// `TESSERA_DATABASE_FILE`: those may well be a wrapper's own.
fn takes_no_file(base: &str) -> bool {
    let is = |name: &str| name.eq_ignore_ascii_case(base);
    if is("log") || is("database") || SECRET_VARS.iter().any(|var| is(&var[PREFIX.len()..])) {
        return false;
    }
    MISTAKEN_SECRET_FILES.iter().any(|name| is(name))
        || is_former_name(base)
        || TOP_LEVEL_KEYS.iter().any(|key| is(key))
        || ["allowed_issuers", "audiences"].iter().any(|name| is(name))
}

/// The variable of the `__` spelling for a key path: `cache.max_entries` → `TESSERA_CACHE__MAX_ENTRIES`.
fn env_name(path: &str) -> String {
    format!("{PREFIX}{}", path.to_ascii_uppercase().replace('.', SEPARATOR))
}

/// `["issuers", "0", "audiences"]` → `issuers[0].audiences`.
fn display_key(segments: &[&str]) -> String {
    let mut key = String::new();
    for segment in segments {
        if segment.bytes().all(|b| b.is_ascii_digit()) && !key.is_empty() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    if key.is_empty() { "config file".into() } else { key }
}

/// serde's name of an expected type, in the words of the README.
fn describe_expected(expected: &str) -> String {
    match expected {
        "a boolean" => "true or false".into(),
        "a string" => "a string (in quotes)".into(),
        "a sequence" => "a list".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a number".into(),
        other if other.starts_with("struct ") || other == "a map" => "a table".into(),
        other => other.into(),
    }
}

/// What was found, never the value itself: it can be a secret.
fn describe_actual(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Signed(n) if *n < 0 => "a negative number",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a decimal number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::Unit | Actual::Option => "nothing",
        _ => "another kind of value",
    }
}

/// A TOML syntax error with its line and column; the offending line is not quoted back, since it
/// can hold a secret.
fn syntax_error(text: &str, label: &str, error: &<Toml as Format>::Error) -> ConfigError {
    let message = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let position = error.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
        format!(" at line {line}, column {column}")
    });
    ConfigError::new(label, format!("TOML syntax error{}: {message}", position.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use base64::Engine;
    use figment::Jail;

    use super::*;
    use crate::config::{Backend, Config};

    /// `Config::load` as `serve` runs it, in a jail: `vars` set in the process environment and
    /// `file` (if any) as `tessera.toml`, both undone afterwards.
    #[allow(clippy::result_large_err, reason = "the jail's closure returns figment's own Result")]
    fn load(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut loaded = None;
        Jail::expect_with(|jail| {
            if let Some(text) = file {
                jail.create_file("tessera.toml", text)?;
            }
            for (name, value) in vars {
                jail.set_env(name, value);
            }
            loaded = Some(Config::load(file.map(|_| Path::new("tessera.toml")), |k| std::env::var(k).ok()));
            Ok(())
        });
        loaded.expect("the jail ran")
    }

    fn key() -> String {
        base64::engine::general_purpose::STANDARD.encode([4u8; 32])
    }

    #[test]
    fn every_table_takes_its_keys_with_double_underscores() {
        let keys = format!("[k1:{}]", key());
        let config = load(
            None,
            &[
                ("TESSERA_DATABASE__MAX_CONNECTIONS", "5"),
                ("TESSERA_DATABASE__AUTO_MIGRATE", "no"),
                ("TESSERA_DATABASE__READY_TIMEOUT_MS", "200"),
                ("TESSERA_JWKS__FETCH_TIMEOUT_MS", "250"),
                ("TESSERA_CACHE__PRINCIPAL_TTL_SECONDS", "5"),
                ("TESSERA_AUTH__SESSION_TTL_HOURS", "2"),
                ("TESSERA_AUTH__SESSION_IDLE_MINUTES", "30"),
                ("TESSERA_AUTH__RETURN_TO_ORIGINS", "[https://app.example.com, https://b.example.com/]"),
                ("TESSERA_LOG__FORMAT", "json"),
                ("TESSERA_ENCRYPTION__KEYS", &keys),
                ("TESSERA_ADMIN_TOKENS", "[0123456789abcdef0123]"),
                ("TESSERA_ISSUERS", r#"[{issuer = "https://a.example.com", audiences = [api]}]"#),
            ],
        )
        .unwrap();
        assert_eq!(config.database.max_connections, 5);
        assert!(!config.database.auto_migrate);
        assert_eq!(config.database.ready_timeout, Duration::from_millis(200));
        assert_eq!(config.jwks.fetch_timeout, Duration::from_millis(250));
        assert_eq!(config.cache.principal_ttl, Duration::from_secs(5));
        assert_eq!(config.auth.session_ttl, Duration::from_secs(2 * 3600));
        assert_eq!(config.auth.session_idle, Duration::from_secs(30 * 60));
        assert_eq!(config.auth.return_to_origins, ["https://app.example.com", "https://b.example.com"]);
        assert!(config.log.json);
        assert_eq!(config.encryption.as_ref().unwrap().active_id(), "k1");
        assert_eq!(config.admin_tokens.len(), 1);
        assert_eq!(config.issuers[0].issuer.as_str(), "https://a.example.com");
        assert_eq!(config.issuers[0].audiences, ["api"]);
    }

    #[test]
    fn the_environment_overrides_the_file_key_by_key() {
        let file = "[cache]\nprincipal_ttl_seconds = 30\ntoken_ttl_seconds = 100\n\
                    [database]\nurl = \"sqlite://file.db\"\nmax_connections = 3\n";
        let config = load(Some(file), &[("TESSERA_CACHE__PRINCIPAL_TTL_SECONDS", "5")]).unwrap();
        assert_eq!(config.cache.principal_ttl, Duration::from_secs(5), "the variable wins");
        assert_eq!(config.cache.token_ttl, Duration::from_secs(100), "the rest of [cache] stays");
        assert_eq!(config.database.url.expose(), "sqlite://file.db");
        let config = load(Some(file), &[("TESSERA_DATABASE_URL", "sqlite://env.db")]).unwrap();
        assert_eq!(config.database.url.expose(), "sqlite://env.db", "a former name wins over the file too");
        assert_eq!(config.database.max_connections, 3);
    }

    #[test]
    fn a_blank_variable_leaves_the_file_s_value() {
        let file = format!(
            "admin_tokens = [\"{}\"]\n[database]\nurl = \"postgres://u:p@db.example/t\"\n\
             replica_url = \"postgres://u:p@replica.example/t\"\n",
            "a".repeat(32)
        );
        let config = load(Some(&file), &[("TESSERA_ADMIN_TOKEN", ""), ("TESSERA_DATABASE_REPLICA_URL", " ")]).unwrap();
        assert_eq!(config.admin_tokens.len(), 1, "an empty variable is unset, as a template may leave it");
        assert!(config.database.replica_url.is_some());
    }

    #[test]
    fn former_names_keep_their_meaning_and_are_not_split() {
        let config = load(
            None,
            &[
                ("TESSERA_LISTEN", "[::1]:9000"),
                ("TESSERA_DATABASE_URL", "postgres://u:p@db.example/tessera"),
                ("TESSERA_DATABASE_REPLICA_URL", "postgres://u:p@replica.example/tessera"),
                ("TESSERA_DATABASE_MAX_CONNECTIONS", " 7 "),
                ("TESSERA_AUTO_MIGRATE", "yes"),
                ("TESSERA_ADMIN_TOKEN", "1234567890123456, abcdefabcdefabcdef"),
                ("TESSERA_LOG", "info,tessera=debug"),
                ("TESSERA_LOG_FORMAT", "json"),
                ("TESSERA_PUBLIC_URL", "http://localhost:9000"),
                ("TESSERA_COOKIE_SECURE", "off"),
                ("TESSERA_ALLOWED_ISSUERS", "https://a.example.com,https://b.example.com"),
                ("TESSERA_AUDIENCES", "api"),
                ("TESSERA_ENCRYPTION_KEYS", &format!("k2:{}", key())),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "[::1]:9000");
        assert_eq!(config.database.url.backend(), Backend::Postgres);
        assert!(config.database.replica_url.is_some());
        assert_eq!(config.database.max_connections, 7);
        assert!(config.database.auto_migrate);
        assert_eq!(config.admin_tokens.len(), 2, "a token of digits stays a token");
        assert_eq!(config.log.filter, "info,tessera=debug");
        assert!(config.log.json);
        assert_eq!(config.auth.public_url.as_ref().unwrap().as_str(), "http://localhost:9000/");
        assert!(!config.auth.cookie_secure);
        assert_eq!(config.issuers.len(), 2);
        assert_eq!(config.issuers[1].audiences, ["api"]);
        assert_eq!(config.encryption.as_ref().unwrap().active_id(), "k2");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);

        let config = load(None, &[("TESSERA_TOKEN_ENCRYPTION_KEY", &key())]).unwrap();
        assert_eq!(config.encryption.as_ref().unwrap().active_id(), "default");
        assert!(config.warnings[0].contains("deprecated"), "{:?}", config.warnings);
    }

    #[test]
    fn a_key_set_under_both_names_is_refused() {
        let error =
            load(None, &[("TESSERA_DATABASE_URL", "sqlite://a.db"), ("TESSERA_DATABASE__URL", "sqlite://b.db")])
                .unwrap_err();
        assert_eq!(error.key, "database.url (TESSERA_DATABASE_URL, TESSERA_DATABASE__URL)");
        let error =
            load(None, &[("TESSERA_ENCRYPTION_KEYS", &format!("k1:{}", key())), ("TESSERA_ENCRYPTION__KEYS", "[x]")])
                .unwrap_err();
        assert_eq!(error.key, "encryption.keys (TESSERA_ENCRYPTION_KEYS, TESSERA_ENCRYPTION__KEYS)");
    }

    #[test]
    fn a_single_underscore_inside_a_table_is_refused_and_other_variables_are_ignored() {
        let error = load(None, &[("TESSERA_CACHE_PRINCIPAL_TTL_SECONDS", "5")]).unwrap_err();
        assert_eq!(error.key, "TESSERA_CACHE_PRINCIPAL_TTL_SECONDS");
        assert!(error.message.contains("TESSERA_CACHE__PRINCIPAL_TTL_SECONDS"), "{}", error.message);
        for (spelled, meant) in [
            // A near miss of a variable Tessera reads would leave its setting at the default.
            ("TESSERA_DATABSE_URL", "TESSERA_DATABASE_URL"),
            ("TESSERA_DATABASE_URI", "TESSERA_DATABASE_URL"),
            ("TESSERA_ALLOWED_ISSUER", "TESSERA_ALLOWED_ISSUERS"),
            ("TESSERA_DATABASE_URL_FILES", "TESSERA_DATABASE_URL_FILE"),
            // The variables that set a whole list or table.
            ("TESSERA_ISSUER", "TESSERA_ISSUERS"),
            ("TESSERA_PROVIDER", "TESSERA_PROVIDERS"),
            // A variable read by its exact name, in another case, is not read at all.
            ("tessera_database_url", "TESSERA_DATABASE_URL"),
            ("Tessera_Listen", "TESSERA_LISTEN"),
            ("TESSERA_database_url_FILE", "TESSERA_DATABASE_URL_FILE"),
            ("tessera_DATABASE_URL", "TESSERA_DATABASE_URL"),
            ("tessera_allowed_issuers", "TESSERA_ALLOWED_ISSUERS"),
        ] {
            let error = load(None, &[(spelled, "postgres://u:p@db/t")]).unwrap_err();
            assert_eq!(error.key, spelled);
            assert!(error.message.contains(meant) && !error.message.contains("postgres"), "{}", error.message);
        }
        // Other programs' variables, and those a container platform adds for a service named
        // `tessera` or `tessera-database`.
        let config = load(
            None,
            &[
                ("TESSERA_CONFIG", "elsewhere.toml"),
                ("TESSERA_BENCH_PG_URL", "postgres://x/y"),
                ("TESSERA_PORT", "tcp://10.0.0.1:8080"),
                ("TESSERA_SERVICE_HOST", "10.0.0.1"),
                ("TESSERA_DATABASE_SERVICE_HOST", "10.0.0.2"),
                ("TESSERA_DATABASE_PORT", "tcp://10.0.0.2:5432"),
                ("TESSERA_PORT_8080_TCP_ADDR", "10.0.0.1"),
                // Other words near the short names.
                ("TESSERA_TAG", "1.4"),
                ("TESSERA_LOGS", "/var/log/tessera"),
                ("TESSERA_LISTENER", "edge"),
                // Blank counts as unset, a single underscore's too (a template's empty slot).
                ("TESSERA_CACHE_PRINCIPAL_TTL_SECONDS", " "),
            ],
        );
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn the_top_level_keys_are_keys() {
        for key in TOP_LEVEL_KEYS {
            assert!(is_key(key), "{key}");
        }
    }

    #[test]
    fn a_wrong_value_from_the_environment_names_the_variable() {
        let error = |name: &str, value: &str| load(None, &[(name, value)]).unwrap_err();
        let wrong_type = error("TESSERA_DATABASE__MAX_CONNECTIONS", "many");
        assert_eq!(wrong_type.key, "database.max_connections (TESSERA_DATABASE__MAX_CONNECTIONS)");
        assert_eq!(wrong_type.message, "expected a whole number, found a string");
        let huge = error("TESSERA_DATABASE__MAX_CONNECTIONS", "5000000000");
        assert_eq!(huge.message, "the number is out of range");
        let negative = error("TESSERA_CACHE__PRINCIPAL_TTL_SECONDS", "-1");
        assert_eq!(negative.message, "expected a whole number, found a negative number");
        assert_eq!(
            error("TESSERA_CACHE__PRINCIPAL_TTL_SECONDS", "3601").key,
            "cache.principal_ttl_seconds (TESSERA_CACHE__PRINCIPAL_TTL_SECONDS)",
            "the lifetime out of range, not the whole table"
        );
        assert_eq!(
            error("TESSERA_DATABASE__MAX_CONNECTIONS", "0").key,
            "database.max_connections (TESSERA_DATABASE__MAX_CONNECTIONS)",
            "a value out of range names the variable that set it"
        );
        assert_eq!(
            error("TESSERA_JWKS__FETCH_TIMEOUT_MS", "5").key,
            "jwks.fetch_timeout_ms (TESSERA_JWKS__FETCH_TIMEOUT_MS)"
        );
        assert_eq!(
            error("TESSERA_DATABASE_MAX_CONNECTIONS", "many").key,
            "database.max_connections (TESSERA_DATABASE_MAX_CONNECTIONS)"
        );
        let boolean = error("TESSERA_AUTO_MIGRATE", "maybe");
        assert_eq!(boolean.key, "database.auto_migrate (TESSERA_AUTO_MIGRATE)");
        assert_eq!(boolean.message, "expected true or false, found a string");
        let unknown = error("TESSERA_CACHE__PRINCIPAL_TTL", "5");
        assert_eq!(unknown.key, "cache.principal_ttl (TESSERA_CACHE__PRINCIPAL_TTL)");
        assert!(unknown.message.starts_with("unknown key `principal_ttl`"), "{}", unknown.message);
        assert_eq!(error("TESSERA_ISSUERS", r#"[{issuer = "ftp://x"}]"#).key, "issuers[0].issuer (TESSERA_ISSUERS)");
        let secret = error("TESSERA_ENCRYPTION__KEYS", "k1:notalistbutasecret");
        assert_eq!(secret.key, "encryption.keys (TESSERA_ENCRYPTION__KEYS)");
        assert!(!secret.to_string().contains("notalistbutasecret"), "{secret}");
    }

    #[test]
    fn secrets_from_the_environment_stay_out_of_debug_output() {
        let config = load(
            None,
            &[
                ("TESSERA_DATABASE__URL", "postgres://u:hunter2@db.example/tessera"),
                ("TESSERA_ADMIN_TOKENS", "[supersecretadmintoken]"),
            ],
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("supersecretadmintoken"), "{debug}");
    }

    #[test]
    fn a_syntax_error_in_the_file_names_the_file_with_line_and_column() {
        let error =
            load(Some("listen = \"127.0.0.1:8080\"\nadmin_tokens = [\"supersecretadmintoken\" 5]\n"), &[]).unwrap_err();
        assert_eq!(error.key, "tessera.toml");
        assert!(error.message.starts_with("TOML syntax error at line 2, column 41: "), "{}", error.message);
        assert!(!error.message.contains("supersecretadmintoken"), "{}", error.message);
    }

    #[test]
    fn keys_are_known_without_a_second_list() {
        for key in ["listen", "admin_tokens", "database", "issuers", "cache.max_entries", "auth.public_url"] {
            assert!(is_key(key), "{key}");
        }
        for key in ["config", "bench_pg_url", "cache.max", "listen.x", "test.pg_url", "database.service_host", ""] {
            assert!(!is_key(key), "{key}");
        }
    }
}
