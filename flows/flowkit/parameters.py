"""The settings of steps/settings.py as Metaflow Parameters (added by a FlowMutator), and a run's values of them.

    @settings("data", "model", "training", "gate", "registry")
    class ReviewFlow(FlowSpec): ...

Each setting becomes `--<name>` with its default and help (which states the allowed values). A setting with a
fixed set of values is a choice, rejected when the command line is parsed; a number outside its range is rejected
by `steps.settings.check` in the flow's start step, before any work. A boolean setting is a flag. Because they
are ordinary Parameters, they also work with `metaflow.Runner` and as Argo trigger parameters.
"""
from __future__ import annotations

from metaflow import FlowMutator, Parameter, current

from flowkit.metaflow_internals import choice_type
from steps import settings as catalog


def as_parameter(setting: catalog.Setting) -> Parameter:
    """The Metaflow Parameter of a setting: a flag for a boolean, a choice for a fixed set of values."""
    if setting.is_flag:
        return Parameter(setting.name, default=setting.default, type=bool, is_flag=True, help=setting.help)
    allowed = setting.allowed()
    help_text = setting.help + (f" Allowed: {allowed}." if allowed else "")
    kind = choice_type(setting.choices) if setting.choices else setting.type
    return Parameter(setting.name, default=setting.default, type=kind, help=help_text)


class settings(FlowMutator):
    """Add settings of steps/settings.py to the flow as Parameters: whole groups ("training") or single settings
    by option name ("min-f1"), less those named in `exclude`."""

    def init(self, *names: str, exclude: tuple = ()):
        self.names, self.exclude = names, tuple(exclude)

    def pre_mutate(self, mutable_flow):
        for setting in catalog.select(*self.names):
            if setting.name not in self.exclude:
                mutable_flow.add_parameter(setting.attr, as_parameter(setting))


def flow_parameters(flow) -> dict:
    """The run's Parameter values by option name ({"max-rows": 0, ...}): what is logged as MLflow params."""
    return {name.replace("_", "-"): getattr(flow, name) for name in current.parameter_names}


def setting_values(flow, *groups: str, exclude: tuple = (), python_names: bool = False) -> dict:
    """The run's values of the settings of `groups` (but not `exclude`), by option name (min-f1) or, with
    `python_names`, by Python name (min_f1: to pass them as keyword arguments). Where the start step resolved a
    setting (`--model auto`, `--epochs 0`: the flow's `resolved_settings`), the resolved value."""
    resolved = getattr(flow, "resolved_settings", None) or {}
    return {(s.attr if python_names else s.name): resolved.get(s.name, getattr(flow, s.attr))
            for s in catalog.in_groups(*groups) if s.name not in exclude}
