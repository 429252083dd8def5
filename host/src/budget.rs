//! What a request may make the host hold on its behalf, beyond its own linear memory.
//!
//! wasmtime bounds a guest's linear memory, but every host call can allocate too: file
//! contents in `/tmp`, file names, the path each descriptor keeps, directory listings, bucket
//! names, the value each compare-and-swap handle remembers, the answer of a batch read, log
//! lines. Before these were counted one request could grow the process past 1.5 GiB in under
//! a second and take every app down with it. Each such allocation now takes a [`Charge`] from
//! the request's [`Budget`] first, and fails (with an error the guest sees, never a host
//! panic) when the budget is spent. A charge gives its bytes back when it is dropped, so
//! whatever holds the memory (a file node, a descriptor, a handle) holds its charge too, and
//! memory still reachable through an open handle stays counted.
//!
//! The `/tmp` quotas are budgets too: a file's length counts against the quota, the memory
//! behind it (its capacity) against the request's budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A limit on bytes (or, for file counts, on items) and what is in use under it.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

/// A charge was refused: the budget would go over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// The limit that would have been exceeded.
    pub limit: u64,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request's host memory budget ({} bytes) is spent",
            self.limit
        )
    }
}

impl std::error::Error for OverBudget {}

impl Budget {
    /// A budget of `limit`.
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// What is in use now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `amount`, or nothing at all.
    fn take(&self, amount: u64) -> Result<(), OverBudget> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(amount).filter(|&n| n <= self.limit)
            })
            .map(drop)
            .map_err(|_| OverBudget { limit: self.limit })
    }

    fn give(&self, amount: u64) {
        self.used.fetch_sub(amount, Ordering::Relaxed);
    }

    /// A charge of nothing yet, to [`Charge::resize`] later.
    pub fn empty_charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: Some(self.clone()),
            amount: 0,
        }
    }

    /// A charge of `amount`, given back when it is dropped.
    pub fn charge(self: &Arc<Self>, amount: u64) -> Result<Charge, OverBudget> {
        self.take(amount)?;
        Ok(Charge {
            budget: Some(self.clone()),
            amount,
        })
    }
}

/// Bytes (or items) taken from a [`Budget`] for as long as this lives.
#[derive(Debug, Default)]
pub struct Charge {
    /// `None` for what is not counted: the app's shared read-only assets.
    budget: Option<Arc<Budget>>,
    amount: u64,
}

impl Charge {
    /// A charge against nothing, for memory that belongs to no request.
    pub fn none() -> Charge {
        Charge::default()
    }

    /// What this charge holds.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Changes the charge to `amount`: growing takes the difference (or fails and changes
    /// nothing), shrinking gives it back.
    pub fn resize(&mut self, amount: u64) -> Result<(), OverBudget> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if amount > self.amount {
            budget.take(amount - self.amount)?;
        } else {
            budget.give(self.amount - amount);
        }
        self.amount = amount;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.amount);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_come_back_when_dropped() {
        let budget = Budget::new(100);
        let mut a = budget.charge(50).unwrap();
        let b = budget.charge(45).unwrap();
        assert_eq!(budget.charge(6).unwrap_err(), OverBudget { limit: 100 });
        assert!(a.resize(56).is_err(), "a refused resize changes nothing");
        assert_eq!(budget.used(), 95);
        a.resize(10).unwrap();
        assert_eq!(budget.used(), 55);
        drop((a, b));
        assert_eq!(budget.used(), 0);
        assert!(budget.charge(u64::MAX).is_err(), "no overflow");
        let mut none = Charge::none();
        none.resize(u64::MAX).unwrap();
        assert_eq!(budget.used(), 0, "uncounted charges count nowhere");
    }
}
