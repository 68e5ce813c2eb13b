//! The auth chain: plugins run in configured order; `deny` (or a plugin failure) ends the chain;
//! `abstain` passes; `allow` establishes the identity or narrows it, `permit` narrows it, and
//! the chain goes on so later policies can still veto. The peer is allowed only if some plugin
//! allowed and none denied. The semantics are written down in `wit/auth.wit` and
//! `docs/plugins.md`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::bounds;
use crate::services::CachePolicy;
use crate::types::{Decision, Denial, Identity, Narrowing, Request};

/// Why a plugin produced no decision. Every failure denies the peer (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    /// The guest trapped (panic, `unreachable`, stack overflow, bad memory access, ...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin said it failed (`fail`: an exception in its own code), with where and why
    /// (bounded, escaped, the call's credentials removed).
    #[error("failed: {0}")]
    Raised(String),
    /// The guest used more CPU time than its deadline.
    #[error("exceeded its CPU deadline")]
    Deadline,
    /// The guest tried to grow its memory beyond the cap.
    #[error("exceeded its memory cap")]
    Memory,
    /// The call did not finish within its wall-clock bound.
    #[error("did not finish within its wall-clock bound")]
    Timeout,
    /// A fresh instance rejected the configuration that an earlier one accepted.
    #[error("rejected its configuration: {0}")]
    Configure(String),
    /// The plugin answered with something the contract forbids (over a limit, a changed
    /// subject). The message names the field and the size, never the content.
    #[error("returned an invalid decision: {0}")]
    InvalidDecision(String),
    /// No instance could be had in time (the plugin is at its instance cap) or the runtime's
    /// memory budget is spent: load, not the plugin's fault, so the peer may retry.
    #[error("is busy: no instance available within the wait, or the memory budget is spent")]
    Busy,
}

impl PluginFailure {
    /// A short, bounded label for logs and metrics: `trap`, `deadline`, `memory`, `timeout`,
    /// `configure`, `invalid` or `busy`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Trap(_) => "trap",
            Self::Raised(_) => "exception",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Timeout => "timeout",
            Self::Configure(_) => "configure",
            Self::InvalidDecision(_) => "invalid",
            Self::Busy => "busy",
        }
    }
}

/// One plugin call: the request, the identity established so far, and whether verifications
/// may be answered from a cache. Cheap to clone: everything is shared.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request.
    pub request: Arc<Request>,
    /// The identity established so far, if any.
    pub so_far: Option<Arc<Identity>>,
    /// Whether host verifications may use the embedder's cache.
    pub cache: CachePolicy,
    /// Where a plugin's host verifications leave the subject they found, so a refusal can say
    /// whom it refused even when no plugin established an identity.
    pub witness: Witness,
}

/// The subject a verification (TokenReview, JWT) found during one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Witness(Arc<std::sync::Mutex<Option<String>>>);

impl Witness {
    /// Records `subject` (the latest verification wins).
    pub fn saw(&self, subject: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(subject.to_string());
    }

    /// The subject recorded, if any.
    pub fn subject(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Something that can take part in the chain. WebAssembly plugins implement it; so can native
/// code (the benchmarks' baseline does).
#[async_trait]
pub trait AuthProvider: Send + Sync {
    /// The name the chain reports decisions under.
    fn name(&self) -> &str;

    /// Decides on one call.
    async fn authenticate(&self, call: &Call) -> Result<Decision, PluginFailure>;
}

/// How one plugin decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Allowed (established or narrowed the identity).
    Allow,
    /// Permitted (kept the identity so far, possibly narrowed).
    Permit,
    /// Denied.
    Deny,
    /// Abstained (or permitted with nothing established yet).
    Abstain,
    /// Failed (counted as a deny).
    Failed,
}

impl StepKind {
    /// `allow`, `permit`, `deny`, `abstain` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Permit => "permit",
            Self::Deny => "deny",
            Self::Abstain => "abstain",
            Self::Failed => "failed",
        }
    }
}

/// One plugin's part in a verdict.
#[derive(Debug, Clone)]
pub struct Step {
    /// The plugin's name.
    pub plugin: String,
    /// What it decided.
    pub kind: StepKind,
    /// For a denial: its code.
    pub code: Option<crate::types::DenyCode>,
    /// For a denial: its reason; for a failure: its cause.
    pub reason: Option<String>,
    /// For a failure the plugin reported (`fail`): its message — where in its source and why.
    pub error: Option<String>,
    /// How long its call took.
    pub elapsed: Duration,
}

/// The chain's answer.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Some plugin allowed and none denied.
    Allowed(Identity),
    /// A plugin denied.
    Denied {
        /// The plugin that denied.
        plugin: String,
        /// Its denial.
        denial: Denial,
    },
    /// A plugin failed; the peer is denied.
    Failed {
        /// The plugin that failed.
        plugin: String,
        /// What went wrong.
        failure: PluginFailure,
    },
    /// Every plugin abstained: the chain established no identity (the gateway may fall back to
    /// device pairing).
    NoDecision,
}

/// The outcome plus the trail that led to it.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The decision.
    pub outcome: Outcome,
    /// Each plugin that ran, in order.
    pub steps: Vec<Step>,
    /// Who the peer is as far as the chain got: the identity's subject, or else the subject
    /// a verification found (for a refusal: whom it refused, e.g. the reviewed
    /// ServiceAccount).
    pub subject: Option<String>,
}

/// An ordered list of providers.
#[derive(Clone, Default)]
pub struct Chain {
    providers: Vec<Arc<dyn AuthProvider>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| p.name()))
            .finish()
    }
}

impl Chain {
    /// A chain running `providers` in this order.
    pub fn new(providers: Vec<Arc<dyn AuthProvider>>) -> Self {
        Self { providers }
    }

    /// The providers, in order.
    pub fn providers(&self) -> &[Arc<dyn AuthProvider>] {
        &self.providers
    }

    /// Runs the chain on one request. `initial` is an identity the host established itself
    /// (e.g. a paired device): plugins see it as `so-far` and can veto or narrow it, as for a
    /// plugin's allow. `cache` is handed to every plugin call (see [`CachePolicy`]).
    pub async fn evaluate(
        &self,
        request: &Arc<Request>,
        initial: Option<Identity>,
        cache: CachePolicy,
    ) -> Verdict {
        let mut call = Call {
            request: request.clone(),
            so_far: initial.map(Arc::new),
            cache,
            witness: Witness::default(),
        };
        let subject = |call: &Call| {
            call.so_far
                .as_ref()
                .map(|i| i.subject.clone())
                .or_else(|| call.witness.subject())
        };
        let mut steps = Vec::with_capacity(self.providers.len());
        // One clock read per step: a step ends where the next begins.
        let mut started = Instant::now();
        for provider in &self.providers {
            // What the step leaves as the identity so far; the old one stays in `call` until
            // the step succeeds, so a failing step still reports who was being decided on.
            let so_far = call.so_far.clone();
            let result = provider.authenticate(&call).await.and_then(|d| match d {
                Decision::Allow(next) => {
                    merge(so_far, next).map(|id| (StepKind::Allow, Some(Arc::new(id)), None))
                }
                Decision::Permit(n) => match so_far {
                    Some(id) => narrow(id, n).map(|id| (StepKind::Permit, Some(id), None)),
                    None => Ok((StepKind::Abstain, None, None)),
                },
                Decision::Abstain => Ok((StepKind::Abstain, so_far, None)),
                Decision::Deny(denial) => Ok((StepKind::Deny, so_far, Some(denial))),
            });
            let ended = Instant::now();
            let elapsed = ended - started;
            started = ended;
            let name = provider.name().to_string();
            match result {
                Ok((StepKind::Deny, _, Some(denial))) => {
                    steps.push(Step {
                        plugin: name.clone(),
                        kind: StepKind::Deny,
                        code: Some(denial.code),
                        reason: Some(denial.reason.clone()),
                        error: None,
                        elapsed,
                    });
                    return Verdict {
                        subject: subject(&call),
                        outcome: Outcome::Denied {
                            plugin: name,
                            denial,
                        },
                        steps,
                    };
                }
                Ok((kind, identity, _)) => {
                    steps.push(Step {
                        plugin: name,
                        kind,
                        code: None,
                        reason: None,
                        error: None,
                        elapsed,
                    });
                    call.so_far = identity;
                }
                Err(failure) => {
                    steps.push(Step {
                        plugin: name.clone(),
                        kind: StepKind::Failed,
                        code: None,
                        reason: Some(failure.cause().into()),
                        error: match &failure {
                            PluginFailure::Raised(m) => Some(m.clone()),
                            _ => None,
                        },
                        elapsed,
                    });
                    return Verdict {
                        subject: subject(&call),
                        outcome: Outcome::Failed {
                            plugin: name,
                            failure,
                        },
                        steps,
                    };
                }
            }
        }
        let identity = call
            .so_far
            .map(|i| Arc::try_unwrap(i).unwrap_or_else(|shared| (*shared).clone()));
        Verdict {
            subject: identity.as_ref().map(|i| i.subject.clone()),
            outcome: identity.map_or(Outcome::NoDecision, Outcome::Allowed),
            steps,
        }
    }
}

fn invalid(why: impl Into<String>) -> PluginFailure {
    PluginFailure::InvalidDecision(why.into())
}

/// Folds a plugin's allow into the identity so far. The first allow establishes the identity;
/// later ones may only narrow it: the subject must stay the same, roles and scopes are
/// intersected, pairing may be skipped only if every allowing plugin agrees, the expiry is the
/// earliest, groups are united and attributes are added (an established attribute is kept).
/// Linear in the sizes involved, and the result stays within the contract's limits.
pub fn merge(so_far: Option<Arc<Identity>>, next: Identity) -> Result<Identity, PluginFailure> {
    if next.subject.trim().is_empty() {
        return Err(invalid("allow with an empty subject"));
    }
    let Some(id) = so_far else {
        return Ok(next);
    };
    let mut id = Arc::try_unwrap(id).unwrap_or_else(|shared| (*shared).clone());
    if id.subject != next.subject {
        // The subjects are within the contract's size limits; the log may name them.
        return Err(invalid(format!(
            "allow changed the subject established earlier in the chain (`{}` to `{}`)",
            bounds::escape_text(&id.subject),
            bounds::escape_text(&next.subject)
        )));
    }
    keep_only(&mut id.roles, &next.roles);
    keep_only(&mut id.scopes, &next.scopes);
    id.skip_pairing &= next.skip_pairing;
    id.expires_at_ms = earliest(id.expires_at_ms, next.expires_at_ms);
    let mut known: HashSet<String> = id.groups.iter().cloned().collect();
    for g in next.groups {
        if known.insert(g.clone()) {
            id.groups.push(g);
        }
    }
    if id.groups.len() > bounds::MAX_GROUPS {
        return Err(invalid(format!(
            "the merged identity would have {} groups, over the limit of {}",
            id.groups.len(),
            bounds::MAX_GROUPS
        )));
    }
    add_attributes(&mut id, next.attributes)?;
    Ok(id)
}

/// Applies a policy's `permit` to the identity so far.
fn narrow(id: Arc<Identity>, n: Narrowing) -> Result<Arc<Identity>, PluginFailure> {
    if n == Narrowing::default() {
        return Ok(id); // the common case: nothing to copy
    }
    let mut id = Arc::try_unwrap(id).unwrap_or_else(|shared| (*shared).clone());
    if let Some(roles) = &n.roles {
        keep_only(&mut id.roles, roles);
    }
    if let Some(scopes) = &n.scopes {
        keep_only(&mut id.scopes, scopes);
    }
    id.expires_at_ms = earliest(id.expires_at_ms, n.expires_at_ms);
    id.skip_pairing &= !n.veto_skip_pairing;
    add_attributes(&mut id, n.attributes)?;
    Ok(Arc::new(id))
}

fn keep_only(items: &mut Vec<String>, allowed: &[String]) {
    let allowed: HashSet<&str> = allowed.iter().map(String::as_str).collect();
    items.retain(|i| allowed.contains(i.as_str()));
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn add_attributes(id: &mut Identity, more: Vec<(String, String)>) -> Result<(), PluginFailure> {
    let mut keys: HashSet<String> = id.attributes.iter().map(|(k, _)| k.clone()).collect();
    for (k, v) in more {
        if keys.insert(k.clone()) {
            id.attributes.push((k, v));
        }
    }
    if id.attributes.len() > bounds::MAX_ATTRIBUTES {
        return Err(invalid(format!(
            "the merged identity would have {} attributes, over the limit of {}",
            id.attributes.len(),
            bounds::MAX_ATTRIBUTES
        )));
    }
    Ok(())
}
