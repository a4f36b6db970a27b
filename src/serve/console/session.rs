//! Console sessions: the server's token, given once on the sign-in page, exchanged for a cookie
//! that says "signed in until T". The cookie is signed (HMAC-SHA256 keyed by the token), so any
//! server holding the same token accepts it and none keeps a table of sessions; signing out
//! forgets it in the browser and refuses it here until it would have expired. Each session has
//! its own CSRF token, derived from it, which every form that changes something carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The cookie's name; scoped to `/console`.
pub const COOKIE: &str = "kiln_session";
/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A signed-in browser: who it is (a random nonce) and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    nonce: String,
    expires: u64,
}

/// Makes and checks sessions for one token.
pub struct Sessions {
    key: hmac::Key,
    rng: SystemRandom,
    /// Sessions signed out here, until they expire: nonce → expiry.
    revoked: Mutex<HashMap<String, u64>>,
}

impl Sessions {
    pub fn new(token: &str) -> Sessions {
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes()),
            rng: SystemRandom::new(),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// A new session, valid for [`LIFETIME`] from `now` (seconds since the epoch), and its
    /// cookie value.
    pub fn start(&self, now: u64) -> (Session, String) {
        let mut bytes = [0u8; 16];
        self.rng
            .fill(&mut bytes)
            .expect("the system's random source works");
        let session = Session {
            nonce: hex(&bytes),
            expires: now + LIFETIME.as_secs(),
        };
        let value = format!(
            "{}.{}.{}",
            session.expires,
            session.nonce,
            self.sign(&session)
        );
        (session, value)
    }

    /// The session a cookie value stands for, if it is one this token signed, unexpired at
    /// `now` and not signed out.
    pub fn check(&self, value: &str, now: u64) -> Option<Session> {
        let mut parts = value.split('.');
        let (expires, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || nonce.len() != 32 || !nonce.bytes().all(is_hex) {
            return None;
        }
        let session = Session {
            nonce: nonce.to_string(),
            expires: expires.parse().ok()?,
        };
        let mac = unhex(mac)?;
        hmac::verify(&self.key, &message("session", &session), &mac).ok()?;
        if session.expires <= now {
            return None;
        }
        let revoked = self
            .revoked
            .lock()
            .expect("the revoked lock is never poisoned");
        if revoked.contains_key(&session.nonce) {
            return None;
        }
        Some(session)
    }

    /// Refuses `session` from now on (on this server), and forgets sessions long expired.
    pub fn end(&self, session: &Session, now: u64) {
        let mut revoked = self
            .revoked
            .lock()
            .expect("the revoked lock is never poisoned");
        revoked.retain(|_, expires| *expires > now);
        revoked.insert(session.nonce.clone(), session.expires);
    }

    /// The CSRF token of `session`: what its forms carry.
    pub fn csrf(&self, session: &Session) -> String {
        hex(hmac::sign(&self.key, &message("csrf", session)).as_ref())
    }

    /// Whether `given` is the CSRF token of `session` (compared in constant time).
    pub fn csrf_matches(&self, session: &Session, given: &str) -> bool {
        unhex(given)
            .is_some_and(|mac| hmac::verify(&self.key, &message("csrf", session), &mac).is_ok())
    }

    fn sign(&self, session: &Session) -> String {
        hex(hmac::sign(&self.key, &message("session", session)).as_ref())
    }
}

/// What is signed: the purpose, the expiry and the nonce.
fn message(purpose: &str, session: &Session) -> Vec<u8> {
    format!(
        "kiln-console|{purpose}|{}|{}",
        session.expires, session.nonce
    )
    .into_bytes()
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 || !text.bytes().all(is_hex) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_accepted_until_it_expires_or_is_signed_out() {
        let sessions = Sessions::new("token-a");
        let (session, cookie) = sessions.start(1000);
        assert_eq!(sessions.check(&cookie, 1001), Some(session.clone()));
        let expires = 1000 + LIFETIME.as_secs();
        assert_eq!(sessions.check(&cookie, expires), None);
        sessions.end(&session, 1002);
        assert_eq!(sessions.check(&cookie, 1003), None);
    }

    #[test]
    fn another_token_or_a_changed_cookie_is_refused() {
        let sessions = Sessions::new("token-a");
        let (_, cookie) = sessions.start(1000);
        assert!(Sessions::new("token-b").check(&cookie, 1001).is_none());
        // A later expiry with the same signature.
        let (expires, rest) = cookie.split_once('.').unwrap();
        let later = format!("{}.{rest}", expires.parse::<u64>().unwrap() + 1);
        assert!(sessions.check(&later, 1001).is_none());
        for junk in [
            "",
            "1.2.3",
            "a.b",
            &format!("{cookie}.x"),
            &cookie.to_uppercase(),
        ] {
            assert!(sessions.check(junk, 1001).is_none(), "{junk}");
        }
    }

    #[test]
    fn a_csrf_token_belongs_to_its_session() {
        let sessions = Sessions::new("token-a");
        let (one, _) = sessions.start(1000);
        let (two, _) = sessions.start(1000);
        let token = sessions.csrf(&one);
        assert!(sessions.csrf_matches(&one, &token));
        assert!(!sessions.csrf_matches(&two, &token));
        assert!(!sessions.csrf_matches(&one, ""));
        assert!(!sessions.csrf_matches(&one, "zz"));
    }
}
