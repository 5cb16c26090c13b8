import json
import math

import numpy as np
import pytest
from mlflow import MlflowClient

from steps.data.drift import (
    PROFILE_TAG,
    charset_shares,
    check_drift,
    compare_to_profile,
    psi,
    require_no_drift,
    store_training_profile,
)
from steps.runtime import tracking
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame


def drifted_reviews():
    frame = review_frame(300, seed=6)
    frame["isPositive"] = (frame.index % 10 == 0).astype(int)  # 10% positive instead of 60%
    frame["reviewText"] = frame["reviewText"] + " Привет, zebra quokka"  # longer, Cyrillic, unknown words
    return frame


def test_psi_matches_the_formula():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.6, 0.4], [0.9, 0.1]) == pytest.approx(0.3 * math.log(1.5) + 0.3 * math.log(4))
    assert psi([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))  # zero bins floored


def test_charset_shares_separate_ascii_latin_and_other_scripts():
    import pandas as pd

    shares = charset_shares(pd.Series(["plain", "café", "Привет", "東京 ok"]))
    assert shares == {"ascii": 0.25, "latin": 0.25, "other_script": 0.5}


def test_the_profile_is_compact_json_with_every_feature(profile, tiny_tokenizer):
    text = json.dumps(profile)
    assert len(text) < 10_000
    assert set(profile["features"]) == {"label", "text_chars", "token_length", "charset", "vocabulary"}
    assert profile["rows"] == 280 and profile["vocab_size"] == len(tiny_tokenizer)
    assert profile["features"]["label"]["shares"] == {"0": pytest.approx(0.4), "1": pytest.approx(0.6)}
    assert profile["features"]["vocabulary"]["shares"]["seen_in_training"] == 1.0


def test_same_distribution_is_stable(profile, tiny_tokenizer):
    report = compare_to_profile(profile, review_frame(300, seed=5), tiny_tokenizer, champion_version=3)
    assert report.status == "stable" and not report.drifted
    assert all(f["psi"] < 0.1 for f in report.features) and len(report.features) == 5


def test_drifted_data_names_each_drifted_feature(profile, tiny_tokenizer):
    report = compare_to_profile(profile, drifted_reviews(), tiny_tokenizer, champion_version=3)
    assert report.status == "drift"
    assert {f["name"] for f in report.drifted} == {"label", "text_chars", "token_length", "charset", "vocabulary"}
    label = next(f for f in report.features if f["name"] == "label")
    assert label["psi"] == pytest.approx(0.5 * math.log(0.9 / 0.4) - 0.5 * math.log(0.1 / 0.6), abs=1e-3)
    require_no_drift(report, fail_on_drift=False)  # only a warning
    with pytest.raises(ReviewflowError) as err:
        require_no_drift(report, fail_on_drift=True)
    message = str(err.value)
    assert message.startswith("data drift against the champion (version 3) in 5 feature(s), PSI >= 0.25:")
    assert "  - label: PSI 1.301; training data 0 0.400, 1 0.600; new data 0 0.900, 1 0.100" in message
    assert "Nothing was trained or registered (--fail-on-drift)" in message


def test_without_a_tokenizer_token_features_are_skipped_and_said_so(profile):
    report = compare_to_profile(profile, review_frame(100), None)
    assert {f["name"] for f in report.features} == {"label", "text_chars", "charset"}
    assert "token features skipped" in report.notes[0]


def _champion(uri, tiny_model_dir, profile=None):
    """A real registered version (artifacts: the tiny model dir) with alias champion, optionally profiled."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = tracking.start_flow_run(uri, "ReviewFlow", "7", {})
    with tracking.step_run(uri, parent, "register", "ReviewFlow/7/register/8") as run:
        run.artifact(str(tiny_model_dir / "config.json"), "model")
        client.create_registered_model("review-classifier")
        version = client.create_model_version("review-classifier", f"runs:/{run.run_id}/model", run.run_id)
        client.set_registered_model_alias("review-classifier", "champion", version.version)
        if profile is not None:
            store_training_profile(run, "review-classifier", int(version.version), profile)
    return client, int(version.version)


def test_drift_is_checked_against_the_champions_stored_profile(tracking_uri, tiny_model_dir, profile):
    from steps.training.models import load_tokenizer

    client, version = _champion(tracking_uri, tiny_model_dir, profile)
    uri = client.get_model_version("review-classifier", str(version)).tags[PROFILE_TAG]
    assert uri.startswith("runs:/") and uri.endswith("/data_profile/training_profile.json")
    report = check_drift(client, "review-classifier", drifted_reviews(), load_tokenizer)
    assert (report.status, report.champion_version, len(report.drifted)) == ("drift", version, 5)
    assert report.metrics()["drift_psi_label"] == pytest.approx(1.301, abs=1e-3)


def test_no_champion_or_no_profile_skips_the_check(tracking_uri, tiny_model_dir):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    report = check_drift(client, "review-classifier", review_frame(20))
    assert report.status == "no_champion" and "no champion yet" in report.describe()
    client, version = _champion(tracking_uri, tiny_model_dir)
    report = check_drift(client, "review-classifier", review_frame(20))
    assert report.status == "no_profile"
    assert f"champion version {version} has no 'training_profile' tag" in report.notes[0]
    require_no_drift(report, fail_on_drift=True)  # nothing to compare is not drift


def test_a_missing_tokenizer_degrades_to_the_text_features(tracking_uri, tiny_model_dir, profile):
    client, _ = _champion(tracking_uri, tiny_model_dir, dict(profile, tokenizer="/no/such/tokenizer"))
    from steps.training.models import load_tokenizer

    report = check_drift(client, "review-classifier", review_frame(50), load_tokenizer)
    assert {f["name"] for f in report.features} == {"label", "text_chars", "charset"}
    assert report.notes[0].startswith("cannot load tokenizer '/no/such/tokenizer'")
    assert np.isfinite(report.metrics()["drift_psi_max"])
