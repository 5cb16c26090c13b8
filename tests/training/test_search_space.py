"""TuneFlow's search space: the default of steps/settings.py, a space file that narrows, widens, fixes, adds or drops
settings, and every problem reported before any trial with the file and the setting named."""
import optuna
import pytest

from steps import settings
from steps.runtime.errors import ReviewflowError
from steps.training.search_space import load_space, parse_space_text, resolve_space, suggest


def by_name(space):
    return {d.name: d for d in space}


def test_the_default_space_ranges_over_searchable_settings_within_what_each_allows():
    space, held = resolve_space()
    assert held == {} and [d.name for d in space] == [n for n in settings.SEARCHABLE if n in by_name(space)]
    for d in space:
        setting = settings.BY_NAME[d.name]
        assert d.name in settings.SEARCHABLE
        for value in d.choices or (d.low, d.high):
            assert setting.problem(value) is None, (d.name, value)
    assert by_name(space)["learning-rate"].log and "seed" not in settings.SEARCHABLE


def test_a_file_narrows_widens_fixes_adds_and_drops(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("learning-rate: {low: 2e-5, high: 1.0e-4}\n"  # YAML 1.1 reads 2e-5 as a string: converted
                    "epochs: {high: 6}\n"  # only one end: the other stays the default's
                    "batch-size: [16, 32]\n"
                    "freeze-encoder: false\n"
                    "max-grad-norm: {low: 0.5, high: 2}\n"
                    "class-weights: null\n")
    space, held = load_space(str(path))
    found = by_name(space)
    assert (found["learning-rate"].low, found["learning-rate"].high, found["learning-rate"].log) == (2e-5, 1e-4, True)
    assert (found["epochs"].low, found["epochs"].high) == (1, 6) and isinstance(found["epochs"].high, int)
    assert found["batch-size"].choices == (16, 32) and found["max-grad-norm"].high == 2.0
    assert held == {"freeze-encoder": False}
    assert "class-weights" not in found and "freeze-encoder" not in found


def test_json_works_too_and_a_range_of_one_value_is_a_fixed_value(tmp_path):
    path = tmp_path / "space.json"
    path.write_text('{"epochs": {"low": 2, "high": 2}, "max-length": [64]}')
    space, held = load_space(str(path))
    assert held == {"epochs": 2} and by_name(space)["max-length"].choices == (64,)


def test_an_option_given_on_the_command_line_is_fixed_unless_the_file_also_names_it():
    space, held = resolve_space(fixed={"epochs": 3})
    assert held == {"epochs": 3} and "epochs" not in by_name(space)
    with pytest.raises(ReviewflowError, match="--epochs 3 fixes epochs, and --space s.yaml also says"):
        resolve_space({"epochs": {"low": 1, "high": 2}}, "s.yaml", fixed={"epochs": 3})


@pytest.mark.parametrize("text, message", [
    ("learnin-rate: {low: 1.0e-5, high: 1.0e-4}", "unknown setting 'learnin-rate' (did you mean learning-rate?)"),
    ("seed: [1, 2]", "'seed' is a setting the search does not range over"),
    ("epochs: {low: 4, high: 2}", "epochs: an empty range, low 4 is above high 2"),
    ("batch-size: []", "batch-size: an empty list of choices"),
    ("learning-rate: {low: 0.0, high: 1.0e-3, log: true}", "--learning-rate must be in (0, 1), got 0.0"),
    ("weight-decay: {low: 0.0, high: 0.1, log: true}", "a log-scale range must start above 0, got low 0"),
    ("epochs: {low: 1.5, high: 3}", "--epochs takes whole numbers, got 1.5"),
    ("epochs: {lo: 1, high: 3}", "unknown key(s) lo; a range has low, high and log"),
    ("class-weights: {low: 0, high: 1}", "--class-weights is not a number; give a list of choices"),
    ("class-weights: [none, balanced]", "--class-weights must be one of none, auto, got 'balanced'"),
    ("freeze-encoder: [yes please]", "--freeze-encoder is true or false, got 'yes please'"),
    ("batch-size: [16, 16]", "repeat a value"),
    ("- learning-rate", "must map setting names to ranges, lists or values, got list"),
    ("epochs: [1, 2", "not valid YAML or JSON"),
])
def test_problems_are_refused_naming_the_file_and_the_setting(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ReviewflowError) as refused:
        load_space(str(path))
    assert message in str(refused.value) and str(path) in str(refused.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ReviewflowError) as refused:
        resolve_space(parse_space_text("epochs: {low: 4, high: 2}\nbatch-size: []\nfoo: 1\n", "s.yaml"), "s.yaml")
    assert str(refused.value).count("--space s.yaml") == 3


def test_a_space_with_nothing_left_to_search_is_refused():
    everything = {d.name: None for d in settings.SEARCH_SPACE}
    with pytest.raises(ReviewflowError, match="nothing to search"):
        resolve_space(everything, "s.yaml")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ReviewflowError, match=f"--space {tmp_path / 'nope.yaml'}: no such file"):
        load_space(str(tmp_path / "nope.yaml"))


def test_suggest_gives_each_setting_a_value_of_its_type_inside_its_range():
    space, _ = resolve_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), space)
        assert set(values) == set(by_name(space))
        for d in space:
            setting, value = settings.BY_NAME[d.name], values[d.name]
            assert setting.problem(value) is None and isinstance(value, setting.type), (d.name, value)
            assert value in d.choices if d.choices else d.low <= value <= d.high
