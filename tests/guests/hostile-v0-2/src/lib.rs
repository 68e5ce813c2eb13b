//! Test guest on contract 0.2 that keeps a handle from one call and uses it in the next: the
//! handles 0.2 lends (`request`, `identity`) or gives (`credentials`, `review`) are valid only
//! during the call that obtained them, and the host must make that true whatever the guest
//! does. Its configuration is the kind of handle to keep: `request`, `identity`, `credentials`
//! or `review`.
//!
//! The first call keeps the handle's raw number and allows with `read=kept`. Every later call
//! first creates three fresh handles of the same kind (so that any slot freed by the first
//! call is taken again), then reads through the kept number; what it reads, if the host lets
//! it, becomes the identity's `read` attribute.

#![allow(unsafe_code)] // wit-bindgen's generated glue; the stale handle is forged on purpose

wit_bindgen::generate!({ path: "../../../wit/0.2.0", world: "auth-plugin" });

use std::cell::{Cell, RefCell};

use exports::trustgate::auth::plugin::Guest;
use trustgate::auth::host::{self, Review};
use trustgate::auth::types::{Credentials, Decision, Established, Identity, Request};

thread_local! {
    static KIND: RefCell<String> = const { RefCell::new(String::new()) };
    static KEPT: Cell<Option<u32>> = const { Cell::new(None) };
}

fn review(request: &Request) -> Option<Review> {
    host::token_review(&request.credentials(), &["trustgate".to_string()]).ok()
}

/// The first call: keep the handle's number (never dropped: the guest "forgets" it).
fn keep(kind: &str, request: &Request, so_far: Option<&Identity>) -> String {
    let raw = match kind {
        "request" => request.handle(),
        "identity" => match so_far {
            Some(i) => i.handle(),
            None => return "no identity so far".into(),
        },
        "credentials" => request.credentials().take_handle(),
        "review" => match review(request) {
            Some(r) => r.take_handle(),
            None => return "no review".into(),
        },
        _ => return "unknown kind".into(),
    };
    KEPT.with(|k| k.set(Some(raw)));
    "kept".into()
}

/// A later call: fresh handles first, then a read through the kept number.
fn read_stale(kind: &str, raw: u32, request: &Request) -> String {
    // SAFETY (all four): deliberately forged from a number kept from an earlier call; the host
    // must refuse it. The forged value is forgotten, never dropped.
    match kind {
        "request" => {
            let old = unsafe { Request::from_handle(raw) };
            let read = old.role();
            std::mem::forget(old);
            read
        }
        "identity" => {
            let old = unsafe { Identity::from_handle(raw) };
            let read = old.subject();
            std::mem::forget(old);
            read
        }
        "credentials" => {
            let fresh: Vec<Credentials> = (0..3).map(|_| request.credentials()).collect();
            let old = unsafe { Credentials::from_handle(raw) };
            let read = old.method();
            std::mem::forget(old);
            drop(fresh);
            read
        }
        "review" => {
            let fresh: Vec<Review> = (0..3).filter_map(|_| review(request)).collect();
            let old = unsafe { Review::from_handle(raw) };
            let read = old.username();
            std::mem::forget(old);
            drop(fresh);
            read
        }
        _ => "unknown kind".into(),
    }
}

struct Hostile;

impl Guest for Hostile {
    fn configure(config: String) -> Result<(), String> {
        KIND.with(|k| *k.borrow_mut() = config.trim().trim_matches('"').to_string());
        Ok(())
    }

    fn authenticate(request: &Request, so_far: Option<&Identity>) -> Decision {
        let kind = KIND.with(|k| k.borrow().clone());
        let read = match KEPT.with(Cell::get) {
            None => keep(&kind, request, so_far),
            Some(raw) => read_stale(&kind, raw, request),
        };
        Decision::Allow(Established {
            subject: "hostile:stale".into(),
            method: "test".into(),
            groups: vec![],
            attributes: vec![("read".into(), read)],
            roles: vec!["worker".into()],
            scopes: vec![],
            expires_at_ms: None,
            skip_pairing: true,
        })
    }
}

export!(Hostile);
