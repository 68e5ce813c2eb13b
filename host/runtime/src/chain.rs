//! The auth chain: plugins run in configured order; `deny` (or a plugin failure) ends the chain;
//! `abstain` passes; `allow` establishes the identity or narrows it, and the chain goes on so
//! later policies can still veto. The peer is allowed only if some plugin allowed and none
//! denied. See `docs/plugins.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::bindings::{Decision, Denial, Identity, Request};
use super::services::CachePolicy;

/// Why a plugin produced no decision. Every failure denies the peer (fail closed) with the
/// protocol code `PLUGIN_FAILED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    /// The guest trapped (panic, `unreachable`, stack overflow, bad memory access, ...).
    #[error("trapped: {0}")]
    Trap(String),
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
    /// The plugin answered with something the contract forbids.
    #[error("returned an invalid decision: {0}")]
    InvalidDecision(String),
}

impl PluginFailure {
    /// A short, bounded label for logs and metrics: `trap`, `deadline`, `memory`, `timeout`,
    /// `configure` or `invalid`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Trap(_) => "trap",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Timeout => "timeout",
            Self::Configure(_) => "configure",
            Self::InvalidDecision(_) => "invalid",
        }
    }
}

/// Something that can take part in the chain. WebAssembly plugins implement it; so can native
/// code (the benchmarks' baseline does).
#[async_trait]
pub trait AuthProvider: Send + Sync {
    /// The name the chain reports decisions under.
    fn name(&self) -> &str;

    /// Decides on one request given the identity established so far. `cache` says whether
    /// host verifications made on the way may be answered from a cache.
    async fn authenticate(
        &self,
        request: &Request,
        so_far: Option<&Identity>,
        cache: CachePolicy,
    ) -> Result<Decision, PluginFailure>;
}

/// How one plugin decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Allowed (established or narrowed the identity).
    Allow,
    /// Denied.
    Deny,
    /// Abstained.
    Abstain,
    /// Failed (counted as a deny).
    Failed,
}

/// One plugin's part in a verdict.
#[derive(Debug, Clone)]
pub struct Step {
    /// The plugin's name.
    pub plugin: String,
    /// What it decided.
    pub kind: StepKind,
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
    /// A plugin failed; the peer is denied with `PLUGIN_FAILED`.
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
        request: &Request,
        initial: Option<Identity>,
        cache: CachePolicy,
    ) -> Verdict {
        let mut identity = initial;
        let mut steps = Vec::with_capacity(self.providers.len());
        for provider in &self.providers {
            let started = Instant::now();
            let result = provider
                .authenticate(request, identity.as_ref(), cache)
                .await;
            let result = result.and_then(|d| match d {
                Decision::Allow(next) => merge(identity.take(), next).map(Decision::Allow),
                other => Ok(other),
            });
            let mut step = Step {
                plugin: provider.name().to_string(),
                kind: StepKind::Abstain,
                elapsed: started.elapsed(),
            };
            match result {
                Ok(Decision::Abstain) => steps.push(step),
                Ok(Decision::Allow(merged)) => {
                    step.kind = StepKind::Allow;
                    steps.push(step);
                    identity = Some(merged);
                }
                Ok(Decision::Deny(mut denial)) => {
                    if denial.reason.trim().is_empty() {
                        denial.reason = "unspecified".into();
                    }
                    step.kind = StepKind::Deny;
                    steps.push(step);
                    return Verdict {
                        outcome: Outcome::Denied {
                            plugin: provider.name().to_string(),
                            denial,
                        },
                        steps,
                    };
                }
                Err(failure) => {
                    step.kind = StepKind::Failed;
                    steps.push(step);
                    return Verdict {
                        outcome: Outcome::Failed {
                            plugin: provider.name().to_string(),
                            failure,
                        },
                        steps,
                    };
                }
            }
        }
        Verdict {
            outcome: identity.map_or(Outcome::NoDecision, Outcome::Allowed),
            steps,
        }
    }
}

/// Folds a plugin's allow into the identity so far. The first allow establishes the identity;
/// later ones may only narrow it: the subject must stay the same, roles and scopes are
/// intersected, pairing may be skipped only if every allowing plugin agrees, the expiry is the
/// earliest, groups are united and attributes are added (an established attribute is kept).
pub fn merge(so_far: Option<Identity>, next: Identity) -> Result<Identity, PluginFailure> {
    if next.subject.trim().is_empty() {
        return Err(PluginFailure::InvalidDecision(
            "allow with an empty subject".into(),
        ));
    }
    let Some(mut id) = so_far else {
        return Ok(next);
    };
    if id.subject != next.subject {
        return Err(PluginFailure::InvalidDecision(format!(
            "allow changed the subject established earlier in the chain (`{}` to `{}`)",
            id.subject, next.subject
        )));
    }
    id.roles.retain(|r| next.roles.contains(r));
    id.scopes.retain(|s| next.scopes.contains(s));
    id.skip_pairing &= next.skip_pairing;
    id.expires_at_ms = match (id.expires_at_ms, next.expires_at_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    for g in next.groups {
        if !id.groups.contains(&g) {
            id.groups.push(g);
        }
    }
    for (k, v) in next.attributes {
        if !id.attributes.iter().any(|(ek, _)| *ek == k) {
            id.attributes.push((k, v));
        }
    }
    Ok(id)
}
