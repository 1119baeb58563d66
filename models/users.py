"""Operators, their roles and API tokens."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import Role


class User(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100, unique=True)
    role = fields.CharEnumField(Role, max_length=16)
    password_hash = fields.CharField(max_length=300)  # scrypt, see models.auth
    created_at = fields.DatetimeField(auto_now_add=True)

    tokens: fields.ReverseRelation[ApiToken]

    class Meta:
        table = "user"


class ApiToken(Model):
    id = fields.IntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="tokens", on_delete=fields.CASCADE
    )
    token_hash = fields.CharField(max_length=64, unique=True)  # sha256 hex of the token
    prefix = fields.CharField(max_length=16)  # first characters, to tell tokens apart
    name = fields.CharField(max_length=100, default="default")
    created_at = fields.DatetimeField(auto_now_add=True)
    last_used_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_token"
