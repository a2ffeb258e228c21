"""Site profiles: named pools in a TOML file, so that one script runs unchanged on a laptop, a
SLURM cluster and a PBS site (docs/profiles.md).

The file is ``$POOLPARTY_RASTER_CONFIG``, else ``~/.config/poolparty_raster/config.toml``::

    [profiles.gadi]
    backend = "pbs"                      # a registry name, or a pool class name
    queue = "normal"                     # any option of that pool class
    walltime = "1:00:00"
    work_dir_root = "/scratch/ab12/$USER/pp"

A profile's keys are ``backend`` and the options of the backend's pool class (``work_dir_root``,
with ``~`` and ``$VARIABLES`` expanded, among them),
read from its signature (which pools/options.py builds from the scheduler's keywords and
settings.MapSettings): nothing here lists them again. Only the profile asked for is checked
and its backend imported, so a profile for a backend whose extras are missing on this machine
(ECS without boto3) does not break the others.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poolparty_raster.errors import PoolPartyError
from poolparty_raster.pools.options import check_names
from poolparty_raster.registry import BACKENDS

if TYPE_CHECKING:
    from poolparty_raster.pools.base import Pool

CONFIG_VARIABLE = "POOLPARTY_RASTER_CONFIG"
PROFILE_VARIABLE = "POOLPARTY_RASTER_PROFILE"
DEFAULT_CONFIG = Path("~/.config/poolparty_raster/config.toml")
# A profile's own keys; every other key is an option of its backend's pool class.
BACKEND_KEY = "backend"
WORK_DIR_ROOT_KEY = "work_dir_root"

# What `backend` may say: a registry name names the backend's usual pool, a class name that
# very class (SlurmPool: one job per chunk).
_POOL_OF_NAME = {
    **{backend.name: (backend, backend.pool_class) for backend in BACKENDS},
    **{name: (backend, name) for backend in BACKENDS for name in backend.pool_classes},
}


class ProfileError(PoolPartyError, ValueError):
    """A profile cannot be read or used: the message names the file, the line where one is
    known, and the valid choices."""


def config_path() -> Path:
    """The profiles file: ``$POOLPARTY_RASTER_CONFIG``, else
    ``~/.config/poolparty_raster/config.toml``."""
    return Path(os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG).expanduser()


@dataclasses.dataclass(frozen=True)
class Profile:
    """One checked profile: the pool class it makes and that class's options."""

    name: str
    path: Path
    pool_class: type[Pool]
    options: dict[str, Any]

    def make_pool(self, **overrides: Any) -> Pool:
        """A new pool of this profile; ``overrides`` (options of the same pool class) win over
        the profile's values."""
        return build_pool(self.pool_class, {**self.options, **overrides},
                          f"{self.path}: profile {self.name!r} ({self.pool_class.__name__})")


def build_pool(pool_class: type[Pool], options: dict[str, Any], where: str) -> Pool:
    """``pool_class(**options)``. A misspelt option is the pool's own TypeError (with its
    suggestion); a value the pool refuses is a ProfileError that says ``where`` it came from."""
    check_names(pool_class.__name__, options, inspect.signature(pool_class).parameters)
    try:
        pool = pool_class(**options)
    except (TypeError, ValueError) as exc:  # mode="nope", max_num_resubmissions=-1
        raise ProfileError(f"{where}: {exc}") from exc
    return pool


def profile_names(path: Path | None = None) -> list[str]:
    """The names of the profiles in the file (``config_path()`` by default; none when there
    is no file), each unchecked."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return sorted(_read_profiles(path, text))


def load_profile(name: str | None = None, path: Path | None = None) -> Profile:
    """The profile ``name`` (default: ``$POOLPARTY_RASTER_PROFILE``) of the file, checked:
    its backend is known and each key is an option of that backend's pool class."""
    path = path or config_path()
    name = name or os.environ.get(PROFILE_VARIABLE)
    if not name:
        raise ProfileError(f"no profile named: pass its name or set {PROFILE_VARIABLE} "
                           f"(profiles are read from {path})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file, so no profile {name!r}: write it (see "
                           f"docs/profiles.md) or point {CONFIG_VARIABLE} at one") from None
    profiles = _read_profiles(path, text)
    if name not in profiles:
        raise ProfileError(f"{path}: no profile {name!r}{_suggestion(name, profiles)}; "
                           f"profiles: {', '.join(sorted(profiles)) or 'none'}")
    return _checked(name, profiles[name], path, text)


def pool_from_profile(name: str | None = None, **overrides: Any) -> Pool:
    """A new pool as the profile ``name`` of the profiles file describes it (default: the
    profile ``$POOLPARTY_RASTER_PROFILE`` names); ``overrides`` (options of its pool class) win
    over the profile's values."""
    return load_profile(name).make_pool(**overrides)


def _read_profiles(path: Path, text: str) -> dict[str, Any]:
    """The file's ``[profiles.*]`` tables, the file's structure checked."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    for key in document:
        if key != "profiles":
            raise ProfileError(f"{path}{_at_top_level(text, key)}: unknown top-level key {key!r}"
                               f"{_suggestion(key, ['profiles'])}; profiles are tables "
                               f"[profiles.<name>]")
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ProfileError(f"{path}{_at_top_level(text, 'profiles')}: 'profiles' must be tables "
                           f"[profiles.<name>], not a {type(profiles).__name__}")
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ProfileError(f"{path}{_at_top_level(text, name)}: profile {name!r} must be a "
                               f"table [profiles.{name}], not a {type(table).__name__}")
    return profiles


def _checked(name: str, table: Mapping[str, Any], path: Path, text: str) -> Profile:
    backend_name = table.get(BACKEND_KEY)
    if backend_name is None:
        raise ProfileError(f"{path}{_at(text, name, None)}: profile {name!r} has no "
                           f"'{BACKEND_KEY}'; one of: {_backend_choices()}")
    if not isinstance(backend_name, str) or backend_name not in _POOL_OF_NAME:
        hint = _suggestion(str(backend_name), _POOL_OF_NAME)
        raise ProfileError(f"{path}{_at(text, name, BACKEND_KEY)}: profile {name!r}: unknown "
                           f"backend {backend_name!r}{hint}; one of: {_backend_choices()}")
    backend, class_name = _POOL_OF_NAME[backend_name]
    pool_class = getattr(importlib.import_module(backend.pool_module), class_name)
    valid = list(inspect.signature(pool_class).parameters)
    options = {k: v for k, v in table.items() if k != BACKEND_KEY}
    for key in options:
        if key not in valid:
            raise ProfileError(f"{path}{_at(text, name, key)}: profile {name!r}: {class_name} "
                               f"has no option {key!r}{_suggestion(key, valid)}; its options: "
                               f"{', '.join(sorted(valid))}")
    work_dir_root = options.get(WORK_DIR_ROOT_KEY)
    if work_dir_root is not None:
        if not isinstance(work_dir_root, str):
            raise ProfileError(f"{path}{_at(text, name, WORK_DIR_ROOT_KEY)}: profile {name!r}: "
                               f"'{WORK_DIR_ROOT_KEY}' must be a string (a directory)")
        # One file serves several accounts and machines: "~/pp", "/scratch/$PROJECT/$USER/pp".
        options[WORK_DIR_ROOT_KEY] = os.path.expanduser(os.path.expandvars(work_dir_root))
    return Profile(name, path, pool_class, options)


def _backend_choices() -> str:
    return ", ".join(_POOL_OF_NAME)


def _suggestion(given: str, choices: Any) -> str:
    match = difflib.get_close_matches(given, list(choices), 1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _at_top_level(text: str, key: str) -> str:
    """", line N" where the top-level key or table ``key`` (or a profile written as a key of
    [profiles]) is first set, else ""."""
    pattern = rf"^\s*(?:\[+\s*{_key(key)}\s*[.\]]|{_key(key)}\s*[.=])"
    return _first_line(text.splitlines(), 0, pattern)


def _at(text: str, profile: str, key: str | None) -> str:
    """", line N" where ``key`` of the profile ``profile`` is set (its table's header when key
    is None), else "". tomllib keeps no positions, so the text is searched: in a
    [profiles.<profile>] table, the first line after its header that assigns the key;
    otherwise (an inline table or dotted keys, each on one line in TOML) the first line that
    names the profile and then assigns the key."""
    lines = text.splitlines()
    header = rf"^\s*\[\s*profiles\s*\.\s*{_key(profile)}\s*\]"
    start = next((i for i, line in enumerate(lines) if re.match(header, line)), None)
    if key is None:
        return "" if start is None else f", line {start + 1}"
    if start is not None:
        return _first_line(lines, start, rf"(?:^|[\s.{{,]){_key(key)}\s*=")
    return _first_line(lines, 0, rf"{_key(profile)}.*(?:[\s.{{,]){_key(key)}\s*=")


def _key(name: str) -> str:
    """A TOML key as a regular expression: bare, or in either kind of quotes."""
    quoted = re.escape(name)
    return rf"(?:{quoted}|\"{quoted}\"|'{quoted}')"


def _first_line(lines: list[str], start: int, pattern: str) -> str:
    for number in range(start, len(lines)):
        if re.search(pattern, lines[number]):
            return f", line {number + 1}"
    return ""
