"""The option tables of docs/flows.md (where the README sends a newcomer for options) are the flows' real options:
for each flow, the options in the tables of its section are exactly those `run --help` shows (Metaflow's own run
options aside), and ReviewFlow's defaults are the ones declared in steps/settings.py. A row may name several
options that share a meaning (CompareFlow's "as in ReviewFlow" rows): `--data`, `--max-rows`, ..."""
import os
import re
import subprocess
import sys

import pytest

from tests.flow_runs import ROOT

FLOWS = {"ReviewFlow": "review_flow.py", "PromoteFlow": "promote_flow.py", "PredictFlow": "predict_flow.py",
         "MonitorFlow": "monitor_flow.py", "CompareFlow": "compare_flow.py", "TuneFlow": "tune_flow.py"}
HELP_OPTION = re.compile(r"^  (--[a-z0-9][a-z0-9-]*)")  # an option's own line in click's help, not a wrapped line
TABLE_OPTION = re.compile(r"^\|\s*`(--[a-z0-9][a-z0-9-]*)`(?:,\s*`--[a-z0-9][a-z0-9-]*`)*\s*\|")  # option(s) first
CELL_OPTION = re.compile(r"`(--[a-z0-9][a-z0-9-]*)`")
HEADING = re.compile(r"^(#+)\s+(.*)$")
OPTION_TABLES = ROOT / "docs" / "flows.md"  # every flow's options, one section per flow

# A flow with no Parameters: what its `run --help` lists is what Metaflow adds to every flow.
BARE_FLOW = '''from metaflow import FlowSpec, step


class BareFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BareFlow()
'''


def run_help(flow_file, cwd) -> str:
    env = {**os.environ, "USERNAME": "reviewflow-tests", "METAFLOW_USER": "reviewflow-tests",
           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(cwd)}
    proc = subprocess.run([sys.executable, str(flow_file), "run", "--help"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{flow_file} run --help failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def help_options(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if (m := HELP_OPTION.match(line))}


@pytest.fixture(scope="module")
def declared_options(tmp_path_factory) -> dict[str, set[str]]:
    """Each flow's own run options: what its --help lists, less what a flow without Parameters lists."""
    workdir = tmp_path_factory.mktemp("help")
    bare = workdir / "bare_flow.py"
    bare.write_text(BARE_FLOW)
    metaflow_own = help_options(run_help(bare, workdir))
    assert {"--tag", "--max-workers", "--with", "--help"} <= metaflow_own, metaflow_own
    return {flow: help_options(run_help(ROOT / "flows" / file, workdir)) - metaflow_own
            for flow, file in FLOWS.items()}


def readme_section(flow: str) -> list[str]:
    """The lines of docs/flows.md under the heading that starts with the flow's name, up to the next heading of its
    level or above (subheadings stay in the section)."""
    lines = OPTION_TABLES.read_text().splitlines()
    start = level = None
    for i, line in enumerate(lines):
        heading = HEADING.match(line)
        if not heading:
            continue
        if start is None and re.match(rf"{flow}\b", heading.group(2)):
            start, level = i + 1, len(heading.group(1))
        elif start is not None and len(heading.group(1)) <= level:
            return lines[start:i]
    assert start is not None, f"docs/flows.md has no heading that starts with {flow}"
    return lines[start:]


def table_rows(flow: str) -> dict[str, list[str]]:
    """{option: its row's cells} for every table row in the flow's section whose first cell is an option."""
    rows = {}
    for line in readme_section(flow):
        if TABLE_OPTION.match(line):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for option in CELL_OPTION.findall(cells[0]):
                assert option not in rows, f"docs/flows.md lists {option} twice under {flow}"
                rows[option] = cells
    return rows


@pytest.mark.parametrize("flow", FLOWS)
def test_readme_tables_list_exactly_the_options_of_each_flow(flow, declared_options):
    documented, actual = set(table_rows(flow)), declared_options[flow]
    missing, extra = sorted(actual - documented), sorted(documented - actual)
    assert not missing and not extra, (
        f"docs/flows.md's tables under {flow} do not match `python flows/{FLOWS[flow]} run --help`: "
        f"missing from the tables {missing}; in the tables but not an option {extra}")


def readme_default(cell: str) -> str:
    """The default as the tables write it: the first `code` span of the cell; `off` for a flag, `""` for empty."""
    code = re.search(r"`([^`]*)`", cell)
    value = code.group(1) if code else cell.strip()
    return {"off": "False", "on": "True", '""': ""}.get(value, value)


def same_value(written: str, declared) -> bool:
    if isinstance(declared, bool):
        return written == str(declared)
    if isinstance(declared, (int, float)):
        try:
            return float(written) == float(declared)  # 5e-5 and 5e-05 alike
        except ValueError:
            return False
    return written == str(declared)


def test_readme_review_flow_defaults_are_the_declared_ones():
    from steps.settings import SETTINGS

    rows = table_rows("ReviewFlow")
    wrong = []
    for setting in SETTINGS:
        option = f"--{setting.name}"
        if option not in rows:
            continue  # reported by the test above
        written = readme_default(rows[option][1])
        if not same_value(written, setting.default):
            wrong.append(f"{option}: docs/flows.md says {written!r}, steps/settings.py declares {setting.default!r}")
    assert not wrong, "docs/flows.md's ReviewFlow defaults differ from steps/settings.py:\n" + "\n".join(wrong)
