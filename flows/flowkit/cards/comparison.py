"""CompareFlow's card: the comparison table (best first), the accuracy-vs-latency plot, the chosen candidate and
the ReviewFlow command that trains it."""
from __future__ import annotations


def comparison_card(rows: list[dict], plot: bytes, chosen: str, transformer: dict | None, command: str | None,
                    cv_folds: int, data: str, validation: dict) -> list:
    from metaflow.cards import Image, Markdown, Table

    from steps.evaluation.compare import table

    how = (f"{cv_folds}-fold grouped, stratified cross-validation (by reviewId): every figure is the mean ± std "
           "over the folds (speed and size: measured once)" if cv_folds else
           "one grouped, stratified train/validation/test split (the one ReviewFlow makes with the same seed)")
    threads = sorted({r.get("threads") for fold in rows for r in fold.get("fold_rows", []) if r.get("threads")})
    parts = [Markdown(f"# Which model? {len(rows)} candidates on {data}\n{validation.get('rows_clean', 0):,} clean "
                      f"rows; {how}. Best first (F1, then accuracy, then latency). Latency and texts/s include "
                      "tokenization, on this machine's CPU"
                      + (f" with {', '.join(str(t) for t in threads)} thread(s)" if threads else "") + ".")]
    headers, cells = table(rows)
    parts.append(Table(cells, headers=headers))
    parts.append(Image(src=plot, label="accuracy vs latency"))
    lines = [f"**Best: {chosen}**."]
    if transformer is not None:
        lines.append(f"Train {transformer['candidate']} with ReviewFlow on the same data and settings:")
        lines.append(f"```\n{command}\n```")
    parts.append(Markdown("\n\n".join(lines)))
    settings = [[r["candidate"], r.get("settings", "")] for r in rows]
    parts.append(Markdown("## Settings per candidate"))
    parts.append(Table(settings, headers=["candidate", "trained with"]))
    return parts
