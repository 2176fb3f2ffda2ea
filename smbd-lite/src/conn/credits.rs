//! The credit window: which MessageIds a client may use, and how many
//! credits to grant.

use std::collections::VecDeque;

/// MessageIds granted but not yet used, as a sliding window.
#[derive(Debug)]
pub struct Credits {
    /// Lowest MessageId not yet used.
    low: u64,
    /// used[i] tells whether `low + i` has been used; len = granted window.
    used: VecDeque<bool>,
    /// Largest window ever granted.
    max: usize,
}

/// Why a MessageId was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// The id lies outside the granted window or was used already.
    #[error("MessageId {0} outside the credit window")]
    OutOfWindow(u64),
}

impl Credits {
    /// A window holding only MessageId `first`.
    pub fn new(first: u64, max: usize) -> Self {
        Self {
            low: first,
            used: VecDeque::from([false]),
            max: max.max(1),
        }
    }

    /// Consumes `charge` ids starting at `id`.
    pub fn consume(&mut self, id: u64, charge: u16) -> Result<(), CreditError> {
        let charge = u64::from(charge.max(1));
        let start = id
            .checked_sub(self.low)
            .ok_or(CreditError::OutOfWindow(id))?;
        let end = start
            .checked_add(charge)
            .ok_or(CreditError::OutOfWindow(id))?;
        if end > self.used.len() as u64 {
            return Err(CreditError::OutOfWindow(id));
        }
        let range = usize::try_from(start).map_err(|_| CreditError::OutOfWindow(id))?
            ..usize::try_from(end).map_err(|_| CreditError::OutOfWindow(id))?;
        if self.used.range(range.clone()).any(|&u| u) {
            return Err(CreditError::OutOfWindow(id));
        }
        for i in range {
            self.used[i] = true;
        }
        while self.used.front() == Some(&true) {
            self.used.pop_front();
            self.low += 1;
        }
        Ok(())
    }

    /// Grants up to `requested` new credits within the cap; never leaves
    /// the client with none. Returns the number granted.
    pub fn grant(&mut self, requested: u16) -> u16 {
        let outstanding = self.used.iter().filter(|&&u| !u).count();
        let room = self.max.saturating_sub(self.used.len());
        let mut g = usize::from(requested).min(room);
        if outstanding == 0 && g == 0 {
            g = 1;
        }
        self.used.extend(std::iter::repeat_n(false, g));
        u16::try_from(g).unwrap_or(u16::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_window_are_accepted_once() {
        let mut c = Credits::new(0, 512);
        c.consume(0, 1).unwrap();
        assert_eq!(c.grant(10), 10);
        c.consume(2, 1).unwrap();
        c.consume(1, 1).unwrap();
        assert!(c.consume(1, 1).is_err());
        assert!(c.consume(11, 1).is_err());
    }

    #[test]
    fn multi_credit_request_uses_several_ids() {
        let mut c = Credits::new(0, 512);
        c.consume(0, 1).unwrap();
        c.grant(8);
        c.consume(1, 4).unwrap();
        assert!(c.consume(4, 1).is_err());
        c.consume(5, 4).unwrap();
    }

    #[test]
    fn client_is_never_left_without_credits() {
        let mut c = Credits::new(0, 1);
        c.consume(0, 1).unwrap();
        assert_eq!(c.grant(0), 1);
        assert!(c.consume(1, 1).is_ok());
    }

    #[test]
    fn grant_is_capped() {
        let mut c = Credits::new(0, 16);
        c.consume(0, 1).unwrap();
        assert_eq!(c.grant(1000), 16);
    }
}
