"""Every ORM model, one module per table; importing this package registers them all."""

from app.models.agent import Agent
from app.models.batch import Batch, BatchRow, BatchStatus
from app.models.call import Call
from app.models.call_analysis import CallAnalysis
from app.models.hubspot_connection import HubSpotConnection
from app.models.idempotency_key import IdempotencyKey
from app.models.job import Job
from app.models.password_reset_token import PasswordResetToken
from app.models.phone_number import PhoneNumber
from app.models.project import Project
from app.models.refresh_token import RefreshToken
from app.models.user import User
from app.models.webhook_delivery import WebhookDelivery

__all__ = [
    "Agent",
    "Batch",
    "BatchRow",
    "BatchStatus",
    "Call",
    "CallAnalysis",
    "HubSpotConnection",
    "IdempotencyKey",
    "Job",
    "PasswordResetToken",
    "PhoneNumber",
    "Project",
    "RefreshToken",
    "User",
    "WebhookDelivery",
]
