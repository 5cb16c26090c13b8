"""The contract (schemas/reviews_contract.json) is the one source of truth; the GX suite must agree with it."""
import json

import schemas


def _placeholders(value, found):
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            found.add(value["$PARAMETER"])
        for item in value.values():
            _placeholders(item, found)
    elif isinstance(value, list):
        for item in value:
            _placeholders(item, found)
    return found


def test_every_required_column_has_a_fatal_existence_check():
    exists = {e["kwargs"]["column"]: e["meta"]["level"] for e in schemas.load_suite()["expectations"]
              if e["type"] == "expect_column_to_exist"}
    assert exists == {name: "table" for name in schemas.required_columns()}


def test_the_suite_checks_only_contract_or_declared_derived_columns():
    contract, derived = set(schemas.canonical_columns()), set(schemas.derived_columns())
    named = {e["kwargs"]["column"] for e in schemas.load_suite()["expectations"] if "column" in e["kwargs"]}
    assert named <= contract | derived and derived <= named
    assert not derived & contract


def test_values_shared_with_the_contract_come_from_it():
    suite = schemas.load_suite()
    assert _placeholders(suite, set()) == set(schemas.suite_parameters())
    params = schemas.suite_parameters()
    contract = schemas.load_contract()
    assert params["label_values"] == contract["columns"][contract["label_column"]]["values"] == [0, 1]
    assert params["max_text_chars"] == contract["max_text_chars"]
    label_sets = [e for e in suite["expectations"] if e["kwargs"].get("column") == contract["label_column"]
                  and "value_set" in e["kwargs"]]
    assert label_sets and all(e["kwargs"]["value_set"] == {"$PARAMETER": "label_values"} for e in label_sets)
    assert "20000" not in json.dumps(suite["expectations"])  # no copy of the contract's bound


def test_every_expectation_says_what_happens_when_it_fails():
    for expectation in schemas.load_suite()["expectations"]:
        meta = expectation["meta"]
        assert meta["level"] in ("table", "row")
        assert meta.get("problem" if meta["level"] == "table" else "reason"), expectation


def test_the_suite_names_the_contract_version_it_follows():
    assert schemas.load_suite()["meta"]["contract_version"] == schemas.load_contract()["version"]
