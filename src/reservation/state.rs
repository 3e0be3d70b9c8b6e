//! The reservation state machine: registrants, the reservation, the generation counter and the
//! rules of every action (SPC-4 5.13, NVMe Base 8.19), as a pure function of (state, nexus,
//! action). No I/O, no locks: [`super::Reservations`] serialises, persists and publishes.

use serde::{Deserialize, Serialize};

use super::nexus::{Nexus, NexusRef};
use super::types::{PrError, PrEvent, Relation, ResType};

/// Registrants per volume: pNFS needs many clients × paths (SPDK stops at 16).
pub const MAX_REGISTRANTS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registrant {
    /// Stable id inside this state (the reservation names its holder by it).
    pub id: u64,
    pub nexus: Nexus,
    pub key: u64,
    /// Registered with ALL_TG_PT=1: the initiator port through every target port.
    pub all_tg_pt: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub rtype: ResType,
    /// Registrant id of the holder; for all-registrants types every registrant holds it and this
    /// is the registrant that reserved.
    pub holder: u64,
}

/// The state that APTPL/PTPL makes survive a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRgeneration (SPC-4 6.16.2) / NVMe GEN.
    pub generation: u32,
    pub registrants: Vec<Registrant>,
    pub reservation: Option<Reservation>,
    /// Activate Persist Through Power Loss (SCSI APTPL, NVMe PTPL).
    pub aptpl: bool,
    pub next_id: u64,
}

/// APTPL as a command sets it: SCSI always gives a value, NVMe CPTPL 00b leaves it alone.
pub type Aptpl = Option<bool>;

/// A reservation action in protocol-neutral form (each front-end decodes its wire format into
/// one). Type fields carry the decode result so the engine raises the error only when SPC-4 says
/// the field matters (PREEMPT AND ABORT ignores the type when it only removes registrations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// SCSI REGISTER (ignore_existing=false) / REGISTER AND IGNORE EXISTING KEY (SPC-4 5.13.7).
    Register { key: u64, sa_key: u64, ignore_existing: bool, all_tg_pt: bool, spec_i_pt: bool, aptpl: Aptpl },
    /// NVMe Register, RREGA 000b: register NRKEY; idempotent for the same key.
    NvmeRegister { nrkey: u64, aptpl: Aptpl },
    /// NVMe Register, RREGA 001b.
    NvmeUnregister { crkey: u64, iekey: bool, aptpl: Aptpl },
    /// NVMe Register, RREGA 010b; NRKEY=0 unregisters (what Linux sends to unregister).
    NvmeReplace { crkey: u64, nrkey: u64, iekey: bool, aptpl: Aptpl },
    /// RESERVE (SPC-4 5.13.9) / Acquire RACQA 000b.
    Reserve { key: u64, rtype: Result<ResType, PrError> },
    /// RELEASE (SPC-4 5.13.11.2) / Release RRELA 000b.
    Release { key: u64, rtype: Result<ResType, PrError> },
    /// CLEAR (SPC-4 5.13.11.3) / Release RRELA 001b.
    Clear { key: u64 },
    /// PREEMPT / PREEMPT AND ABORT (SPC-4 5.13.11.4) / Acquire RACQA 001b, 010b.
    Preempt { key: u64, sa_key: u64, rtype: Result<ResType, PrError>, abort: bool },
    /// REGISTER AND MOVE (SPC-4 5.13.8); the destination's target port is named by its relative
    /// target port identifier and resolved by the caller ([`super::Reservations`]).
    RegisterAndMove { key: u64, sa_key: u64, dest: Nexus, unreg: bool, aptpl: Aptpl },
    /// Operator override (reservation_clear RPC): CLEAR on behalf of nobody, so every
    /// registrant hears RESERVATIONS PREEMPTED.
    OperatorClear,
    /// Operator / layout-store fence: PREEMPT AND ABORT of every registration holding `sa_key`
    /// on behalf of nobody (a reservation they hold goes with them). Succeeds with nothing to
    /// remove too, and always drains: whatever the victim had in flight is done when it completes.
    OperatorPreemptAbort { sa_key: u64 },
    /// NVMe Set Features Reservation Persistence (Feature 83h): PTPL without a registration.
    SetPersist { ptpl: bool },
}

/// A reservation event addressed to the nexuses of one registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressed {
    pub nexus: Nexus,
    pub all_tg_pt: bool,
    pub event: PrEvent,
}

/// What an action did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The persistent part changed (registrations, keys, reservation, APTPL).
    pub changed: bool,
    /// Registrations removed by PREEMPT / PREEMPT AND ABORT / CLEAR (their commands are fenced).
    pub removed: Vec<Registrant>,
    /// PREEMPT AND ABORT: the command completes only after the victims' in-flight writes drain.
    pub abort: bool,
    /// Unit attentions / notifications to establish.
    pub events: Vec<Addressed>,
}

impl PrState {
    /// Index of the registration covering `who`.
    pub fn find(&self, who: NexusRef) -> Option<usize> {
        self.registrants.iter().position(|r| who.matches(&r.nexus, r.all_tg_pt))
    }

    pub fn relation(&self, who: NexusRef) -> Relation {
        let Some(i) = self.find(who) else { return Relation::Unregistered };
        match self.reservation {
            Some(r) if r.rtype.all_registrants() || r.holder == self.registrants[i].id => Relation::Holder,
            _ => Relation::Registered,
        }
    }

    /// The key READ RESERVATION reports: the holder's, or 0 for all-registrants types (SPC-4 6.15.3).
    pub fn reservation_key(&self) -> u64 {
        match self.reservation {
            Some(r) if !r.rtype.all_registrants() => self.holder().map(|h| h.key).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn holder(&self) -> Option<&Registrant> {
        let r = self.reservation?;
        self.registrants.iter().find(|g| g.id == r.holder)
    }

    /// Is registrant `g` a reservation holder?
    pub fn is_holder(&self, g: &Registrant) -> bool {
        match self.reservation {
            Some(r) => r.rtype.all_registrants() || r.holder == g.id,
            None => false,
        }
    }

    pub fn apply(&mut self, who: NexusRef, action: &Action) -> Result<Applied, PrError> {
        let mut out = Applied::default();
        match action {
            Action::Register { key, sa_key, ignore_existing, all_tg_pt, spec_i_pt, aptpl } => {
                if *spec_i_pt {
                    return Err(PrError::SpecIPtUnsupported);
                }
                match self.find(who) {
                    None => {
                        if !ignore_existing && *key != 0 {
                            return Err(PrError::Conflict);
                        }
                        if *sa_key == 0 {
                            return Ok(out); // SPC-4 5.13.7: nothing to do, generation unchanged
                        }
                        self.add(who, *sa_key, *all_tg_pt)?;
                    }
                    Some(i) => {
                        if !ignore_existing && *key != self.registrants[i].key {
                            return Err(PrError::Conflict);
                        }
                        if *sa_key == 0 {
                            self.unregister(i, &mut out);
                        } else {
                            self.registrants[i].key = *sa_key;
                        }
                    }
                }
                self.bump(aptpl, &mut out);
            }
            Action::NvmeRegister { nrkey, aptpl } => {
                if *nrkey == 0 {
                    return Err(PrError::ZeroServiceActionKey);
                }
                match self.find(who) {
                    Some(i) if self.registrants[i].key == *nrkey => {
                        // Registering the same key again succeeds without a change.
                        if let Some(a) = aptpl {
                            if *a != self.aptpl {
                                self.aptpl = *a;
                                out.changed = true;
                            }
                        }
                        return Ok(out);
                    }
                    Some(_) => return Err(PrError::Conflict),
                    None => {
                        self.add(who, *nrkey, false)?;
                    }
                }
                self.bump(aptpl, &mut out);
            }
            Action::NvmeUnregister { crkey, iekey, aptpl } => {
                let i = self.find(who).ok_or(PrError::Conflict)?;
                if !iekey && self.registrants[i].key != *crkey {
                    return Err(PrError::Conflict);
                }
                self.unregister(i, &mut out);
                self.bump(aptpl, &mut out);
            }
            Action::NvmeReplace { crkey, nrkey, iekey, aptpl } => {
                let i = self.find(who).ok_or(PrError::Conflict)?;
                if !iekey && self.registrants[i].key != *crkey {
                    return Err(PrError::Conflict);
                }
                if *nrkey == 0 {
                    // Linux unregisters with REPLACE to key 0 (nvme_pr_register); a zero key is not a
                    // registration in either protocol, so this is an unregister.
                    self.unregister(i, &mut out);
                } else {
                    self.registrants[i].key = *nrkey;
                }
                self.bump(aptpl, &mut out);
            }
            Action::Reserve { key, rtype } => {
                let i = self.registered_with(who, *key)?;
                let t = rtype.clone()?;
                match self.reservation {
                    None => {
                        self.reservation = Some(Reservation { rtype: t, holder: self.registrants[i].id });
                        out.changed = true;
                    }
                    // Same holder, same type and scope: GOOD, nothing changes (SPC-4 5.13.9).
                    Some(r) if r.rtype == t && self.is_holder(&self.registrants[i]) => {}
                    Some(_) => return Err(PrError::Conflict),
                }
            }
            Action::Release { key, rtype } => {
                let i = self.registered_with(who, *key)?;
                let Some(r) = self.reservation else { return Ok(out) };
                if !self.is_holder(&self.registrants[i]) {
                    return Ok(out); // SPC-4 5.13.11.2: not the holder: GOOD, no effect
                }
                match rtype {
                    Ok(t) if *t == r.rtype => {}
                    Err(PrError::InvalidScope) => return Err(PrError::InvalidScope),
                    _ => return Err(PrError::InvalidRelease),
                }
                self.reservation = None;
                out.changed = true;
                if r.rtype.registrants_have_access() {
                    let me = self.registrants[i].id;
                    self.notify_all_except(me, PrEvent::ReservationReleased, &mut out);
                }
            }
            Action::Clear { key } => {
                let i = self.registered_with(who, *key)?;
                let me = self.registrants[i].id;
                self.notify_all_except(me, PrEvent::ReservationPreempted, &mut out);
                out.removed = self.registrants.drain(..).filter(|g| g.id != me).collect();
                self.reservation = None;
                self.bump(&None, &mut out);
            }
            Action::Preempt { key, sa_key, rtype, abort } => {
                let i = self.registered_with(who, *key)?;
                let me = self.registrants[i].id;
                let res = self.reservation;
                let holder_key = self.holder().map(|h| h.key);
                let preempt_reservation = match res {
                    Some(r) if r.rtype.all_registrants() => *sa_key == 0,
                    _ if *sa_key == 0 => return Err(PrError::ZeroServiceActionKey),
                    Some(_) => holder_key == Some(*sa_key),
                    None => false,
                };
                if preempt_reservation {
                    // SPC-4 5.13.11.4.3: the type matters here.
                    let t = rtype.clone()?;
                    let all = *sa_key == 0;
                    self.remove_where(|g| g.id != me && (all || g.key == *sa_key), &mut out);
                    self.reservation = Some(Reservation { rtype: t, holder: me });
                    if res.map(|r| r.rtype) != Some(t) {
                        self.notify_all_except(me, PrEvent::ReservationReleased, &mut out);
                    }
                } else {
                    // SPC-4 5.13.11.4.4: only registrations go; TYPE and SCOPE are ignored.
                    if !self.registrants.iter().any(|g| g.key == *sa_key) {
                        return Err(PrError::Conflict);
                    }
                    self.remove_where(|g| g.id != me && g.key == *sa_key, &mut out);
                }
                out.abort = *abort;
                self.bump(&None, &mut out);
            }
            Action::RegisterAndMove { key, sa_key, dest, unreg, aptpl } => {
                let i = self.registered_with(who, *key)?;
                let me = self.registrants[i].clone();
                let Some(r) = self.reservation else { return Err(PrError::Conflict) };
                if r.rtype.all_registrants() || r.holder != me.id {
                    return Err(PrError::Conflict);
                }
                if *sa_key == 0 {
                    return Err(PrError::ZeroServiceActionKey);
                }
                if dest.as_ref().matches(&me.nexus, me.all_tg_pt) {
                    return Err(PrError::MoveToSelf);
                }
                let d = match self.find(dest.as_ref()) {
                    Some(d) => {
                        self.registrants[d].key = *sa_key;
                        self.registrants[d].id
                    }
                    None => self.add(dest.as_ref(), *sa_key, false)?,
                };
                self.reservation = Some(Reservation { rtype: r.rtype, holder: d });
                if *unreg {
                    self.registrants.retain(|g| g.id != me.id);
                }
                self.bump(aptpl, &mut out);
            }
            Action::OperatorClear => {
                if self.registrants.is_empty() && self.reservation.is_none() {
                    return Ok(out);
                }
                self.notify_all_except(u64::MAX, PrEvent::ReservationPreempted, &mut out);
                out.removed = std::mem::take(&mut self.registrants);
                self.reservation = None;
                self.bump(&None, &mut out);
            }
            Action::OperatorPreemptAbort { sa_key } => {
                out.abort = true;
                if self.registrants.iter().any(|g| g.key == *sa_key) {
                    self.remove_where(|g| g.key == *sa_key, &mut out);
                    self.bump(&None, &mut out);
                }
            }
            Action::SetPersist { ptpl } => {
                if self.aptpl != *ptpl {
                    self.aptpl = *ptpl;
                    out.changed = true;
                }
            }
        }
        Ok(out)
    }

    /// The registration of `who`, whose key must be `key` (else RESERVATION CONFLICT, SPC-4 6.16.1).
    fn registered_with(&self, who: NexusRef, key: u64) -> Result<usize, PrError> {
        match self.find(who) {
            Some(i) if self.registrants[i].key == key => Ok(i),
            _ => Err(PrError::Conflict),
        }
    }

    fn add(&mut self, who: NexusRef, key: u64, all_tg_pt: bool) -> Result<u64, PrError> {
        if self.registrants.len() >= MAX_REGISTRANTS {
            return Err(PrError::Resources);
        }
        if all_tg_pt {
            // Registering the port everywhere while it is already registered through another
            // target port would give one nexus two keys.
            let port = who.to_owned();
            if self.registrants.iter().any(|g| port.as_ref().matches(&g.nexus, true)) {
                return Err(PrError::Conflict);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.registrants.push(Registrant { id, nexus: who.to_owned(), key, all_tg_pt });
        Ok(id)
    }

    /// Remove registration `i` and what goes with it (SPC-4 5.13.10.3: the holder's reservation
    /// is released, with RESERVATIONS RELEASED to the others for registrants-only types; an
    /// all-registrants reservation lasts while any registrant remains).
    fn unregister(&mut self, i: usize, out: &mut Applied) {
        let g = self.registrants.remove(i);
        out.changed = true;
        let Some(r) = self.reservation else { return };
        if r.rtype.all_registrants() {
            if self.registrants.is_empty() {
                self.reservation = None;
            } else if r.holder == g.id {
                let next = self.registrants[0].id;
                self.reservation = Some(Reservation { holder: next, ..r });
            }
        } else if r.holder == g.id {
            self.reservation = None;
            if r.rtype.registrants_have_access() {
                self.notify_all_except(g.id, PrEvent::ReservationReleased, out);
            }
        }
    }

    fn remove_where(&mut self, pred: impl Fn(&Registrant) -> bool, out: &mut Applied) {
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.registrants).into_iter().partition(|g| pred(g));
        self.registrants = keep;
        for g in &gone {
            out.events.push(Addressed {
                nexus: g.nexus.clone(),
                all_tg_pt: g.all_tg_pt,
                event: PrEvent::RegistrationPreempted,
            });
        }
        if let Some(r) = self.reservation {
            if !self.registrants.iter().any(|g| g.id == r.holder) {
                if r.rtype.all_registrants() && !self.registrants.is_empty() {
                    self.reservation = Some(Reservation { holder: self.registrants[0].id, ..r });
                } else {
                    self.reservation = None;
                }
            }
        }
        out.removed.extend(gone);
    }

    fn notify_all_except(&self, me: u64, event: PrEvent, out: &mut Applied) {
        for g in self.registrants.iter().filter(|g| g.id != me) {
            out.events.push(Addressed { nexus: g.nexus.clone(), all_tg_pt: g.all_tg_pt, event });
        }
    }

    /// A successful registration-class action: generation and APTPL (SPC-4 6.16.2 / 5.13.7).
    fn bump(&mut self, aptpl: &Aptpl, out: &mut Applied) {
        self.generation = self.generation.wrapping_add(1);
        if let Some(a) = aptpl {
            self.aptpl = *a;
        }
        out.changed = true;
    }
}
