"""How a setting is declared, once: its variable, help, bounds and ucarp option ride on the
field of the frozen runtime dataclass that holds it (sidecar.config.runconfig), or, for what
the runtime only derives from (the password, CARP_ADDR...), on an input declared beside it.

From the declarations follow the pydantic models that validate every source
(sidecar.config.models), ``check-config --help`` (:func:`help_texts`), ucarp's command line
(sidecar.config.ucarp_options) and the agent's JSON hand-over. Pure: no pydantic here, so the
agent's process, which imports the dataclasses, stays without it.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MISSING: Any = dataclasses.MISSING


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a setting without a default (dataclasses' MISSING means "none")


@dataclass(frozen=True)
class Ucarp:
    """The ucarp 1.5.2 option that sets it: ``--long``/``-short``; ``flag``: it takes no value
    and sets this one (``true`` for booleans)."""

    long: str
    short: str
    help: str
    flag: str | None = None


@dataclass(frozen=True)
class Setting:
    env: str  # the variable without its prefix: CARP_<env>, also UCARP_<env>
    help: str  # one line, for `check-config --help` (docs/configuration.md has the long form)
    ge: float | None = None
    le: float | None = None
    ucarp: Ucarp | None = None
    secret: bool = False  # never shown, logged or exported (validated as SecretStr)
    # an input the runtime derives from (no field of the dataclass): its name, type, default
    name: str = ""
    type: Any = None
    default: Any = REQUIRED
    gt: float | None = None  # a bound that is not a value itself (a lag limit of 0 is none)

    @property
    def is_input(self) -> bool:
        """Declared beside the dataclass, not on one of its fields."""
        return self.name != ""


@dataclass(frozen=True)
class Declared:
    """A setting with its field: the name, type and default the models use."""

    name: str
    type: Any
    default: Any  # REQUIRED: no default
    setting: Setting

    @property
    def var(self) -> str:
        return f"CARP_{self.setting.env}"


def setting(default: Any = MISSING, *, env: str, help: str, ge: float | None = None,
            le: float | None = None, ucarp: Ucarp | None = None, factory: Any = MISSING,
            gt: float | None = None) -> Any:
    """A dataclass field that is also a setting."""
    meta = {"setting": Setting(env=env, help=help, ge=ge, le=le, ucarp=ucarp, gt=gt)}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache  # asked by the models, the help and ucarp's options: type hints cost
def declared(cls: type | None, inputs: tuple[Setting, ...] = ()) -> tuple[Declared, ...]:
    """The settings of dataclass ``cls`` (fields that carry one), then ``inputs``."""
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out = []
    for f in dataclasses.fields(cls) if cls is not None else ():
        s = f.metadata.get("setting")
        if s is None:
            continue  # derived by the configuration, not set by anyone
        factory: Any = f.default_factory
        default = factory() if factory is not MISSING else (
            REQUIRED if f.default is MISSING else f.default)
        out.append(Declared(f.name, hints[f.name], default, s))
    out += [Declared(s.name, s.type, s.default, s) for s in inputs]
    return tuple(out)


def help_texts(*groups: Iterable[Declared]) -> dict[str, str]:
    """``ENV`` -> its help line, for every declared setting."""
    return {d.setting.env: d.setting.help for group in groups for d in group}
