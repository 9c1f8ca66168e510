//! The one table of public error codes.
//!
//! Every error a client sees carries one of these codes: a stable snake_case string, an HTTP
//! status and a short title. Codes are part of the API contract: never rename one, only add.
//! The HTTP layer renders them as RFC 9457 `application/problem+json` (see `http::problem`).

use axum::http::StatusCode;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($status:ident, $code:literal, $title:literal), )*) => {
        /// A stable, public error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The snake_case code clients match on.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status that goes with the code.
            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            /// A short, human title that does not change from occurrence to occurrence.
            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)* }
            }
        }
    };
}

error_codes! {
    // Protocol-level errors.
    /// No route matches the path.
    NotFound = (NOT_FOUND, "not_found", "Not found"),
    /// The route exists but not for this method.
    MethodNotAllowed = (METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed"),
    /// The body is larger than the server accepts.
    PayloadTooLarge = (PAYLOAD_TOO_LARGE, "payload_too_large", "Request body too large"),
    /// The body is not declared as JSON.
    UnsupportedMediaType = (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type"),
    /// The body is not syntactically valid JSON.
    MalformedJson = (BAD_REQUEST, "malformed_json", "Malformed JSON"),
    /// The JSON is valid but does not have the expected shape or types.
    InvalidRequest = (BAD_REQUEST, "invalid_request", "Invalid request"),

    // Input validation.
    /// A required field is absent or blank.
    MissingField = (BAD_REQUEST, "missing_field", "A required field is missing"),
    /// A field is longer than allowed.
    FieldTooLong = (BAD_REQUEST, "field_too_long", "A field is too long"),
    /// The email is not a valid address.
    InvalidEmail = (BAD_REQUEST, "invalid_email", "Invalid email address"),
    /// The issuer is not a valid issuer URL.
    InvalidIssuer = (BAD_REQUEST, "invalid_issuer", "Invalid issuer"),
    /// The subject is not acceptable.
    InvalidSubject = (BAD_REQUEST, "invalid_subject", "Invalid subject"),
    /// The display name is not acceptable.
    InvalidName = (BAD_REQUEST, "invalid_name", "Invalid name"),
    /// A user id in the path is not a UUID.
    InvalidUserId = (BAD_REQUEST, "invalid_user_id", "Invalid user id"),

    // Authentication and authorisation.
    /// No credentials were presented.
    MissingCredentials = (UNAUTHORIZED, "missing_credentials", "Authentication required"),
    /// The presented credentials are not valid.
    InvalidCredentials = (UNAUTHORIZED, "invalid_credentials", "Invalid credentials"),
    /// The issuer is not on the allow-list.
    IssuerNotAllowed = (FORBIDDEN, "issuer_not_allowed", "Issuer not allowed"),
    /// The user is disabled.
    UserDisabled = (FORBIDDEN, "user_disabled", "User disabled"),

    // Resources.
    /// No user has that id.
    UserNotFound = (NOT_FOUND, "user_not_found", "User not found"),

    // Server side.
    /// The database cannot be reached.
    StoreUnavailable = (SERVICE_UNAVAILABLE, "store_unavailable", "Storage unavailable"),
    /// Anything else that went wrong on our side; details are in the server log only.
    InternalError = (INTERNAL_SERVER_ERROR, "internal_error", "Internal error"),
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_map_to_error_statuses() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !s.starts_with('_'),
                "{s} is not snake_case"
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
            assert!(!code.title().is_empty());
        }
    }
}
