"""Shared base for every typed config: unknown fields are errors, every field is documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that forbids unknown fields and validates assignments."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
