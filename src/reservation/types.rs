//! Protocol-neutral vocabulary of the reservation engine: reservation types, command classes and
//! the SPC-4 conflict table, events, errors.

/// Persistent reservation type, in SPC-4 codes (SPC-4 6.15.4 Table 169). NVMe maps its RTYPE 1..6
/// onto these (see `nvme::reservation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ResType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl ResType {
    pub const ALL: [ResType; 6] = [
        ResType::WriteExclusive,
        ResType::ExclusiveAccess,
        ResType::WriteExclusiveRegistrantsOnly,
        ResType::ExclusiveAccessRegistrantsOnly,
        ResType::WriteExclusiveAllRegistrants,
        ResType::ExclusiveAccessAllRegistrants,
    ];
    /// SPC-4 TYPE code.
    pub fn scsi_code(self) -> u8 {
        match self {
            ResType::WriteExclusive => 1,
            ResType::ExclusiveAccess => 3,
            ResType::WriteExclusiveRegistrantsOnly => 5,
            ResType::ExclusiveAccessRegistrantsOnly => 6,
            ResType::WriteExclusiveAllRegistrants => 7,
            ResType::ExclusiveAccessAllRegistrants => 8,
        }
    }
    pub fn from_scsi(code: u8) -> Option<ResType> {
        ResType::ALL.into_iter().find(|t| t.scsi_code() == code)
    }
    /// NVMe RTYPE (NVMe Base 2.0 Figure "Reservation Type Encoding").
    pub fn nvme_code(self) -> u8 {
        match self {
            ResType::WriteExclusive => 1,
            ResType::ExclusiveAccess => 2,
            ResType::WriteExclusiveRegistrantsOnly => 3,
            ResType::ExclusiveAccessRegistrantsOnly => 4,
            ResType::WriteExclusiveAllRegistrants => 5,
            ResType::ExclusiveAccessAllRegistrants => 6,
        }
    }
    pub fn from_nvme(code: u8) -> Option<ResType> {
        ResType::ALL.into_iter().find(|t| t.nvme_code() == code)
    }
    /// Exclusive Access family: reads are restricted too.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            ResType::ExclusiveAccess | ResType::ExclusiveAccessRegistrantsOnly | ResType::ExclusiveAccessAllRegistrants
        )
    }
    /// Registrants Only or All Registrants: registered nexuses get the holder's access.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, ResType::WriteExclusive | ResType::ExclusiveAccess)
    }
    /// All Registrants: every registrant is a reservation holder (SPC-4 5.13.10).
    pub fn all_registrants(self) -> bool {
        matches!(self, ResType::WriteExclusiveAllRegistrants | ResType::ExclusiveAccessAllRegistrants)
    }
}

/// What a command does, for the conflict tables (SPC-4 5.13.1 Table 66, SBC-3 4.17 Table 13).
/// Front-ends map each opcode to one class; the volume decides with [`allowed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandClass {
    /// Allowed under every reservation: INQUIRY, REPORT LUNS, REQUEST SENSE, TEST UNIT READY,
    /// READ CAPACITY, LOG SENSE, PERSISTENT RESERVE IN, REPORT TARGET PORT GROUPS / ALIASES /
    /// IDENTIFYING INFORMATION / PRIORITY / TIMESTAMP, PREVENT ALLOW MEDIUM REMOVAL (PREVENT=0),
    /// ACCESS CONTROL IN/OUT; NVMe Identify, Get Log Page, Get Features, Reservation Report.
    Always,
    /// Medium reads: READ, VERIFY, PRE-FETCH, GET LBA STATUS; NVMe Read, Compare, Verify.
    Read,
    /// Reads of device state restricted like medium reads: MODE SENSE, READ BUFFER, READ
    /// ATTRIBUTE, RECEIVE DIAGNOSTIC RESULTS, SECURITY PROTOCOL IN, REPORT SUPPORTED OPERATION
    /// CODES / TASK MANAGEMENT FUNCTIONS, MANAGEMENT PROTOCOL IN.
    InfoRead,
    /// Medium writes: WRITE*, WRITE SAME, UNMAP, COMPARE AND WRITE, ORWRITE, XDWRITE, WRITE AND
    /// VERIFY, FORMAT UNIT, SYNCHRONIZE CACHE; NVMe Write, Write Zeroes, Dataset Management,
    /// Write Uncorrectable, Flush, Copy.
    Write,
    /// Changes of device state restricted like writes: MODE SELECT, LOG SELECT, WRITE BUFFER,
    /// WRITE ATTRIBUTE, SEND DIAGNOSTIC, SECURITY PROTOCOL OUT, SET TARGET PORT GROUPS, CHANGE
    /// ALIASES, SET IDENTIFYING INFORMATION, SET PRIORITY, SET TIMESTAMP, MANAGEMENT PROTOCOL
    /// OUT, EXTENDED COPY, PREVENT ALLOW MEDIUM REMOVAL (PREVENT≠0); NVMe Set Features (ns).
    StateChange,
    /// PERSISTENT RESERVE OUT and NVMe Reservation Register/Acquire/Release: never refused by
    /// the persistent reservation table (the engine applies each action's own rules), but refused
    /// by an SPC-2 reservation held by another nexus (SPC-4 5.13.3 / SPC-2 5.5.1).
    PrOut,
}

impl CommandClass {
    pub const ALL: [CommandClass; 6] = [
        CommandClass::Always,
        CommandClass::Read,
        CommandClass::InfoRead,
        CommandClass::Write,
        CommandClass::StateChange,
        CommandClass::PrOut,
    ];
}

/// Relation of a nexus to the current persistent reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Holder,
    Registered,
    Unregistered,
}

/// The SPC-4 conflict table (5.13.1 Table 66, SBC-3 Table 13): may a command of `class` from a
/// nexus in `rel` run under a persistent reservation of type `t`?
pub fn allowed(class: CommandClass, t: ResType, rel: Relation) -> bool {
    if rel == Relation::Holder {
        return true;
    }
    // Under WE/EA a registered non-holder has no more rights than anyone ("From any I_T nexus").
    let privileged = rel == Relation::Registered && t.registrants_have_access();
    match class {
        CommandClass::Always | CommandClass::PrOut => true,
        CommandClass::Read | CommandClass::InfoRead => privileged || !t.exclusive_access(),
        CommandClass::Write | CommandClass::StateChange => privileged,
    }
}

/// May a command of `class` run while another nexus holds an SPC-2 RESERVE(6)/(10)?
/// SPC-2 5.5.1: only commands that report state pass; RELEASE from a non-holder is a no-op
/// handled by the engine itself.
pub fn allowed_under_spc2(class: CommandClass) -> bool {
    class == CommandClass::Always
}

/// A reservation event for one nexus: a unit attention (SCSI) or a reservation notification log
/// entry (NVMe), both named after SPC-4 5.13 / NVMe 8.19.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PrEvent {
    /// SCSI 2A/05 REGISTRATIONS PREEMPTED; NVMe log type 1 Registration Preempted.
    RegistrationPreempted,
    /// SCSI 2A/04 RESERVATIONS RELEASED; NVMe log type 2 Reservation Released.
    ReservationReleased,
    /// SCSI 2A/03 RESERVATIONS PREEMPTED; NVMe log type 3 Reservation Preempted.
    ReservationPreempted,
}

impl PrEvent {
    /// SCSI additional sense code qualifier under ASC 2Ah.
    pub fn scsi_ascq(self) -> u8 {
        match self {
            PrEvent::RegistrationPreempted => 0x05,
            PrEvent::ReservationReleased => 0x04,
            PrEvent::ReservationPreempted => 0x03,
        }
    }
    /// NVMe Reservation Notification Log Page type (NVMe Base 2.0, Reservation Notification log page).
    pub fn nvme_log_type(self) -> u8 {
        match self {
            PrEvent::RegistrationPreempted => 1,
            PrEvent::ReservationReleased => 2,
            PrEvent::ReservationPreempted => 3,
        }
    }
    /// Bit of the NVMe Reservation Notification Mask feature (Feature 82h) that masks it.
    pub fn nvme_mask_bit(self) -> u32 {
        1 << self.nvme_log_type()
    }
}

/// Why a reservation action failed, in neutral terms; each front-end maps it to its status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrError {
    /// SCSI RESERVATION CONFLICT / NVMe Reservation Conflict.
    #[error("reservation conflict")]
    Conflict,
    /// The TYPE field is not a supported reservation type.
    #[error("invalid reservation type")]
    InvalidType,
    /// SCOPE other than LU_SCOPE.
    #[error("invalid scope")]
    InvalidScope,
    /// PREEMPT with a zero service action key where no all-registrants reservation exists, or
    /// REGISTER AND MOVE to key 0 (SPC-4 5.13.11.4.1, 5.13.8).
    #[error("service action reservation key must not be zero")]
    ZeroServiceActionKey,
    /// RELEASE with a type or scope other than the reservation's (SPC-4 5.13.11.2).
    #[error("release does not match the reservation's type")]
    InvalidRelease,
    /// REGISTER AND MOVE to the issuing nexus itself.
    #[error("register and move to the issuing I_T nexus")]
    MoveToSelf,
    /// REGISTER AND MOVE names a target port the engine does not know.
    #[error("unknown relative target port {0}")]
    UnknownTargetPort(u16),
    /// A destination TransportID that does not name an initiator port.
    #[error("invalid TransportID")]
    InvalidTransportId,
    /// SPEC_I_PT=1 (not supported: REPORT CAPABILITIES has SIP_C=0).
    #[error("SPEC_I_PT is not supported")]
    SpecIPtUnsupported,
    /// Too many registrants (SPC-4 INSUFFICIENT REGISTRATION RESOURCES).
    #[error("too many registrants")]
    Resources,
    /// The state could not be made persistent: the change was not applied.
    #[error("cannot persist reservation state: {0}")]
    Persist(String),
}
