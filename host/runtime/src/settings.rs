//! The runtime's settings: the `[plugins]` table of a gateway configuration, deserialised as is.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How plugins are run: sandbox limits applied to every call and the compile cache.
///
/// Deserialised strictly (`deny_unknown_fields`); every field has a default, so `{}` (or an
/// absent table) is a valid configuration. Call [`RuntimeSettings::validate`] after
/// deserialising: it refuses values that would disable a fence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// CPU time one `configure` or `authenticate` call may use inside the guest, in
    /// milliseconds. Time the guest spends waiting on host calls does not count.
    pub deadline_ms: u64,
    /// Cap on each instance's linear memory (and tables), in MiB.
    pub memory_mib: u64,
    /// Wall-clock limit of one host call (TokenReview, JWT verification), in milliseconds.
    pub host_call_timeout_ms: u64,
    /// Wall-clock bound of one whole call (`configure` or `authenticate`): guest code and host
    /// calls, in milliseconds. At least `host_call_timeout_ms` + `deadline_ms`: a host call is
    /// cut short so the guest keeps `deadline_ms` of it to finish. Unset, it is exactly that
    /// plus 500 ms (see [`RuntimeSettings::call_timeout`]).
    pub call_timeout_ms: Option<u64>,
    /// Memory all instances of all plugins may hold together, in MiB (at least
    /// `memory_mib`). Growth past it fails the call with `UNAVAILABLE`. Unset, it is 2048 or
    /// `memory_mib`, whichever is larger.
    pub memory_budget_mib: Option<u64>,
    /// Live instances one plugin may have (idle and busy). A call that finds none idle and the
    /// cap reached waits up to `instance_wait_ms` for one, then fails with `UNAVAILABLE`.
    pub max_instances: usize,
    /// How long a call waits for an instance when a plugin is at `max_instances`, in ms.
    pub instance_wait_ms: u64,
    /// Directory for compiled components; `None` compiles on every start. The embedder
    /// resolves relative paths before handing the settings over.
    pub cache_dir: Option<PathBuf>,
    /// Configured instances each plugin keeps ready for reuse.
    pub max_idle_instances: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            deadline_ms: 50,
            memory_mib: 64,
            host_call_timeout_ms: 5_000,
            call_timeout_ms: None,
            memory_budget_mib: None,
            max_instances: 64,
            instance_wait_ms: 1_000,
            cache_dir: None,
            max_idle_instances: std::thread::available_parallelism()
                .map(|n| n.get() * 4)
                .unwrap_or(8),
        }
    }
}

/// What `call_timeout_ms` adds, when derived, to `host_call_timeout_ms` + `deadline_ms`.
const CALL_MARGIN_MS: u64 = 500;

/// The plugin memory budget when `memory_budget_mib` is not set (unless `memory_mib` is more).
const DEFAULT_BUDGET_MIB: u64 = 2_048;

/// A setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SettingsError {
    /// The offending key, relative to the settings table (e.g. `deadline_ms`).
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl RuntimeSettings {
    /// Refuses values that would disable a fence or cannot work.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let range = |key: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(SettingsError {
                    key,
                    message: format!("must be between {min} and {max}, got {value}"),
                })
            }
        };
        range("deadline_ms", self.deadline_ms, 1, 60_000)?;
        range("memory_mib", self.memory_mib, 1, 4_096)?;
        range(
            "host_call_timeout_ms",
            self.host_call_timeout_ms,
            1,
            600_000,
        )?;
        range(
            "max_idle_instances",
            self.max_idle_instances as u64,
            0,
            4_096,
        )?;
        // Relations name the key the operator set and the keys it must agree with; a key left
        // out follows the others instead of contradicting them.
        let floor = self.host_call_timeout_ms.saturating_add(self.deadline_ms);
        if let Some(call) = self.call_timeout_ms {
            if call < floor {
                return Err(SettingsError {
                    key: "call_timeout_ms",
                    message: format!(
                        "must be at least host_call_timeout_ms + deadline_ms ({} + {} = {floor}), got {call}",
                        self.host_call_timeout_ms, self.deadline_ms
                    ),
                });
            }
            range("call_timeout_ms", call, 1, 600_000)?;
        }
        if let Some(budget) = self.memory_budget_mib {
            if budget < self.memory_mib {
                return Err(SettingsError {
                    key: "memory_budget_mib",
                    message: format!(
                        "must be at least memory_mib ({}), got {budget}",
                        self.memory_mib
                    ),
                });
            }
            range("memory_budget_mib", budget, 1, 1 << 20)?;
        }
        range("max_instances", self.max_instances as u64, 1, 4_096)?;
        range("instance_wait_ms", self.instance_wait_ms, 0, 60_000)?;
        Ok(())
    }

    /// The CPU deadline of one call.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// The memory cap of one instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }

    /// The wall-clock limit of one host call.
    pub fn host_call_timeout(&self) -> Duration {
        Duration::from_millis(self.host_call_timeout_ms)
    }

    /// The wall-clock bound of one call: `call_timeout_ms`, or if unset
    /// `host_call_timeout_ms` + `deadline_ms` + 500 ms.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.unwrap_or_else(|| {
            self.host_call_timeout_ms
                .saturating_add(self.deadline_ms)
                .saturating_add(CALL_MARGIN_MS)
        }))
    }

    /// The memory budget of all instances together, in bytes: `memory_budget_mib`, or if
    /// unset 2048 MiB or `memory_mib`, whichever is larger.
    pub fn memory_budget_bytes(&self) -> usize {
        let mib = self
            .memory_budget_mib
            .unwrap_or(DEFAULT_BUDGET_MIB.max(self.memory_mib));
        (mib as usize).saturating_mul(1 << 20)
    }

    /// How long a call waits for an instance at `max_instances`.
    pub fn instance_wait(&self) -> Duration {
        Duration::from_millis(self.instance_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_are_refused() {
        RuntimeSettings::default().validate().unwrap();
        let s: RuntimeSettings = serde_json::from_str(r#"{"deadline_ms": 5}"#).unwrap();
        assert_eq!(s.deadline(), Duration::from_millis(5));
        assert_eq!(s.memory_bytes(), 64 << 20);
        let e = serde_json::from_str::<RuntimeSettings>(r#"{"memroy_mib": 5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `memroy_mib`"), "{e}");
        let zero = RuntimeSettings {
            deadline_ms: 0,
            ..RuntimeSettings::default()
        };
        assert_eq!(zero.validate().unwrap_err().key, "deadline_ms");
    }

    #[test]
    fn a_key_left_out_follows_the_keys_set() {
        // `deadline_ms` alone: the call's bound grows with it instead of contradicting it.
        let s: RuntimeSettings = serde_json::from_str(r#"{"deadline_ms": 1000}"#).unwrap();
        s.validate().unwrap();
        assert_eq!(s.call_timeout(), Duration::from_millis(5_000 + 1_000 + 500));
        let s: RuntimeSettings = serde_json::from_str(r#"{"memory_mib": 4000}"#).unwrap();
        s.validate().unwrap();
        assert_eq!(s.memory_budget_bytes(), 4000 << 20);
        // Set too small, the error names the key written and what it relates to.
        let s: RuntimeSettings =
            serde_json::from_str(r#"{"deadline_ms": 1000, "call_timeout_ms": 5500}"#).unwrap();
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "call_timeout_ms");
        assert!(e.message.contains("(5000 + 1000 = 6000), got 5500"), "{e}");
        let s: RuntimeSettings =
            serde_json::from_str(r#"{"memory_mib": 100, "memory_budget_mib": 50}"#).unwrap();
        assert_eq!(s.validate().unwrap_err().key, "memory_budget_mib");
    }
}
