"""RIOS's site configuration: the environment variables through which a site sets RIOS's
defaults, read (as RIOS 2 reads them) with RIOS's names and formats, so that a RIOS script
run at a site that sets them writes the same outputs here.

- ``RIOS_DFLT_DRIVER``: the output driver of every output. Unset, RIOS writes HFA
  whatever the name; here an output named ``*.img`` is HFA (what users' tools expect of
  that name, and what RIOS writes), any other GTiff (see ``driver_for_filename``).
- ``RIOS_DFLT_CREOPT_<driver>``: that driver's creation options, space-separated
  ``KEY=VALUE``; ``RIOS_DFLT_DRIVEROPTIONS`` (RIOS's older variable) gives those of
  RIOS_DFLT_DRIVER (HFA when unset, as in RIOS), ``None`` meaning none.
- ``RIOS_DFLT_OVERVIEWLEVELS``: comma-separated decimation factors (4,8,...,512).
- ``RIOS_DFLT_MINOVERLEVELDIM``: the smallest overview side in pixels (128).
- ``RIOS_DFLT_OVERVIEWAGGTYPE``: the overview resampling where RIOS 2 builds overviews with
  GDAL after the last block (NEAREST); RIOS's constant for it is spelled
  DEFAULT_OVERVIEWAGGREGRATIONTYPE.
- ``RIOS_DFLT_AUTOCOLORTABLETYPE``: the colour table of thematic outputs (rainbow, gray,
  random; unset: none).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DRIVER = "GTiff"
# RIOS's own default driver, which its .img outputs are written with.
RIOS_DEFAULT_DRIVER = "HFA"
_DRIVER_OF_EXTENSION = {".img": RIOS_DEFAULT_DRIVER}
DEFAULT_OVERVIEWLEVELS = (4, 8, 16, 32, 64, 128, 256, 512)
# RIOS 2's minimum: an overview whose smaller side is below 128 pixels costs a file
# section and is never worth reading (RIOS 1 used 33).
DEFAULT_MINOVERVIEWDIM = 128
DEFAULT_OVERVIEWAGGTYPE = "NEAREST"
_CREOPT_PREFIX = "RIOS_DFLT_CREOPT_"


@dataclass(frozen=True)
class SiteDefaults:
    """The defaults an ApplierControls starts from. ``driver_name`` is None where the site
    sets none (each output's name then decides); ``creation_options`` maps a driver name to
    the options the site gives for it (absent: this package's own defaults)."""

    driver_name: str | None
    creation_options: dict[str, dict[str, str]]
    overview_levels: tuple[int, ...]
    overview_min_dim: int
    overview_agg_type: str
    auto_color_table_type: str | None = None


def site_defaults(environ: Mapping[str, str] = os.environ) -> SiteDefaults:
    """RIOS's defaults as the environment sets them now."""
    driver_name = environ.get("RIOS_DFLT_DRIVER") or None
    creation_options = {}
    generic = environ.get("RIOS_DFLT_DRIVEROPTIONS")
    if generic is not None:
        creation_options[driver_name or RIOS_DEFAULT_DRIVER] = option_dict(generic.split())
    for name, value in environ.items():
        if name.startswith(_CREOPT_PREFIX):  # these supersede the generic variable
            creation_options[name[len(_CREOPT_PREFIX):]] = option_dict(value.split())
    levels = environ.get("RIOS_DFLT_OVERVIEWLEVELS")
    return SiteDefaults(
        driver_name, creation_options,
        DEFAULT_OVERVIEWLEVELS if levels is None else _levels(levels),
        int(environ.get("RIOS_DFLT_MINOVERLEVELDIM", DEFAULT_MINOVERVIEWDIM)),
        environ.get("RIOS_DFLT_OVERVIEWAGGTYPE") or DEFAULT_OVERVIEWAGGTYPE,
        environ.get("RIOS_DFLT_AUTOCOLORTABLETYPE") or None)


def driver_for_filename(filename: str) -> str:
    """The driver of an output for which neither the script nor the site names one: HFA
    for ``.img`` (any case), else GTiff."""
    return _DRIVER_OF_EXTENSION.get(os.path.splitext(filename)[1].lower(), DEFAULT_DRIVER)


def option_dict(options: list[str] | tuple[str, ...]) -> dict[str, str]:
    """GDAL creation options as RIOS takes them ("KEY=VALUE" strings; a lone "None" is
    none at all) to a dict with upper-case keys."""
    if list(options) == ["None"]:
        return {}
    pairs = []
    for option in options:
        if "=" not in option:
            raise ValueError(f"creation option {option!r} is not of the form KEY=VALUE")
        pairs.append(option.split("=", 1))
    return {key.upper(): value for key, value in pairs}


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(level) for level in text.split(","))
    except ValueError:
        raise ValueError(f"RIOS_DFLT_OVERVIEWLEVELS={text!r}: expected comma-separated "
                         "integers, e.g. 4,8,16") from None
