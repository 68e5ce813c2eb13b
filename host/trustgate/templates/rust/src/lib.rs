//! {{name}}: lets an identity through if its namespace matches one of `namespaces`.

use serde::Deserialize;
use trustgate_plugin_sdk::{Decision, Glob, Identity, Plugin, Request, Wants, deny_forbidden};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Namespace globs, e.g. `["prod-*"]`.
    namespaces: Vec<String>,
}

pub struct Policy(Vec<Glob>);

impl Plugin for Policy {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.namespaces.is_empty() {
            return Err("namespaces: list at least one namespace glob".into());
        }
        Ok(Self(config.namespaces.iter().map(|n| Glob::new(n)).collect()))
    }

    /// What every call reads: the gateway hands it over with the call itself. Anything else
    /// is still readable, at the cost of one more crossing into the gateway.
    fn wants(&self) -> Wants {
        Wants::default().attribute("namespace")
    }

    fn authenticate(&self, _request: &Request, so_far: Option<&Identity>) -> Decision {
        let Some(identity) = so_far else {
            return Decision::Abstain; // nobody established yet: no opinion
        };
        let namespace = identity.attribute("namespace").unwrap_or_default();
        if self.0.iter().any(|g| g.matches(namespace)) {
            Decision::permit()
        } else {
            deny_forbidden("namespace-not-allowed", format!("namespace `{namespace}` is not listed"))
        }
    }
}

trustgate_plugin_sdk::plugin!(Policy);
