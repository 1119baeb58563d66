"""Writing the append-only audit log."""

from __future__ import annotations

from typing import Any

from models.audit import AuditLog


async def record(actor: str, action: str, target_type: str, target_id: object,
                 **details: Any) -> AuditLog:
    return await AuditLog.create(actor=actor, action=action, target_type=target_type,
                                 target_id=str(target_id), details=details)
