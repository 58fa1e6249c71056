//! Faults with clear outcomes: each fault an operator can meet (a full disk,
//! a hung or vanished TPM, a damaged `data.mdb`, a restored or reset TPM
//! state) is produced for real and the test asserts exactly what the
//! operator sees (wire error code and message, status fields, log lines,
//! exit code) and that no acknowledged event is lost. docs/OPERATIONS.md,
//! section 6a, says the same for the operator.

mod corrupt;
mod disk;
mod operator;
mod tpm;
