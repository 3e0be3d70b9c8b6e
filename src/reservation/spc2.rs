//! SPC-2 RESERVE / RELEASE (6) and (10) beside persistent reservations (SPC-4 5.13.3, CRH=1).

use super::nexus::NexusRef;
use super::types::{PrError, Relation};
use super::Reservations;

impl Reservations {
    /// RESERVE(6)/(10) (SPC-2 5.5.1 with SPC-4 5.13.3 and CRH=1).
    pub fn reserve6(&self, who: NexusRef) -> Result<(), PrError> {
        let mut g = self.inner.lock().unwrap();
        if !g.state.registrants.is_empty() || g.state.reservation.is_some() {
            // CRH=1: the holder (or a registrant of a RO/AR reservation) gets GOOD, no effect.
            return match g.state.relation(who) {
                Relation::Holder => Ok(()),
                Relation::Registered if g.state.reservation.is_some_and(|r| r.rtype.registrants_have_access()) => Ok(()),
                _ => Err(PrError::Conflict),
            };
        }
        match &g.spc2 {
            Some(h) if !who.matches(h, false) => Err(PrError::Conflict),
            Some(_) => Ok(()),
            None => {
                g.spc2 = Some(who.to_owned());
                self.publish(&g);
                Ok(())
            }
        }
    }

    /// RELEASE(6)/(10): the holder releases; anyone else gets GOOD with no effect (SPC-2 5.5.1).
    pub fn release6(&self, who: NexusRef) -> Result<(), PrError> {
        let mut g = self.inner.lock().unwrap();
        if !g.state.registrants.is_empty() || g.state.reservation.is_some() {
            return match g.state.relation(who) {
                Relation::Holder => Ok(()),
                Relation::Registered if g.state.reservation.is_some_and(|r| r.rtype.registrants_have_access()) => Ok(()),
                _ => Err(PrError::Conflict),
            };
        }
        if g.spc2.as_ref().is_some_and(|h| who.matches(h, false)) {
            g.spc2 = None;
            self.publish(&g);
        }
        Ok(())
    }

    /// I_T nexus loss or logical unit reset: an SPC-2 reservation of that nexus (or any, for a
    /// reset) goes away; persistent reservations stay (SPC-4 5.13.1).
    pub fn nexus_lost(&self, who: Option<NexusRef>) {
        let mut g = self.inner.lock().unwrap();
        let drop = match (&g.spc2, who) {
            (Some(h), Some(w)) => w.matches(h, false),
            (Some(_), None) => true,
            _ => false,
        };
        if drop {
            g.spc2 = None;
            self.publish(&g);
        }
    }
}
