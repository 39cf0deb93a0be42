"""Tamper evidence for the audit trail (docs/INTEGRITY.md): the canonical encoding of a row, Merkle
trees, signing keys, seals written in the storing transaction, checkpoints kept outside the
database, verification, proofs and verified exports."""
