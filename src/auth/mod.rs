//! Who may do what: tokens for subscribers, an Origin check for browsers,
//! a key for producers (docs/security.md, "Authentication", "Origin",
//! "Publish keys").
//!
//! - [`token`]: a JWT (HS256 with a shared secret, or RS/PS/ES with a
//!   public key) verified into a [`Grant`]: the channel patterns of its
//!   `channels` claim, until its `exp`.
//! - [`access`]: per-namespace `subscribe = "public" | "token"`, and the
//!   check a subscribe passes before it reaches the engine.
//! - [`origin`]: which browser pages may open a WebSocket.
//! - [`publish`]: the key a `tcp:` producer sends first, compared in
//!   constant time.
//!
//! Checks happen at the edges: the HTTP handshake answers 401 (token) or
//! 403 (Origin) before upgrading; a session's reader refuses a subscribe
//! beyond its grant with `forbidden`; the session sweeper
//! (`session::watch`) closes a connection with 1008 when its token expires
//! unless the client has sent a fresh one (`{"op":"auth"}`). A session
//! keeps its grant (`Option<Arc<Grant>>` behind a mutex) and one deadline
//! in its outbox's `Activity`, not in its task: no timer, and nothing in
//! the idle connection's future but the hand-over at start.

pub mod access;
pub mod grant;
pub mod origin;
pub mod publish;
pub mod token;

use std::sync::Arc;

pub use access::{Access, SubscribeRules};
pub use grant::Grant;
pub use origin::{OriginPolicy, OriginRefused};
pub use publish::PublishKey;
pub use token::{TokenError, TokenVerifier};

use crate::channel::{ChannelName, Pattern};

/// Everything the HTTP side and the sessions check, shared by all.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// How tokens are verified; `None` when no secret or key is configured
    /// (then every namespace is public, which start-up makes sure of).
    pub tokens: Option<TokenVerifier>,
    /// Who may subscribe where.
    pub subscribe: SubscribeRules,
    /// Which browser origins may connect.
    pub origins: OriginPolicy,
}

impl Auth {
    /// No tokens, everything public, browsers from the own host only.
    pub fn open() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The handshake's token check: the connection's grant (`None` for an
    /// anonymous connection, which may use public namespaces only), or why
    /// it is refused (answered with 401). A token that is present must be
    /// valid; one may be left out while some namespace is public.
    pub fn admit(&self, token: Option<&str>) -> Result<Option<Grant>, TokenError> {
        let Some(verifier) = &self.tokens else {
            return Ok(None);
        };
        match token {
            Some(token) => verifier.verify(token).map(Some),
            None if self.subscribe.all_need_tokens() => Err(TokenError::Missing),
            None => Ok(None),
        }
    }

    /// `{"op":"auth"}`: the new grant of a fresh token.
    pub fn refresh(&self, token: &str) -> Result<Grant, TokenError> {
        match &self.tokens {
            Some(verifier) => verifier.verify(token),
            None => Err(TokenError::NotConfigured),
        }
    }

    /// May a connection holding `grant` subscribe to all of `targets`?
    /// `Err` carries the `forbidden` reply's message naming the targets
    /// that are not allowed.
    pub fn check_subscribe(
        &self,
        grant: Option<&Grant>,
        targets: &[Pattern],
    ) -> Result<(), String> {
        let refused: Vec<&Pattern> = targets
            .iter()
            .filter(|target| !self.may_subscribe(grant, target))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 5;
        let mut names: Vec<String> = refused.iter().take(SHOWN).map(|p| p.to_string()).collect();
        if refused.len() > SHOWN {
            names.push(format!("and {} more", refused.len() - SHOWN));
        }
        let names = names.join(", ");
        Err(match grant {
            None => format!(
                "{names}: a token is needed to subscribe there; connect with ?token=JWT or send \
                 {{\"op\":\"auth\",\"token\":JWT}} first (nothing was subscribed)"
            ),
            Some(_) => format!(
                "{names}: not covered by this connection's token (its channels claim); \
                 nothing was subscribed"
            ),
        })
    }

    /// May a connection holding `grant` subscribe to `target`?
    pub fn may_subscribe(&self, grant: Option<&Grant>, target: &Pattern) -> bool {
        !self.subscribe.needs_token(target) || grant.is_some_and(|g| g.covers(target))
    }

    /// May a holder of `grant` read channel `name` (`GET /channels/...`)?
    pub fn may_read(&self, grant: Option<&Grant>, name: &ChannelName) -> bool {
        self.subscribe.of(name.namespace()) == Access::Public
            || grant.is_some_and(|g| {
                // A name is the pattern that matches only itself.
                Pattern::new(name.as_str()).is_ok_and(|p| g.covers(&p))
            })
    }
}

/// The answer to a successful `{"op":"auth"}`:
/// `{"type":"authed","id":1,"exp":1763700000}`.
pub fn authed_reply(id: Option<i64>, grant: &Grant) -> bytes::Bytes {
    #[derive(serde::Serialize)]
    struct Authed {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        exp: u64,
    }
    crate::wire::json_frame(&Authed {
        kind: "authed",
        id,
        exp: grant.expires_at(),
    })
}

/// Start-up checks, so a server never runs with a rule it cannot keep: a
/// namespace that needs tokens with no key to check them by, or a `tcp:`
/// feed that takes records from the network without a publish key.
pub fn check_startup(
    auth: &Auth,
    feeds: &[crate::feed::FeedSpec],
    publish_key: Option<&PublishKey>,
) -> Result<(), String> {
    if auth.tokens.is_none() && auth.subscribe.any_need_tokens() {
        return Err(format!(
            "{} say subscribe = \"token\", but no token key is configured: set a JWT secret \
             (--jwt-secret, env TICKCAST_JWT_SECRET, or jwt_secret in [auth]) or a public key \
             (--jwt-public-key PATH, or jwt_public_key in [auth]); or make them \"public\"",
            auth.subscribe.token_namespaces().join(", ")
        ));
    }
    publish::check_feeds(feeds, publish_key)
}

/// The token a request carries: `Authorization: Bearer JWT`, or else
/// `?token=JWT` (which browsers must use: they cannot set headers on a
/// WebSocket). JWTs are base64url and dots, so no percent-decoding.
pub fn token_from_request<B>(req: &hyper::Request<B>) -> Option<&str> {
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer "))
        .map(|(_, token)| token.trim());
    if bearer.is_some() {
        return bearer;
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(default: Access, named: &[(&str, Access)]) -> SubscribeRules {
        SubscribeRules {
            default,
            named: named.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect(),
        }
    }

    fn targets(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|t| Pattern::new(t).unwrap()).collect()
    }

    #[test]
    fn public_namespaces_need_no_token_and_token_ones_a_covering_grant() {
        let auth = Auth {
            subscribe: rules(Access::Token, &[("demo", Access::Public)]),
            ..Auth::default()
        };
        assert!(auth
            .check_subscribe(None, &targets(&["demo.x", "demo.>"]))
            .is_ok());
        let err = auth
            .check_subscribe(None, &targets(&["demo.x", "quotes.A"]))
            .unwrap_err();
        assert!(err.contains("quotes.A") && !err.contains("demo.x"), "{err}");
        assert!(auth.check_subscribe(None, &targets(&[">"])).is_err());
        assert!(auth.check_subscribe(None, &targets(&["*.x"])).is_err());
        let grant = Grant::new(targets(&["quotes.*"]), u64::MAX);
        assert!(auth
            .check_subscribe(Some(&grant), &targets(&["quotes.A", "demo.x"]))
            .is_ok());
        assert!(auth
            .check_subscribe(Some(&grant), &targets(&["quotes.>"]))
            .is_err());
        let everything = Grant::new(targets(&[">"]), u64::MAX);
        assert!(auth
            .check_subscribe(Some(&everything), &targets(&[">"]))
            .is_ok());
        let name = |n: &str| ChannelName::new(n).unwrap();
        assert!(auth.may_read(None, &name("demo.x")));
        assert!(!auth.may_read(None, &name("quotes.A")));
        assert!(auth.may_read(Some(&grant), &name("quotes.A")));
        assert!(!auth.may_read(Some(&grant), &name("secret.A")));
    }

    #[test]
    fn a_missing_token_is_refused_only_when_nothing_is_public() {
        let verifier = TokenVerifier::new(8)
            .with_secret(b"0123456789abcdef0123456789abcdef")
            .unwrap();
        let all = Auth {
            tokens: Some(verifier.clone()),
            subscribe: rules(Access::Token, &[]),
            ..Auth::default()
        };
        assert_eq!(all.admit(None), Err(TokenError::Missing));
        assert!(matches!(
            all.admit(Some("x.y.z")),
            Err(TokenError::Malformed(_))
        ));
        let some_public = Auth {
            tokens: Some(verifier),
            subscribe: rules(Access::Token, &[("demo", Access::Public)]),
            ..Auth::default()
        };
        assert_eq!(some_public.admit(None), Ok(None));
        assert!(
            some_public.admit(Some("x.y.z")).is_err(),
            "a bad token is never ignored"
        );
        assert_eq!(Auth::default().admit(Some("whatever")), Ok(None));
        assert_eq!(Auth::default().refresh("x"), Err(TokenError::NotConfigured));
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let req = |uri: &str, auth: Option<&str>| {
            let mut builder = hyper::Request::builder().uri(uri);
            if let Some(auth) = auth {
                builder = builder.header("authorization", auth);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(
            token_from_request(&req("/ws?token=a.b.c", None)),
            Some("a.b.c")
        );
        assert_eq!(
            token_from_request(&req("/ws?x=1&token=a.b.c&y=2", None)),
            Some("a.b.c")
        );
        assert_eq!(
            token_from_request(&req("/ws", Some("Bearer a.b.c"))),
            Some("a.b.c")
        );
        assert_eq!(
            token_from_request(&req("/ws", Some("bearer a.b.c"))),
            Some("a.b.c")
        );
        assert_eq!(
            token_from_request(&req("/ws", Some("Basic eHg6eXk="))),
            None
        );
        assert_eq!(
            token_from_request(&req("/ws?token=q.r.s", Some("Basic eHg6eXk="))),
            Some("q.r.s"),
            "another scheme is some proxy's business"
        );
        assert_eq!(token_from_request(&req("/ws?tokens=x", None)), None);
        assert_eq!(token_from_request(&req("/ws", None)), None);
    }
}
