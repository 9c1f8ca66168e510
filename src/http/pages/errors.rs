//! Errors as people read them: for each code a browser may meet, a plain-language title, what
//! happened, and the next step as a link — sign in, try again, link your account (with the real
//! link from the error's `link_url`), go back. The code is shown small, for support.

use super::{Message, login_url};
use crate::error::ErrorCode;
use crate::http::problem::Described;

/// What the page knows about where the browser was going.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Where a sign-in should come back to (the page the browser asked for), when signing in is
    /// the way on.
    pub return_to: Option<String>,
    /// Whether the browser has a session (shows the account links and "your account" steps).
    pub signed_in: bool,
    /// Where "try again" goes after a failure on our side, when the page knows better than
    /// `return_to` and `signed_in` say (an authorization request, which itself sends a
    /// signed-out browser to sign in).
    pub retry: Option<String>,
}

/// The page for an error.
pub fn message_for(error: &Described, context: &Context) -> Message {
    use ErrorCode::*;
    // Signing in again ("Try again" after a sign-in failed) goes back to where it was going; as
    // someone else, with a fresh login at the provider.
    let sign_in = login_url(context.return_to.as_deref());
    let fresh = super::fresh_login_url(context.return_to.as_deref());
    // After a failure on our side, a signed-in browser tries the page again, not a new sign-in
    // (which would replace its session).
    let retry = match (&context.retry, context.signed_in, context.return_to.as_deref()) {
        (Some(again), _, _) => again.clone(),
        (None, true, Some(page)) => page.to_owned(),
        (None, true, None) => "/account".to_owned(),
        (None, false, _) => sign_in.clone(),
    };
    let (title, text, actions): (&str, String, Vec<(&str, String)>) = match error.code {
        LinkRequired => {
            let link = error.extension("link_url").unwrap_or("/account");
            let provider = link_provider(link).unwrap_or_else(|| "the new sign-in method".into());
            let provider = crate::http::login::provider_label(&provider);
            // The link goes on to where the sign-in was going (an app's request, say), which
            // the link flow checks again — unless that makes it too long a `return_to` to take.
            let link = match (context.return_to.as_deref(), link_provider(link)) {
                (Some(to), Some(provider)) if to != "/" => crate::http::login::link_href(&provider, Some(to)),
                _ => link.to_owned(),
            };
            let link = link.as_str();
            (
                "You already have an account",
                format!(
                    "An account with this email address already exists. To use {provider} too, sign in the way \
                     you did before; {provider} is then linked to that account."
                ),
                vec![("Sign in and link your account", login_url(Some(link)))],
            )
        }
        InvalidState if context.signed_in => (
            "Your sign-in did not finish",
            "The sign-in took too long, was already completed, or was started in another browser or tab. \
             You are still signed in as before."
                .into(),
            vec![("Go to your account", "/account".into())],
        ),
        InvalidState => (
            "Your sign-in did not finish",
            "The sign-in took too long, was already completed, or was started in another browser or tab. \
             Start again from here."
                .into(),
            vec![("Try again", sign_in.clone())],
        ),
        // An account or sign-in method removed while its sign-in was under way: the way on is a
        // new sign-in, back to where the browser was going (an app's request, say).
        IdentityNotFound | UserNotFound if !context.signed_in && context.return_to.is_some() => {
            ("Your sign-in did not finish", sentence(&error.detail), vec![("Try again", sign_in.clone())])
        }
        SignInAgain => (
            "Please sign in again",
            "Adding or removing a way to sign in needs a sign-in from the last 10 minutes, so that nobody who \
             got hold of this browser's session can take the account over. Sign in again, then try once more."
                .into(),
            vec![("Sign in again", login_url(Some(context.return_to.as_deref().unwrap_or("/account"))))],
        ),
        // Asked afresh again: a sign-in resuming an app's request would work that out anyway, one
        // the person asked for (to switch accounts) would not.
        LoginNotFresh => (
            "Please sign in again",
            "A fresh sign-in was asked for, but the sign-in provider let you through on your earlier \
             sign-in. Sign in again; if your provider offers to sign you out first, do so."
                .into(),
            vec![("Try again", fresh.clone())],
        ),
        ProviderDenied => (
            "Sign-in was cancelled",
            format!("The sign-in was cancelled at the provider{}", still_or_not(context)),
            vec![("Try again", sign_in.clone())],
        ),
        ProviderRefused => (
            "The sign-in provider refused this sign-in",
            format!(
                "It answered with an error rather than signing you in{} Try again; if it keeps happening, \
                 tell whoever runs this site: the provider's setup for it may need a change.",
                still_or_not(context)
            ),
            vec![("Try again", sign_in.clone())],
        ),
        ProviderMismatch | IssuerMismatch | InvalidCode | InvalidIdToken => (
            "We could not confirm who you are",
            format!("The answer from the sign-in provider could not be verified{}", still_or_not(context)),
            vec![("Try again", sign_in.clone())],
        ),
        ProviderUnavailable | IssuerUnavailable => (
            "The sign-in provider is not responding",
            "We could not reach the sign-in provider, or it did not answer as expected. Try again in a moment; if \
             it keeps happening, tell whoever runs this site."
                .into(),
            vec![("Try again", sign_in.clone())],
        ),
        // A signed-in browser (a stale link to link another sign-in method, say) is offered its
        // account, where the link buttons are: a sign-in from the chooser would replace its
        // session, not link anything.
        UnknownProvider | InvalidProvider => (
            "That sign-in method is not available",
            "The sign-in method in the link you followed is not set up here.".into(),
            match context.signed_in {
                true => home(context),
                false => vec![("Choose how to sign in", sign_in.clone())],
            },
        ),
        InvalidReturnTo => (
            "This sign-in link cannot be used",
            format!(
                "The link asks to send you on to a page this service may not send you to, so it was stopped.{}",
                if context.signed_in { "" } else { " You can still sign in here." }
            ),
            home(context),
        ),
        MissingCredentials | InvalidCredentials => {
            ("Please sign in", "You need to be signed in to continue.".into(), vec![("Sign in", sign_in)])
        }
        ConnectLinkNotYours => (
            "This link was made for another user",
            "You are signed in as someone other than the person this link was made for. Sign in as the \
             right person, then the link will work."
                .into(),
            // A fresh login at the provider: its own session would sign the same person in again.
            vec![("Sign in as the right person", fresh.clone()), ("Go to your account", "/account".into())],
        ),
        InvalidConnectLink => (
            "This link was already used or has expired",
            "Connect links work once and only for a short time. If you already finished connecting, there is \
             nothing more to do here. Otherwise, use Reconnect on your account page, or ask the app that sent \
             you for a new link."
                .into(),
            vec![("Go to your account", "/account".into())],
        ),
        AccountMismatch => (
            "That is a different account",
            "You signed in at the provider with another account than the one connected before. Sign in there \
             with the same account, or ask the app for a link that allows changing it."
                .into(),
            vec![("Go to your account", "/account".into())],
        ),
        IdentityAlreadyLinked => (
            "That account belongs to someone else",
            "The account you signed in with at the provider is already linked to another user here, so it \
             was not linked to yours."
                .into(),
            vec![("Go to your account", "/account".into())],
        ),
        LastIdentity => (
            "You cannot remove your only sign-in method",
            "Without it you could not sign in again. Link another sign-in method first.".into(),
            vec![("Back to your account", "/account".into())],
        ),
        UserDisabled => (
            "Your account is disabled",
            "An administrator has disabled this account. Contact support if you think this is a mistake.".into(),
            vec![("Sign in with another account", fresh.clone())],
        ),
        CsrfFailed => (
            "That form has expired",
            "For your safety the form was not sent: it came from an old page or another site. Go back, \
             reload the page and try again."
                .into(),
            vec![("Back to your account", "/account".into())],
        ),
        // Signing out clears only the copy this service set: one set for another path or domain
        // stays, and only the browser can delete it.
        AmbiguousCredentials => (
            "Your browser sent conflicting sign-in cookies",
            "Your browser holds more than one sign-in cookie for this site, so we cannot tell which is \
             yours. Delete this site's cookies in your browser's settings, then sign in again."
                .into(),
            vec![("Sign in", login_url(None))],
        ),
        NotFound | IdentityNotFound | ProfileNotFound | TeamNotFound | UserNotFound => (
            "Page not found",
            "There is nothing at this address. It may have been removed, or the link may be mistyped.".into(),
            home(context),
        ),
        MethodNotAllowed => {
            ("This page cannot be opened this way", "Go back and use the buttons on the page.".into(), home(context))
        }
        NeedsReauth | ProfileNotConnected => (
            "This account needs to be connected again",
            "The provider no longer accepts the connection. Reconnect it from your account page.".into(),
            vec![("Go to your account", "/account".into())],
        ),
        code if code.status().is_server_error() => (
            "Something went wrong on our side",
            // Not "nothing was changed": a change may have been written before the failure (a
            // shutdown, a database lost after its commit).
            "It is not your fault. Please try again in a moment; if you were changing something, check \
             first whether the change was made."
                .into(),
            vec![("Try again", retry)],
        ),
        code => (code.title(), sentence(&error.detail), home(context)),
    };
    Message {
        title: title.to_owned(),
        paragraphs: vec![text],
        actions: actions.into_iter().map(|(label, href)| super::Action::new(label, href)).collect(),
        code: Some(error.code.as_str().to_owned()),
        // Conflicting cookies: no header links — signing out would clear only the copy this
        // service set and leave the other browsing as whoever it belongs to.
        signed_in: context.signed_in && error.code != AmbiguousCredentials,
    }
}

/// The end of a sentence about a sign-in that did not finish: a browser signed in before it (one
/// switching accounts, say) still is — the session is replaced only by a sign-in that succeeds.
fn still_or_not(context: &Context) -> &'static str {
    if context.signed_in { ". You are still signed in as before." } else { ", so you are not signed in." }
}

/// The page for a link or connect flow the provider did not finish (cancelled there, or an
/// answer that could not be used): nothing was linked or connected and nothing else changed, so
/// the way on is the account page — not a new sign-in, which would replace the browser's session.
pub fn unfinished_link_or_connect(error: &Described, signed_in: bool) -> Message {
    let title = match error.code {
        ErrorCode::ProviderDenied => "Cancelled at the provider",
        _ => "The provider did not finish",
    };
    Message {
        title: title.to_owned(),
        paragraphs: vec![
            "Nothing was linked or connected, and nothing else changed.".into(),
            "To connect an account for an app, ask the app for a new link; to link another sign-in method, \
             start again from your account page."
                .into(),
        ],
        actions: vec![super::Action::new("Go to your account", "/account".to_owned())],
        code: Some(error.code.as_str().to_owned()),
        signed_in,
    }
}

/// The page for a browser whose session ended before it answered an app's request held for that
/// session: nothing was sent to the app, which is where to start again.
pub fn ended_before_the_answer(error: &Described) -> Message {
    Message {
        title: "Your session has ended".to_owned(),
        paragraphs: vec![
            "You were signed out (in another tab, or after a while) before you answered, so nothing was sent to \
             the app."
                .into(),
            "Go back to the app you came from and sign in again from there.".into(),
        ],
        actions: vec![super::Action::new("Go to your account", "/account".to_owned())],
        code: Some(error.code.as_str().to_owned()),
        signed_in: false,
    }
}

/// The page for a sign-in callback that came without this site's sign-in cookie: blocked
/// cookies, or a sign-in begun at another address than `public_url` (the one the provider
/// returns to) would fail the same way however often it is tried, so the page says how to
/// stop that, beside the ordinary causes.
pub fn sign_in_without_its_cookie(error: &Described, public_url: &str) -> Message {
    Message {
        title: "Your sign-in did not finish".to_owned(),
        paragraphs: vec![
            "Your browser did not send back the cookie this site set when the sign-in began: the sign-in was \
             started in another browser, took too long, or cookies are blocked for this site."
                .into(),
            format!(
                "If this keeps happening, allow cookies for this site and open it at {public_url}, not at another \
                 address; then try again."
            ),
        ],
        actions: vec![super::Action::new("Try again", login_url(None))],
        code: Some(error.code.as_str().to_owned()),
        signed_in: false,
    }
}

fn home(context: &Context) -> Vec<(&'static str, String)> {
    if context.signed_in { vec![("Go to your account", "/account".into())] } else { vec![("Sign in", login_url(None))] }
}

/// The provider a `/auth/link?provider=…` link names.
fn link_provider(link: &str) -> Option<String> {
    let query = link.strip_prefix("/auth/link?")?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "provider").map(|(_, v)| v.into_owned())
}

/// A detail as a sentence: capitalised, with a full stop.
fn sentence(detail: &str) -> String {
    let mut chars = detail.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;

    fn described(code: ErrorCode, link: Option<&str>) -> Described {
        let mut extensions = Map::new();
        if let Some(link) = link {
            extensions.insert("link_url".into(), Value::from(link));
        }
        Described { status: code.status(), code, detail: "some detail".into(), extensions, challenge: None }
    }

    #[test]
    fn link_required_offers_the_real_link_flow() {
        let message =
            message_for(&described(ErrorCode::LinkRequired, Some("/auth/link?provider=gitlab")), &Context::default());
        assert!(message.paragraphs[0].contains("GitLab"), "{:?}", message.paragraphs);
        assert_eq!(message.actions[0].href, "/login?return_to=%2Fauth%2Flink%3Fprovider%3Dgitlab");
        // Where the sign-in was going comes along, through the link, to be checked there again.
        let going = Context { return_to: Some("https://app.example/cb?x=1&y=2".into()), ..Context::default() };
        let message = message_for(&described(ErrorCode::LinkRequired, Some("/auth/link?provider=gitlab")), &going);
        let href = url::Url::parse("http://x").unwrap().join(&message.actions[0].href).unwrap();
        let link = href.query_pairs().find(|(k, _)| k == "return_to").unwrap().1.into_owned();
        assert_eq!(link, "/auth/link?provider=gitlab&return_to=https%3A%2F%2Fapp.example%2Fcb%3Fx%3D1%26y%3D2");
        // Too long to be taken with it: the link alone.
        let far =
            Context { return_to: Some(format!("https://app.example/{}", "x".repeat(2000))), ..Context::default() };
        let message = message_for(&described(ErrorCode::LinkRequired, Some("/auth/link?provider=gitlab")), &far);
        assert_eq!(message.actions[0].href, "/login?return_to=%2Fauth%2Flink%3Fprovider%3Dgitlab");
        // A page that refuses the provider or the user keeps it too; signing in as another user
        // asks the provider for a fresh login (its own session would pick the same one again).
        for (code, fresh) in [(ErrorCode::UnknownProvider, ""), (ErrorCode::UserDisabled, "&prompt=login")] {
            let message = message_for(&described(code, None), &going);
            let expected = format!("/login?return_to=https%3A%2F%2Fapp.example%2Fcb%3Fx%3D1%26y%3D2{fresh}");
            assert_eq!(message.actions[0].href, expected);
        }
    }

    #[test]
    fn a_signed_in_browser_is_not_sent_to_a_sign_in_that_would_replace_its_session() {
        let signed_in = Context { signed_in: true, ..Context::default() };
        for code in [ErrorCode::UnknownProvider, ErrorCode::InvalidProvider, ErrorCode::InvalidReturnTo] {
            let message = message_for(&described(code, None), &signed_in);
            let hrefs: Vec<_> = message.actions.iter().map(|a| a.href.as_str()).collect();
            assert_eq!(hrefs, ["/account"], "{code:?}");
            let message = message_for(&described(code, None), &Context::default());
            assert!(message.actions[0].href.starts_with("/login"), "{code:?}: signed out, the way on is a sign-in");
        }
        // Conflicting cookies: signing out would clear only the copy this service set.
        let message = message_for(&described(ErrorCode::AmbiguousCredentials, None), &signed_in);
        assert!(message.paragraphs[0].contains("Delete this site's cookies"), "{:?}", message.paragraphs);
        assert!(message.actions.iter().all(|a| a.href != "/auth/logout"));
        assert!(!message.signed_in, "no Sign out link in the header either");
    }

    #[test]
    fn every_code_has_a_title_a_text_and_a_way_on() {
        for code in ErrorCode::ALL {
            let message = message_for(&described(*code, None), &Context::default());
            assert!(!message.title.is_empty() && !message.paragraphs[0].is_empty(), "{}", code.as_str());
            assert!(!message.actions.is_empty(), "{} has a next step", code.as_str());
            if code.status().is_server_error() {
                assert!(!message.paragraphs[0].contains("some detail"), "a 5xx says nothing internal");
            }
        }
    }

    #[test]
    fn a_failure_on_our_side_retries_the_page_of_a_signed_in_browser() {
        let failed = described(ErrorCode::StoreUnavailable, None);
        let signed_in = Context { return_to: Some("/account?tab=apps".into()), signed_in: true, retry: None };
        assert_eq!(message_for(&failed, &signed_in).actions[0].href, "/account?tab=apps");
        let home = Context { return_to: None, signed_in: true, retry: None };
        assert_eq!(message_for(&failed, &home).actions[0].href, "/account");
        let anonymous = Context { return_to: Some("/connect/abc/oauth/start".into()), signed_in: false, retry: None };
        assert_eq!(
            message_for(&failed, &anonymous).actions[0].href,
            "/login?return_to=%2Fconnect%2Fabc%2Foauth%2Fstart"
        );
    }

    #[test]
    fn a_signed_in_browser_is_not_sent_to_sign_in_again() {
        // A sign-in's callback replayed from the history: signing in again would end the session.
        let state = described(ErrorCode::InvalidState, None);
        let signed_in = Context { return_to: None, signed_in: true, retry: None };
        assert_eq!(
            message_for(&state, &signed_in).actions.iter().map(|a| a.href.as_str()).collect::<Vec<_>>(),
            ["/account"]
        );
        assert_eq!(message_for(&state, &Context::default()).actions[0].href, "/login");
    }

    #[test]
    fn an_account_removed_during_its_sign_in_offers_the_sign_in_again() {
        let context =
            Context { return_to: Some("/oauth/authorize?request_uri=x".into()), signed_in: false, retry: None };
        let message = message_for(&described(ErrorCode::IdentityNotFound, None), &context);
        assert_eq!(message.title, "Your sign-in did not finish");
        assert_eq!(message.actions[0].href, "/login?return_to=%2Foauth%2Fauthorize%3Frequest_uri%3Dx");
        // Elsewhere, a removed thing is a page not found.
        let message = message_for(&described(ErrorCode::IdentityNotFound, None), &Context::default());
        assert_eq!(message.title, "Page not found");
    }

    #[test]
    fn sign_in_comes_back_where_the_browser_was_going() {
        let context = Context { return_to: Some("/connect/abc/oauth/start".into()), signed_in: false, retry: None };
        let message = message_for(&described(ErrorCode::MissingCredentials, None), &context);
        assert_eq!(message.actions[0].href, "/login?return_to=%2Fconnect%2Fabc%2Foauth%2Fstart");
        assert_eq!(sentence("the form is bad"), "The form is bad.");
    }
}
