"""One module of RIOS's riostests: ``python rios_module.py pp|rios MODULE STYLE`` (run in a
scratch directory by ci/peers/rios.sh). ``pp``: ``rios.applier`` is this package's applier,
every other RIOS module is RIOS's own. STYLE ``-``: the module as written; ``CW_THREADS`` or
``CW_SUBPROC``: every apply that asked for no concurrency runs on 2 workers of that style."""
import importlib
import sys
import traceback

import rios


def applier_module(which: str):
    if which == "pp":
        import poolparty_raster.applier as applier
        sys.modules["rios.applier"] = applier  # before any test module imports it
        rios.applier = applier
        return applier
    return importlib.import_module("rios.applier")


def force_style(applier, style: str, which: str) -> None:
    as_written = applier.apply

    def apply(userFunction, infiles, outfiles, otherArgs=None, controls=None, **kwargs):
        controls = controls if controls is not None else applier.ApplierControls()
        asked = getattr(controls, "concurrency", None)
        if asked is None or asked.computeWorkerKind == "CW_NONE":
            # RIOS needs a read worker once compute workers run (its own thread and subprocess
            # tests give one); this package's applier reads in its workers.
            readers = {"numReadWorkers": 1} if which == "rios" else {}
            controls.setConcurrencyStyle(applier.ConcurrencyStyle(
                numComputeWorkers=2, computeWorkerKind=style, **readers))
        return as_written(userFunction, infiles, outfiles, otherArgs, controls, **kwargs)

    applier.apply = apply


def main() -> int:
    which, name, style = sys.argv[1:4]
    applier = applier_module(which)
    if style != "-":
        force_style(applier, style, which)
    try:
        passed = importlib.import_module(f"rios.riostests.{name}").run()
    except BaseException:
        traceback.print_exc()
        passed = False
    print(f"RESULT {which} {name} {style} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
