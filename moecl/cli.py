"""``moecl key=value ...``: the Hydra command line around ``moecl.run.run``."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from moecl.errors import ConfigError, MoeclError

GROUPS = ("backbone", "scenario", "method", "trainer", "experiment")


def _is_debug(argv: list[str]) -> bool:
    return any(a.lower() in ("debug=true", "debug=1", "+debug=true") for a in argv)


def _fail(err: MoeclError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)


def check_overrides(argv: list[str]) -> None:
    """Compose once before Hydra does, so a bad group option is one line, not Hydra's report."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from moecl.run import compose_config

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        compose_config(overrides)
    except MissingConfigException as err:
        group = next((g for g in GROUPS if f"'{g}/" in str(err)), None)
        value = next((a.split("=", 1)[1] for a in overrides if group and a.lstrip("+~").split("=", 1)[0] == group), None)
        options = ", ".join(err.options or []) if getattr(err, "options", None) else "see moecl --help"
        what = f"{group}={value!r} is not a known {group}" if group else str(err).splitlines()[0]
        raise ConfigError(f"{what}; available: {options}") from err
    except (ConfigCompositionException, OverrideParseException) as err:
        raise ConfigError(" ".join(str(err).split())) from err


@hydra.main(config_path="pkg://moecl.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from moecl.run import run

    try:
        run(cfg)
    except MoeclError as err:
        if cfg.get("debug"):
            raise
        _fail(err)


def main() -> None:
    """Console entry point."""
    argv = sys.argv[1:]
    plain = not any(a in ("-m", "--multirun", "-h", "--help", "--hydra-help", "--info") for a in argv)
    if plain and not _is_debug(argv):
        try:
            check_overrides(argv)
        except MoeclError as err:
            _fail(err)
    _hydra_main()


if __name__ == "__main__":
    main()
