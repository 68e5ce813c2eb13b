//! The handles a plugin holds during one call: credentials (every contract version), and
//! under contract 0.2 the lent request and identity and the reviews it asked for.
//!
//! A handle's number (its `rep`) is never given out twice in the life of an instance: reps
//! come from a counter, and a call's handles are all removed when the call ends. A handle kept
//! into a later call therefore names nothing, whatever the guest created in between, and
//! using it traps with a reason that says so. (Numbers of a guest's *own* table are wasmtime's
//! business; the rep behind each is what this table checks.)

use std::sync::Arc;

use crate::types::{Identity, Request, Review};

/// Most handles one call may hold at once; a plugin asking for more traps.
pub(crate) const MAX_HANDLES_PER_CALL: usize = 64;

/// What a handle stands for.
#[derive(Clone)]
pub(crate) enum Handle {
    /// Contract 0.2: the request, lent for the call.
    Request(Arc<Request>),
    /// The request's credentials (opaque without the grant).
    Credentials(Arc<Request>),
    /// Contract 0.2: the identity so far, lent for the call.
    Identity(Arc<Identity>),
    /// Contract 0.2: what a verification found.
    Review(Arc<dyn Review>),
}

impl Handle {
    fn kind(&self) -> &'static str {
        match self {
            Self::Request(_) => "request",
            Self::Credentials(_) => "credentials",
            Self::Identity(_) => "identity",
            Self::Review(_) => "review",
        }
    }
}

// Marker types the bindings map the WIT resources to (`bindings.rs`, `with:`): a
// `Resource<Credentials>` is only a rep, looked up in [`Handles`].

/// `credentials` (0.2 and 0.3).
pub struct Credentials;
/// `request` (0.2).
pub struct RequestRes;
/// `identity` (0.2).
pub struct IdentityRes;
/// `review` (0.2).
pub struct ReviewRes;

/// The live handles of the call in progress.
#[derive(Default)]
pub(crate) struct Handles {
    /// The rep the current call's first handle got: anything below is from an earlier call.
    first_of_call: u32,
    /// The next rep to give out.
    next: u32,
    /// The current call's live handles (at most [`MAX_HANDLES_PER_CALL`]).
    live: Vec<(u32, Handle)>,
}

impl Handles {
    /// Starts a call: every handle of an earlier one is gone.
    pub(crate) fn begin_call(&mut self) {
        self.live.clear();
        self.first_of_call = self.next;
    }

    /// Ends a call, dropping what the guest did not.
    pub(crate) fn end_call(&mut self) {
        self.live.clear();
    }

    /// A new handle for the current call.
    pub(crate) fn push(&mut self, handle: Handle) -> wasmtime::Result<u32> {
        if self.live.len() >= MAX_HANDLES_PER_CALL {
            wasmtime::bail!(
                "the plugin holds more than {MAX_HANDLES_PER_CALL} handles in one call"
            );
        }
        let rep = self.next;
        // Reps are never reused: an instance that used up the space is retired (the trap
        // drops it) rather than hand out a number an old handle may still carry.
        self.next = self.next.checked_add(1).ok_or_else(|| {
            wasmtime::format_err!("the instance has created 2^32 handles; it is retired")
        })?;
        self.live.push((rep, handle));
        Ok(rep)
    }

    /// The handle `rep` names, which must belong to the current call and be a `kind`.
    pub(crate) fn get(&self, rep: u32) -> wasmtime::Result<&Handle> {
        match self.live.iter().find(|(r, _)| *r == rep) {
            Some((_, h)) => Ok(h),
            None => Err(self.stale(rep)),
        }
    }

    /// Removes the handle `rep` (the guest dropped it).
    pub(crate) fn remove(&mut self, rep: u32) -> wasmtime::Result<Handle> {
        match self.live.iter().position(|(r, _)| *r == rep) {
            Some(i) => Ok(self.live.swap_remove(i).1),
            None => Err(self.stale(rep)),
        }
    }

    fn stale(&self, rep: u32) -> wasmtime::Error {
        if rep < self.first_of_call {
            wasmtime::format_err!(
                "the plugin used a handle from an earlier call; handles are valid only during the call that obtained them"
            )
        } else {
            wasmtime::format_err!("the plugin used a handle it had already dropped")
        }
    }
}

/// Reads the handle `rep` as the variant `$kind`, or traps naming what it is instead.
macro_rules! expect_handle {
    ($handles:expr, $rep:expr, $kind:ident) => {
        match $handles.get($rep)? {
            $crate::handles::Handle::$kind(inner) => inner,
            other => return Err($crate::handles::wrong_kind(other, stringify!($kind))),
        }
    };
}
pub(crate) use expect_handle;

pub(crate) fn wrong_kind(got: &Handle, wanted: &str) -> wasmtime::Error {
    wasmtime::format_err!(
        "the plugin passed a {} handle where a {} was expected",
        got.kind(),
        wanted.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Arc<Request> {
        Arc::new(Request {
            credentials: Default::default(),
            device: None,
            peer: Default::default(),
            role: "worker".into(),
            scopes: vec![],
        })
    }

    #[test]
    fn a_handle_of_an_earlier_call_never_names_a_new_one() {
        let mut h = Handles::default();
        h.begin_call();
        let old = h.push(Handle::Credentials(request())).unwrap();
        h.end_call();
        h.begin_call();
        let fresh: Vec<u32> = (0..3)
            .map(|_| h.push(Handle::Credentials(request())).unwrap())
            .collect();
        assert!(!fresh.contains(&old));
        let e = h.get(old).err().unwrap().to_string();
        assert!(e.contains("from an earlier call"), "{e}");
        h.remove(fresh[0]).unwrap();
        let e = h.get(fresh[0]).err().unwrap().to_string();
        assert!(e.contains("already dropped"), "{e}");
    }

    #[test]
    fn one_call_holds_a_bounded_number_of_handles_but_may_churn() {
        let mut h = Handles::default();
        h.begin_call();
        for _ in 0..1000 {
            let rep = h.push(Handle::Credentials(request())).unwrap();
            h.remove(rep).unwrap();
        }
        for _ in 0..MAX_HANDLES_PER_CALL {
            h.push(Handle::Credentials(request())).unwrap();
        }
        assert!(h.push(Handle::Credentials(request())).is_err());
    }

    #[test]
    fn the_rep_space_is_never_wrapped() {
        let mut h = Handles {
            next: u32::MAX,
            ..Handles::default()
        };
        h.begin_call();
        assert!(h.push(Handle::Credentials(request())).is_err());
    }
}
