"""PromoteFlow's card: the champion of a registered model and its audit trail, newest first."""
from __future__ import annotations


def history_card(name: str, entries: list[dict], champion: int | None) -> list:
    """Components for PromoteFlow's card: the champion and the audit trail, newest first."""
    from metaflow.cards import Markdown, Table

    rows = [[e.get("seq"), e.get("time"), e.get("user"), e.get("action"),
             "-" if e.get("from_version") is None else f"v{e['from_version']}", f"v{e.get('to_version')}",
             e.get("gate", ""), e.get("metaflow_run", ""), e.get("reason", "")] for e in reversed(entries)]
    return [Markdown(f"# {name}: champion {'none' if champion is None else f'v{champion}'}"),
            Table(rows, headers=["#", "time (UTC)", "user", "action", "from", "to", "gate", "Metaflow run",
                                 "reason"])]
