//! Operators' commands on a rollout: pause, resume, abort (and a tracker
//! status from an external executor), promote, manual rollback. What each
//! does is `otafleet_core::effects::command`; a refused command is a
//! [`StoreError::Conflict`] and changes nothing.

use super::apply::apply_effects;
use super::{load_rollout, Rollout};
use crate::{now_ms, Result, Store, StoreError};
use otafleet_core::effects::{self, Command, CommandError, RolloutFacts};
use otafleet_core::RolloutState;

impl Rollout {
    /// What the core needs to know about this rollout to compute a command's effects.
    pub fn facts(&self) -> RolloutFacts {
        RolloutFacts {
            state: self.state,
            current_wave: self.current_wave.max(0) as usize,
            rollback_requested: self.rollback_requested,
            auto_rollback: self.strategy.auto_rollback,
        }
    }
}

impl Store {
    /// Applies an operator's command in one transaction and returns the rollout after it.
    pub async fn steer_rollout(&self, id: i64, command: Command<'_>, actor: &str) -> Result<Rollout> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let r = load_rollout(&mut tx, id).await?;
        let e = effects::command(r.facts(), command, now).map_err(|e| match e {
            CommandError::Transition(t) => StoreError::Conflict(format!("rollout {id}: {t}")),
            other => StoreError::Conflict(format!("rollout {id} {other}")),
        })?;
        apply_effects(&mut tx, &r, &e, actor, now).await?;
        let r = load_rollout(&mut tx, id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Pause, resume, abort, or a tracker status. Illegal moves are a [`StoreError::Conflict`].
    pub async fn set_rollout_state(
        &self,
        id: i64,
        to: RolloutState,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<Rollout> {
        self.steer_rollout(id, Command::SetState { to, reason }, actor).await
    }

    /// Manual rollback: an active rollout is aborted, and every device it updated
    /// is sent back to its previous version.
    pub async fn rollback_rollout(&self, id: i64, actor: &str) -> Result<Rollout> {
        self.steer_rollout(id, Command::Rollback, actor).await
    }
}
