"""A pool class's options, read from where they are declared: its scheduler's keywords and the
map settings. One signature and one help text per pool class are built from them.

A scheduler declares each option once, as a keyword of its ``__init__`` annotated with its
help line: ``partition: Annotated[str | None, "the partition (sbatch --partition)"] = None``.
Every pool also takes the options of :class:`poolparty_raster.settings.MapSettings`.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, NamedTuple

from poolparty_raster.settings import MapSettings, option_fields


class Option(NamedTuple):
    """One keyword of a pool's constructor."""

    parameter: inspect.Parameter  # as the signature shows it: its type without the help
    help: str
    scheduler: bool               # the scheduler's own, else a map setting


def _scheduler_options(scheduler_class: type, fixed: Mapping[str, Any]) -> list[Option]:
    init = scheduler_class.__init__  # type: ignore[misc]
    hints = typing.get_type_hints(init, include_extras=True)
    options = []
    for parameter in list(inspect.signature(init).parameters.values())[1:]:
        if parameter.name in fixed:
            continue
        hint = hints.get(parameter.name)
        if typing.get_origin(hint) is not Annotated:
            raise TypeError(f"{scheduler_class.__name__}.__init__'s {parameter.name} has no help "
                            f"line: annotate it as Annotated[type, 'help']")
        kind, help_line = typing.get_args(hint)[:2]
        options.append(Option(parameter.replace(annotation=kind), help_line, True))
    return options


def _setting_options() -> list[Option]:
    hints = typing.get_type_hints(MapSettings)
    return [Option(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                     annotation=hints[f.name]), f.metadata["help"], False)
            for f in option_fields()]


def pool_options(scheduler_class: type, fixed: Mapping[str, Any],
                 positional: Sequence[str] = ()) -> dict[str, Option]:
    """Every option of a pool of this scheduler, by name: ``positional`` first, in that order
    and taken by position too (LocalPool's are multiprocessing.Pool's), then the scheduler's,
    then the map settings."""
    options = {o.parameter.name: o for o in _scheduler_options(scheduler_class, fixed)}
    for option in _setting_options():
        if option.parameter.name in options:
            raise TypeError(f"{scheduler_class.__name__} declares {option.parameter.name!r}, "
                            f"which is a map setting of every pool")
        options[option.parameter.name] = option
    first = {name: options.pop(name) for name in positional}
    for name, option in first.items():
        first[name] = option._replace(parameter=option.parameter.replace(
            kind=inspect.Parameter.POSITIONAL_OR_KEYWORD))
    return {**first, **options}


def signature(options: Mapping[str, Option]) -> inspect.Signature:
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Signature([self, *(o.parameter for o in options.values())],
                             return_annotation=None)


def help_text(class_name: str, options: Mapping[str, Option]) -> str:
    """The constructor's docstring: one line per option, with its type and default."""
    def line(option: Option) -> str:
        p = option.parameter
        kind = inspect.formatannotation(p.annotation).replace("collections.abc.", "")
        default = "required" if p.default is p.empty else f"default {p.default!r}"
        return f"  {p.name} ({kind}, {default}): {option.help}"
    own = [line(o) for o in options.values() if o.scheduler]
    common = [line(o) for o in options.values() if not o.scheduler]
    parts = [f"Make a {class_name}."]
    if own:
        parts += ["", f"Options of {class_name}:", *own]
    return "\n".join([*parts, "", "Options of every pool:", *common])


def check_names(class_name: str, given: Mapping[str, Any], valid: Mapping[str, Any]) -> None:
    """A misspelt option is an error that suggests the right one."""
    unknown = [k for k in given if k not in valid]
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, valid, 1))
                 else repr(k) for k in unknown]
        raise TypeError(f"{class_name} got unknown option(s) {', '.join(hints)}; "
                        f"valid options: {', '.join(sorted(valid))}")
