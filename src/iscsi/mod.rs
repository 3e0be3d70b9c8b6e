//! iSCSI transport (RFC 7143): PDU codec, login, sessions, connections, R2T/Data-Out, digests.
