//! Test guest that misbehaves on purpose, bound directly with wit-bindgen (no SDK), on contract
//! 0.3. Its configuration is `{"mode": M}` with M one of `loop`, `grow`, `trap`, `recurse`,
//! `panic`, `sleep` (block in a WASI clock for a minute), `hold` (keep 60 MiB allocated for the
//! instance's life, then decide after a short sleep so calls overlap), `handles` (ask for
//! credential handles without end), `stale` (keep a credentials handle from one call and read
//! the token through it in the next, after creating three fresh handles; the token read goes
//! into the identity's `read` attribute) or `ok`, optionally prefixed with `configure:` to
//! misbehave during `configure` instead of `authenticate`.

#![allow(unsafe_code)] // wit-bindgen's generated glue; the stale handle is forged on purpose

wit_bindgen::generate!({ path: "../../../wit", world: "auth-plugin" });

use exports::trustgate::auth::plugin::Guest;
use std::cell::{Cell, RefCell};
use trustgate::auth::host;
use trustgate::auth::types::{
    Credentials, Decision, Established, Fact, IdentityFields, RequestFields, Wants,
};

thread_local! {
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
    static HOARD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// `stale`: the raw number of a credentials handle kept from an earlier call.
    static KEPT: Cell<Option<u32>> = const { Cell::new(None) };
}

/// `stale`: the first call keeps its handle's number; every later call reads through it after
/// creating fresh handles (what it reads, if the host lets it, is the identity's `read`).
fn stale() -> String {
    match KEPT.with(Cell::get) {
        None => {
            let creds = host::presented_credentials();
            KEPT.with(|k| k.set(Some(creds.take_handle())));
            "kept".into()
        }
        Some(raw) => {
            let fresh: Vec<Credentials> = (0..3).map(|_| host::presented_credentials()).collect();
            // SAFETY: deliberately forged from a number the guest kept; the host must refuse it.
            let old = unsafe { Credentials::from_handle(raw) };
            let read = match old.token() {
                Ok(t) => format!("token:{t}"),
                Err(e) => format!("error:{e:?}"),
            };
            std::mem::forget(old);
            drop(fresh);
            read
        }
    }
}

fn misbehave(mode: &str) {
    match mode {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "trap" => trap(),
        "recurse" => {
            std::hint::black_box(recurse(std::hint::black_box(1)));
        }
        "panic" => panic!("hostile guest panics on purpose"),
        "sleep" => std::thread::sleep(std::time::Duration::from_secs(60)),
        "hold" => {
            HOARD.with(|h| {
                let mut h = h.borrow_mut();
                if h.is_empty() {
                    *h = vec![7u8; 60 << 20];
                }
                std::hint::black_box(&*h);
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        _ => {}
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() {
    core::arch::wasm32::unreachable()
}
#[cfg(not(target_arch = "wasm32"))]
fn trap() {
    std::process::abort()
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 16]);
    recurse(n + 1).wrapping_add(pad[3])
}

struct Hostile;

impl Guest for Hostile {
    fn configure(config: String) -> Result<Wants, String> {
        let value: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let mode = value
            .get("mode")
            .and_then(|m| m.as_str())
            .ok_or("config: `mode` is required")?
            .to_string();
        if let Some(m) = mode.strip_prefix("configure:") {
            misbehave(m);
        }
        MODE.with(|s| *s.borrow_mut() = mode);
        Ok(Wants {
            methods: vec![],
            request: RequestFields::empty(),
            so_far: IdentityFields::empty(),
            attributes: vec![],
            verification: None,
            template: None,
        })
    }

    fn authenticate(_facts: Vec<Fact>) -> Decision {
        let mut attributes = vec![];
        MODE.with(|s| {
            match s.borrow().as_str() {
                "handles" => {
                    let mut kept = Vec::new();
                    loop {
                        kept.push(host::presented_credentials());
                    }
                }
                "stale" => attributes.push(("read".to_string(), stale())),
                _ => {}
            }
            misbehave(&s.borrow())
        });
        Decision::Allow(Established {
            subject: "hostile:ok".into(),
            method: "test".into(),
            groups: vec![],
            attributes,
            roles: vec!["worker".into()],
            scopes: vec![],
            expires_at_ms: None,
            skip_pairing: true,
        })
    }
}

export!(Hostile);
