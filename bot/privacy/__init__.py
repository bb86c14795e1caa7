"""Governance of stored data: erasure and retention, encryption at rest, the audit trail,
and the atomic file replace that erasure and exports share."""
