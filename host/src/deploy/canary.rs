//! Judging canaries: every second, one replica of the fleet reads each canary's counts and
//! the active version's over the canary's window, then holds it, moves it to its next step,
//! promotes it, or sends the fleet back to the active version, and writes why in the app's
//! record.
//!
//! Who judges: a replica that holds the judge's role in the registry (a key with a short
//! expiry, renewed every second). Not the deploying CLI, nor the admin host that started the
//! rollout: both may go away mid-rollout (a closed laptop, a host restarted), and a canary
//! that fails half its requests must go back all the same. That is Flagger's and Argo
//! Rollouts' model, where a controller in the cluster runs the analysis and the CLI only
//! watches. Every figure the judge needs is in the store (counts per version in time
//! buckets, the plan and the step's start in the record), so when the role passes to another
//! replica (its holder died), the next one judges the same canary the same way, without
//! history of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tracing::{info, warn};

use super::registry::{AppRecord, Canary, Count, Registry};

/// How long the judge's role outlives its holder's last renewal.
const ROLE_TTL: Duration = Duration::from_secs(3);

/// What a check decides.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Stay at this step: too early, too few requests, or the last step.
    Hold,
    /// Go to this share.
    Advance(u8),
    /// Make the canary the active version.
    Promote,
    /// Go back to the active version, for this reason.
    RollBack(String),
}

/// The counts a check looks at: the canary's and the active version's over its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figures {
    pub(crate) canary: Count,
    pub(crate) active: Count,
    /// Seconds looked back over: the window, or less when the canary is younger.
    pub(crate) seconds: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The figures of `record`'s canary over its window, or `None` if it has none.
pub(crate) async fn figures(registry: &Registry, record: &AppRecord) -> Result<Option<Figures>> {
    let (Some(canary), Some(active)) = (&record.canary, &record.active) else {
        return Ok(None);
    };
    let plan = &canary.plan;
    let from = now().saturating_sub(plan.window_secs).max(canary.started);
    let width = plan.bucket_secs();
    let name = &record.name;
    Ok(Some(Figures {
        canary: registry
            .tallied(name, canary.version.number, width, from)
            .await?,
        active: registry.tallied(name, active.number, width, from).await?,
        seconds: now() - from,
    }))
}

/// What `canary` (whose active version is `active`, e.g. `v1`) deserves for `figures`, `now`.
///
/// Its error rate is compared with the active version's over the same window, not with a
/// fixed bound: an app whose clients send bad requests fails as often on both, and only the
/// difference is the new version's fault. A step advances once it has lasted the plan's
/// interval with enough requests judged; without them it holds rather than advance blind.
pub(crate) fn verdict(canary: &Canary, active: &str, figures: &Figures, now: u64) -> Verdict {
    let plan = &canary.plan;
    let (c, a) = (figures.canary, figures.active);
    if c.total < plan.min_requests {
        return Verdict::Hold;
    }
    let excess = c.error_percent() - a.error_percent();
    if excess > plan.max_error_excess {
        return Verdict::RollBack(format!(
            "{}'s error rate over the last {} s was {:.1}% ({} of {} requests), {}'s {:.1}% \
             ({} of {}): {:.1} percentage points more, over the {} allowed \
             (--canary-max-error-excess)",
            canary.version.id(),
            figures.seconds,
            c.error_percent(),
            c.errors,
            c.total,
            active,
            a.error_percent(),
            a.errors,
            a.total,
            excess,
            plan.max_error_excess,
        ));
    }
    if now.saturating_sub(canary.since) < plan.interval_secs {
        return Verdict::Hold;
    }
    match plan.steps.iter().find(|s| **s > canary.percent) {
        Some(100) => Verdict::Promote,
        Some(next) => Verdict::Advance(*next),
        None => Verdict::Hold,
    }
}

/// One round of judging, if replica `id` holds the role: every app's canary gets its
/// verdict, and the record changes by compare-and-swap only if the canary is still the one
/// judged (a person may have promoted or ended it meanwhile).
pub(crate) async fn judge(registry: &Registry, id: &str) -> Result<()> {
    if !registry.judge(id, ROLE_TTL).await? {
        return Ok(());
    }
    for record in registry.apps().await? {
        let (Some(canary), Some(active)) = (&record.canary, &record.active) else {
            continue;
        };
        let Some(figures) = figures(registry, &record).await? else {
            continue;
        };
        let verdict = verdict(canary, &active.id(), &figures, now());
        if verdict == Verdict::Hold {
            continue;
        }
        let name = &record.name;
        let judged = (canary.version.number, canary.percent);
        let changed = registry
            .update(name, |current| {
                let mut record = current.cloned().unwrap_or_else(|| AppRecord::empty(name));
                let same = record
                    .canary
                    .as_ref()
                    .map(|c| (c.version.number, c.percent));
                if same != Some(judged) {
                    anyhow::bail!("the canary changed while it was judged");
                }
                match &verdict {
                    Verdict::Hold => {}
                    Verdict::Advance(percent) => {
                        let canary = record.canary.as_mut().expect("checked above");
                        canary.percent = *percent;
                        canary.since = now();
                    }
                    Verdict::Promote => {
                        record.active = record.canary.as_ref().map(|c| c.version.clone());
                        record.end_canary(true, "every step passed its checks".into());
                    }
                    Verdict::RollBack(why) => record.end_canary(false, why.clone()),
                }
                Ok(record)
            })
            .await;
        let version = canary.version.id();
        match (changed, &verdict) {
            (Err(e), _) => info!(app = name, error = format!("{e:#}"), "canary not changed"),
            (Ok(_), Verdict::RollBack(why)) => {
                warn!(
                    app = name,
                    version,
                    reason = why,
                    "canary rolled back by itself"
                )
            }
            (Ok(_), Verdict::Advance(percent)) => {
                info!(app = name, version, percent, "canary advanced")
            }
            (Ok(_), _) => info!(app = name, version, "canary promoted"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::registry::{CanaryPlan, Version};

    fn canary(percent: u8, since: u64) -> Canary {
        Canary {
            version: Version::sample(2),
            percent,
            plan: CanaryPlan::sample(&[10, 50, 100]),
            started: since,
            since,
        }
    }

    fn figures(canary: (u64, u64), active: (u64, u64)) -> Figures {
        let count = |(total, errors)| Count { total, errors };
        Figures {
            canary: count(canary),
            active: count(active),
            seconds: 30,
        }
    }

    #[test]
    fn a_canary_is_judged_against_the_active_version_and_only_on_enough_requests() {
        let c = canary(10, 1000);
        // Too few requests say nothing, however bad.
        assert_eq!(
            verdict(&c, "v1", &figures((19, 19), (500, 0)), 2000),
            Verdict::Hold
        );
        // 10 points worse than the active version: back.
        let back = verdict(&c, "v1", &figures((20, 4), (500, 50)), 1010);
        assert!(
            matches!(&back, Verdict::RollBack(why) if why.contains("20.0% (4 of 20")),
            "{back:?}"
        );
        // As bad as the active version: not the new version's fault.
        assert_eq!(
            verdict(&c, "v1", &figures((20, 2), (500, 50)), 1010),
            Verdict::Hold
        );
        // Passing, once the interval is over: the next step, then the promotion.
        assert_eq!(
            verdict(&c, "v1", &figures((20, 0), (500, 0)), 1060),
            Verdict::Advance(50)
        );
        assert_eq!(
            verdict(&canary(50, 1000), "v1", &figures((20, 0), (20, 0)), 1060),
            Verdict::Promote
        );
        // A plan that stops short of 100 holds at its last step.
        let mut held = canary(50, 1000);
        held.plan.steps = vec![10, 50];
        assert_eq!(
            verdict(&held, "v1", &figures((99, 0), (99, 0)), 9999),
            Verdict::Hold
        );
    }
}
