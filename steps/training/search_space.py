"""TuneFlow's search space: the default of steps/settings.py (SEARCH_SPACE), changed by a space file, checked before
any trial runs, and turned into an Optuna trial's settings.

A space file (YAML or JSON) maps option names to what the search does with them:

    learning-rate: {low: 2.0e-5, high: 1.0e-4, log: true}   # a range (log scale: sampled evenly in log)
    epochs: {low: 1, high: 3}                               # an int setting: whole numbers
    batch-size: [16, 32]                                    # a list: one of these values
    freeze-encoder: false                                   # one value: fixed, not searched
    max-grad-norm: {low: 0.5, high: 2.0}                    # any setting of SEARCHABLE may be added
    class-weights: null                                     # null: left out of the search (its option's value)

Settings the file does not name keep their default range. Every problem (an unknown name, an empty range, a value
the setting does not allow, a log range starting at 0) is reported at once, naming the file and the setting.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path

from steps import settings
from steps.runtime.errors import ReviewflowError

RANGE_KEYS = ("low", "high", "log")


def _number(setting, value, where: str, problems: list):
    """`value` as the setting's type (YAML 1.1 reads 1e-5 as a string, so strings are converted too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problems.append(f"{where}: {value!r} is not a number")
        return None
    try:
        number = float(value)
    except ValueError:
        problems.append(f"{where}: {value!r} is not a number")
        return None
    if setting.type is int:
        if not number.is_integer():
            problems.append(f"{where}: --{setting.name} takes whole numbers, got {value!r}")
            return None
        return int(number)
    return number


def _value(setting, value, where: str, problems: list):
    """One value of the setting (a choice, or a fixed value), checked against what the setting allows."""
    if setting.is_flag:
        if not isinstance(value, bool):
            problems.append(f"{where}: --{setting.name} is true or false, got {value!r}")
            return None
        return value
    if setting.type is str:
        value = str(value)
    else:
        value = _number(setting, value, where, problems)
        if value is None:
            return None
    problem = setting.problem(value)
    if problem:
        problems.append(f"{where}: {problem}")
        return None
    return value


def _dimension(setting, spec, default, where: str, problems: list):
    """(Dimension, None) for a range or choices, (None, value) for a fixed value, (None, None) when refused."""
    if isinstance(spec, (list, tuple)):
        choices = tuple(_value(setting, v, where, problems) for v in spec)
        if not choices:
            problems.append(f"{where}: an empty list of choices; give at least one value")
        if None in choices or not choices:
            return None, None
        if len(set(choices)) != len(choices):
            problems.append(f"{where}: the choices {list(spec)} repeat a value")
            return None, None
        return settings.Dimension(setting.name, choices=choices), None
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(RANGE_KEYS))
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; a range has low, high and "
                            "log (or give a list of choices)")
            return None, None
        if setting.type not in (int, float):
            problems.append(f"{where}: --{setting.name} is not a number; give a list of choices, not a range")
            return None, None
        base = default if default is not None and not default.choices else settings.Dimension(setting.name)
        low = _value(setting, spec["low"], where, problems) if "low" in spec else base.low
        high = _value(setting, spec["high"], where, problems) if "high" in spec else base.high
        log = spec.get("log", base.log)
        if not isinstance(log, bool):
            problems.append(f"{where}: log is true or false, got {log!r}")
            return None, None
        if low is None or high is None:
            if ("low" in spec or base.low is not None) and ("high" in spec or base.high is not None):
                return None, None  # a bound was refused above
            problems.append(f"{where}: a range needs low and high")
            return None, None
        if low > high:
            problems.append(f"{where}: an empty range, low {low:g} is above high {high:g}")
            return None, None
        if log and low <= 0:
            problems.append(f"{where}: a log-scale range must start above 0, got low {low:g}")
            return None, None
        if low == high:
            return None, low
        return settings.Dimension(setting.name, low, high, log=log), None
    return None, _value(setting, spec, where, problems)


def parse_space_text(text: str, source: str) -> dict:
    """The space file's mapping (YAML, of which JSON is a subset)."""
    import yaml

    try:
        loaded = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ReviewflowError(f"--space {source}: not valid YAML or JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ReviewflowError(f"--space {source}: must map setting names to ranges, lists or values, got "
                              f"{type(loaded).__name__}")
    return loaded


def resolve_space(changes: dict | None = None, source: str = "", fixed: dict | None = None) -> tuple:
    """(the searched Dimensions, the fixed values by option name) from the default space, `changes` (a space file's
    mapping) and `fixed` (values that take a setting out of the search, e.g. an option given on the command line).
    Raises one ReviewflowError listing every problem."""
    default = {d.name: d for d in settings.SEARCH_SPACE}
    space, held, problems = dict(default), {}, []
    for name, spec in (changes or {}).items():
        where = f"--space {source}, {name}" if source else str(name)
        if name not in settings.SEARCHABLE:
            close = difflib.get_close_matches(str(name), settings.SEARCHABLE, n=1)
            reason = (f"{name!r} is a setting the search does not range over" if name in settings.BY_NAME
                      else f"unknown setting {name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
            problems.append(f"--space {source}: {reason}; searchable: {', '.join(settings.SEARCHABLE)}")
            continue
        space.pop(name, None)
        if spec is None:
            continue
        dimension, value = _dimension(settings.BY_NAME[name], spec, default.get(name), where, problems)
        if dimension is not None:
            space[name] = dimension
        elif value is not None:
            held[name] = value
    for name, value in (fixed or {}).items():
        if name in (changes or {}) and (changes or {})[name] is not None:
            problems.append(f"--{name} {value} fixes {name}, and --space {source} also says what to do with it: "
                            "drop one of them")
        elif space.pop(name, None) is not None:
            held[name] = value
    if problems:
        raise ReviewflowError("the search space is not usable: " + "; ".join(problems))
    if not space:
        raise ReviewflowError(f"--space {source or '(default)'}: every setting is fixed, so there is nothing to "
                              "search; give at least one range or list")
    order = {name: i for i, name in enumerate(settings.SEARCHABLE)}
    return tuple(sorted(space.values(), key=lambda d: order[d.name])), held


def load_space(path: str, fixed: dict | None = None) -> tuple:
    """resolve_space for a space file (local path or s3://), or the default space for ''."""
    if not path:
        return resolve_space(fixed=fixed)
    from steps.runtime import storage

    try:
        if storage.is_s3(path):
            with storage.guarded(path):
                text = storage.open_stream(path).read().decode("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReviewflowError(f"--space {path}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise ReviewflowError(f"--space {path}: not a UTF-8 text file ({err})") from None
    return resolve_space(parse_space_text(text, path), path, fixed)


def distribution(d):
    """The Optuna distribution `suggest` samples `d` from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if d.choices:
        return CategoricalDistribution(list(d.choices))
    if settings.BY_NAME[d.name].type is int:
        return IntDistribution(int(d.low), int(d.high), log=d.log)
    return FloatDistribution(d.low, d.high, log=d.log)


def suggest(trial, space) -> dict:
    """The trial's value of every searched setting, by option name (Optuna records them under the same names)."""
    values = {}
    for d in space:
        if d.choices:
            values[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        elif settings.BY_NAME[d.name].type is int:
            values[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            values[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
    return values


def as_json(space, held: dict) -> str:
    """The space as it was searched, for MLflow and the card."""
    return json.dumps({"searched": [d.describe() for d in space], "fixed": held}, indent=2, default=str)
