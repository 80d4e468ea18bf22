"""Shared base for every typed config: unknown fields are errors, every field is documented; and
``registered_name``, the type of a field whose value must be a name in one of the code's registries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from prism_lab.registry import known_names

#: The largest seed: every seed fits a signed 64-bit integer (SQLite, numpy, torch all take it).
SEED_MAX = 2**63 - 1

#: A seed field: an integer in [0, 2**63 - 1].
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class StrictModel(BaseModel):
    """A pydantic model that forbids unknown fields, validates assignments and refuses inf and NaN
    (an infinite learning rate or epoch count is never meant)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class KeyStable(BaseModel):
    """A config whose fields added after runs were recorded (``added_fields``) are left out of its dump while they
    hold their defaults: a run's key hashes the dumped config, so adding a field keeps every earlier key (as
    ``resources`` at its defaults does, harness/plan.py). Validation fills them back in; a value a grid sets is
    dumped, and keyed, as usual."""

    added_fields: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_added_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.added_fields:
                if name in data and getattr(self, name) == type(self).model_fields[name].get_default(
                        call_default_factory=True):
                    data.pop(name)
        return data


@dataclass(frozen=True)
class RegistryRef:
    """A registry named by module and attribute, so a config can check names without importing it."""

    module: str
    registry: str
    what: str
    registrars: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return known_names(self.module, self.registry, self.registrars)

    def __call__(self, value: str) -> str:
        names = self.names()
        if value not in names:
            raise ValueError(f"unknown {self.what} {value!r}; known: {', '.join(names)}")
        return value


def registered_name(module: str, registry: str, what: str, registrars: tuple[str, ...] = ()) -> Any:
    """A ``str`` field type accepting exactly the names registered in ``module.registry`` (read from the
    module's source: see :func:`prism_lab.registry.declared_names`); a new registered function is valid
    in every config at once."""
    return Annotated[str, AfterValidator(RegistryRef(module, registry, what, registrars))]
