"""How a user's file maps onto the contract: which columns hold the text and the label, and what label values mean.

Labels are never guessed: the contract's 0/1 (as numbers or the strings "0"/"1") are taken as they are; anything
else needs a LabelMapping (--positive-values, --negative-values or --positive-if), and a file whose labels need
one gets an error that suggests it.
"""
from __future__ import annotations

import codecs
import operator
import re
from dataclasses import dataclass, field

from schemas import canonical_columns, label_values, load_contract, missing_markers
from steps.runtime.errors import ReviewflowError

COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class LabelMapping:
    """How the user's label values become 1 (positive) / 0 (negative); empty = the contract's 0/1 only.

    positive_values: these values -> 1; every other value -> 0, unless negative_values is given, in which
    case those -> 0 and any value in neither list is an error. positive_if: a comparison such as ">=4" on
    numeric labels (star ratings): true -> 1, false -> 0. Values compare after trimming, case-insensitively,
    and numbers by value ("4" == "4.0").
    """

    positive_values: tuple[str, ...] = ()
    negative_values: tuple[str, ...] = ()
    positive_if: str = ""

    @classmethod
    def from_options(cls, positive_values: str = "", negative_values: str = "", positive_if: str = "") -> LabelMapping:
        positives = _value_list(positive_values)
        negatives = _value_list(negative_values)
        condition = (positive_if or "").strip()
        if condition and (positives or negatives):
            raise ReviewflowError(
                "--positive-if cannot be combined with --positive-values/--negative-values; use one way to map labels"
            )
        if negatives and not positives:
            raise ReviewflowError("--negative-values needs --positive-values (which values mean positive?)")
        overlap = sorted(set(positives) & set(negatives))
        if overlap:
            raise ReviewflowError(f"--positive-values and --negative-values both list {overlap}")
        mapping = cls(positives, negatives, condition)
        if condition:
            mapping.comparison()  # fail now on a malformed condition, not after reading the data
        return mapping

    @property
    def explicit(self) -> bool:
        return bool(self.positive_values or self.positive_if)

    def comparison(self):
        match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*([-+]?\d+(?:\.\d+)?)\s*", self.positive_if)
        if not match:
            raise ReviewflowError(
                f"--positive-if {self.positive_if!r}: expected a comparison with a number, e.g. '>=4' "
                "(allowed operators: >=, >, <=, <, ==)"
            )
        return COMPARISONS[match.group(1)], float(match.group(2))

    def describe(self) -> str:
        if self.positive_if:
            return f"label {self.positive_if} -> 1, otherwise 0"
        if self.positive_values:
            negatives = ", ".join(self.negative_values) if self.negative_values else "every other value"
            return f"{', '.join(self.positive_values)} -> 1; {negatives} -> 0"
        return "labels taken as 0/1"


@dataclass(frozen=True)
class IngestOptions:
    """What the user tells ingest about their files (flow parameters of the same names)."""

    text_column: str = ""  # empty = the contract's name, reviewText
    label_column: str = ""  # empty = the contract's name, isPositive
    labels: LabelMapping = field(default_factory=LabelMapping)
    encoding: str = "auto"  # auto = a byte-order mark if present, else UTF-8

    @classmethod
    def from_parameters(cls, text_column: str = "", label_column: str = "", positive_values: str = "",
                        negative_values: str = "", positive_if: str = "", encoding: str = "auto") -> IngestOptions:
        encoding = (encoding or "auto").strip()
        if encoding.lower() != "auto":
            try:
                encoding = codecs.lookup(encoding).name
            except LookupError:
                raise ReviewflowError(
                    f"--encoding {encoding!r}: unknown encoding; use a Python codec name such as utf-8, cp1252, "
                    "latin-1 or utf-16, or auto"
                ) from None
        return cls(
            text_column=(text_column or "").strip(),
            label_column=(label_column or "").strip(),
            labels=LabelMapping.from_options(positive_values, negative_values, positive_if),
            encoding="auto" if encoding.lower() == "auto" else encoding,
        )

    @property
    def source_text_column(self) -> str:
        return self.text_column or load_contract()["text_column"]

    @property
    def source_label_column(self) -> str:
        return self.label_column or load_contract()["label_column"]

    @property
    def is_default(self) -> bool:
        return self == IngestOptions()

    def source_name(self, canonical: str) -> str:
        """The input column that feeds canonical column `canonical`."""
        contract = load_contract()
        if canonical == contract["text_column"]:
            return self.source_text_column
        if canonical == contract["label_column"]:
            return self.source_label_column
        return canonical

    def wanted_columns(self) -> list[str]:
        """Input column names ingest reads (the mapped text/label columns and the optional canonical ones)."""
        return [self.source_name(c) for c in canonical_columns()]


def _value_list(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_normal_value(v) for v in (text or "").split(",") if v.strip()))


def _normal_value(value: str) -> str:
    key = value.strip().casefold()
    try:
        number = float(key)
    except ValueError:
        return key
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else key


def _label_keys(values):
    """Label cells as comparable keys: trimmed, case-folded, numbers by value ("1.0" -> "1"); <NA> if missing."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(values.dtype):
        return values.map({True: "true", False: "false"}).astype("string")
    keys = values.astype("string").str.strip().str.casefold()
    keys = keys.mask(keys.isin(missing_markers()) | (keys == ""))
    numbers = pd.to_numeric(keys, errors="coerce")
    if not pd.api.types.is_numeric_dtype(numbers.dtype):
        return keys
    numbers = numbers.astype("Float64")
    integral = numbers.notna() & (numbers.abs() < 1e15) & (numbers == numbers.round())
    if integral.any():
        keys = keys.mask(integral, numbers[integral].astype("Int64").astype("string"))
    return keys


def _star_like(found: list[str]) -> bool:
    try:
        numbers = [float(v) for v in found]
    except ValueError:
        return False
    return all(n.is_integer() for n in numbers) and min(numbers) >= 0 and max(numbers) <= 10


def _mapping_hint(found: list[str]) -> str:
    folded = {v.casefold() for v in found}
    if folded <= {"true", "false"}:
        return "--positive-values true (true -> 1, false -> 0)"
    if _star_like(found):
        return "--positive-if '>=4' (e.g. star ratings: 4-5 -> 1, below -> 0)"
    guess = next((v for v in found if v.casefold() in ("positive", "pos", "good", "yes", "y", "fresh", "like")),
                 None)
    return (f"--positive-values {guess} (that value -> 1, every other value -> 0)" if guess
            else "--positive-values <the value(s) that mean positive> (those -> 1, every other value -> 0)")


class LabelMapper:
    """Applies a LabelMapping chunk by chunk, and keeps the counts that the final checks need."""

    def __init__(self, mapping: LabelMapping, column: str):
        self.mapping = mapping
        self.column = column
        self.counts: dict[str, int] = {}

    def __call__(self, values, origin: str):
        import pandas as pd

        keys = _label_keys(values)
        present = keys.dropna()
        for key, count in present.value_counts().items():
            if key in self.counts or len(self.counts) < 1000:
                self.counts[key] = self.counts.get(key, 0) + int(count)
        if self.mapping.positive_if:
            compare, threshold = self.mapping.comparison()
            numbers = pd.to_numeric(keys, errors="coerce")
            bad = present[numbers[present.index].isna()]
            if len(bad):
                raise ReviewflowError(
                    f"{origin}: --positive-if {self.mapping.positive_if!r} needs numeric labels, but column "
                    f"{self.column!r} also holds {self._found(values, bad.index)}; use --positive-values instead"
                )
            mapped = compare(numbers.astype("Float64"), threshold).astype("Int64")
        elif self.mapping.positive_values:
            mapped = pd.Series(pd.NA, index=keys.index, dtype="Int64")
            mapped[keys.isin(self.mapping.positive_values).fillna(False)] = 1
            if self.mapping.negative_values:
                mapped[keys.isin(self.mapping.negative_values).fillna(False)] = 0
                bad = present[~present.isin(self.mapping.positive_values + self.mapping.negative_values)]
                if len(bad):
                    raise ReviewflowError(
                        f"{origin}: column {self.column!r} holds {self._found(values, bad.index)}, listed in neither "
                        f"--positive-values {','.join(self.mapping.positive_values)} nor --negative-values "
                        f"{','.join(self.mapping.negative_values)}; add them to one list, or drop those rows"
                    )
            else:
                mapped[keys.notna() & ~keys.isin(self.mapping.positive_values).fillna(False)] = 0
        else:
            allowed = [str(v) for v in label_values()]
            bad = present[~present.isin(allowed)]
            if len(bad):
                found = self._found(values, bad.index)
                every = self._found(values, present.index)
                booleans = {v.casefold() for v in every} <= {"true", "false"}
                what = "True/False" if booleans else "labels outside the contract"
                raise ReviewflowError(
                    f"{origin}: column {self.column!r} holds {what}: found {found} ({len(bad)} of {len(values)} "
                    f"rows in this part of the file; all values there: {every}); it must hold {'/'.join(allowed)} "
                    f"(1 = positive). reviewflow does not guess what other labels mean; map them explicitly, "
                    f"e.g. {_mapping_hint(every)}"
                )
            mapped = keys.astype("Int64")
        return mapped

    @staticmethod
    def _found(values, index) -> list[str]:
        return sorted({str(v) for v in values[index].dropna().unique()[:10]})

    def check_complete(self, origin: str) -> None:
        """After all chunks: every value the user listed must occur, so a typo does not map everything to 0."""
        for option, listed in (("--positive-values", self.mapping.positive_values),
                               ("--negative-values", self.mapping.negative_values)):
            unmatched = [v for v in listed if v not in self.counts]
            if unmatched:
                found = sorted(self.counts)[:20]
                raise ReviewflowError(
                    f"{origin}: {option} {','.join(unmatched)} matched no value in column {self.column!r}; "
                    f"the values there are {found}"
                )
