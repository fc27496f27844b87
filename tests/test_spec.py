"""Spec loading: validation with file:line:col, "did you mean", overrides, extends, defaults, schema, hash."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.spec import Problem, Spec, SpecError, check_metric, json_schema, load_spec, parse_override

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems_of(path: Path, overrides: list[str] | None = None) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value.problems


def by_path(problems: list[Problem]) -> dict[str, Problem]:
    return {p.path: p for p in problems}


MINIMAL = """
name: minimal
data:
  path: some-data
"""


# --------------------------------------------------------------------------------------------- validation


def test_misspelled_key_and_wrong_type_reported_together_with_positions(tmp_path):
    path = write(
        tmp_path / "bad.yaml",
        """
        name: bad
        data:
          path: d
        trian:
          epochs: 2
        train:
          batch_size: 8
          epochs: many
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 2
    found = by_path(problems)
    typo, wrong = found["trian"], found["train.epochs"]
    assert (typo.file, typo.line, typo.col) == (str(path.resolve()), 4, 1)
    assert "did you mean 'train'" in typo.message
    assert (wrong.file, wrong.line, wrong.col) == (str(path.resolve()), 8, 3)
    assert "integer" in wrong.message and "'many'" in wrong.message
    # Both are in the one error text, each with file:line:col.
    text = str(SpecError(problems))
    assert text.startswith("2 problems in spec:")
    assert f"{path.resolve()}:4:1: trian: unknown key 'trian'; did you mean 'train'?" in text
    assert f"{path.resolve()}:8:3: train.epochs:" in text


def test_unknown_nested_key_suggests_field(tmp_path):
    path = write(tmp_path / "s.yaml", MINIMAL + "train:\n  early_stopping:\n    patiance: 3\n")
    (problem,) = problems_of(path)
    assert problem.path == "train.early_stopping.patiance"
    assert (problem.line, problem.col) == (6, 5)
    assert "did you mean 'patience'" in problem.message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    path = write(tmp_path / "s.yaml", MINIMAL + "zzz_unrelated: 1\n")
    (problem,) = problems_of(path)
    assert problem.path == "zzz_unrelated"
    assert "did you mean" not in problem.message
    assert "valid keys: name, description, model, data" in problem.message


def test_unknown_key_in_splits_suggests_field(tmp_path):
    path = write(
        tmp_path / "s.yaml",
        """
        name: s
        data:
          path: d
          splits:
            train: train
            tset: test
        """,
    )
    (problem,) = problems_of(path)
    assert problem.path == "data.splits.tset"
    assert (problem.line, problem.col) == (6, 5)
    assert "did you mean 'test'" in problem.message


@pytest.mark.parametrize("good", ["recall@1", "NDCG@10", " mrr@10 ", "map@100", "precision@5"])
def test_check_metric_accepts(good):
    assert check_metric(good) == good.strip().lower()


@pytest.mark.parametrize("bad", ["ndcg@x", "ndcg", "ndcg@0", "hits@10", "recall@-1", "ndcg@10.5"])
def test_check_metric_rejects(bad):
    with pytest.raises(ValueError, match="unknown metric"):
        check_metric(bad)


def test_bad_metric_in_spec_is_located(tmp_path):
    path = write(
        tmp_path / "s.yaml",
        """
        name: s
        data:
          path: d
        eval:
          metrics: [recall@1, ndcg@x]
          main: map@x
        train:
          early_stopping:
            metric: hits@3
        """,
    )
    found = by_path(problems_of(path))
    assert set(found) == {"eval.metrics.1", "eval.main", "train.early_stopping.metric"}
    assert "'ndcg@x'" in found["eval.metrics.1"].message
    assert found["eval.metrics.1"].line == 5
    assert found["eval.main"].line == 6
    assert found["train.early_stopping.metric"].line == 9


def test_metrics_normalised_and_main_appended(tmp_path):
    path = write(tmp_path / "s.yaml", MINIMAL + "eval:\n  metrics: [Recall@5, recall@5, mrr@10]\n  main: ndcg@3\n")
    spec = load_spec(path).spec
    assert spec.eval.metrics == ["recall@5", "mrr@10", "ndcg@3"]
    assert spec.eval.main == "ndcg@3"
    assert spec.eval.depth == 100
    spec = load_spec(path, ["eval.metrics=[map@250]"]).spec
    assert spec.eval.depth == 250


def test_invalid_yaml_is_located(tmp_path):
    path = write(tmp_path / "s.yaml", "name: s\ndata:\n  path: [unclosed\n")
    (problem,) = problems_of(path)
    assert problem.file == str(path)
    assert problem.line is not None and problem.line >= 3
    assert "invalid YAML" in problem.message


def test_missing_file_and_non_mapping(tmp_path):
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert problem.message == "file not found"
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    (problem,) = problems_of(path)
    assert "mapping" in problem.message


def test_empty_spec_reports_required_fields(tmp_path):
    path = write(tmp_path / "empty.yaml", "")
    found = by_path(problems_of(path))
    assert set(found) == {"name", "data"}
    assert all("Field required" in p.message for p in found.values())


def test_cross_field_rules(tmp_path):
    path = write(
        tmp_path / "s.yaml",
        MINIMAL + "negatives:\n  mode: hard\n  per_query: 5\n  mine_range: [10, 12]\n",
    )
    (problem,) = problems_of(path)
    assert problem.path == "negatives"
    assert "fewer ranks than per_query=5" in problem.message
    path = write(tmp_path / "s2.yaml", MINIMAL + "  splits: {dev: null}\n")
    (problem,) = problems_of(path, ["recipe=manual"])  # auto turns the unset early stopping off without dev
    assert "early_stopping needs a dev split" in problem.message
    (problem,) = problems_of(path, ["train.early_stopping.patience=1"])  # as does one written with no dev
    assert "early_stopping needs a dev split" in problem.message
    # ... and with early stopping off, no dev split is fine.
    spec = load_spec(path, ["train.early_stopping=null"]).spec
    assert spec.data.splits.dev is None and spec.train.early_stopping is None


def test_jsonl_source_needs_eval_path(tmp_path, monkeypatch):
    path = write(
        tmp_path / "s.yaml",
        """
        name: s
        data:
          source: jsonl
          path: train.jsonl
        """,
    )
    (problem,) = problems_of(path)
    assert problem.path == "data"
    assert (problem.line, problem.col) == (2, 1)
    assert "source jsonl needs eval_path" in problem.message
    # A --set path is relative to the working directory (not to the spec file).
    (tmp_path / "cwd" / "beir").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    spec = load_spec(path, ["data.eval_path=beir"]).spec
    assert spec.data.eval_path == str((tmp_path / "cwd" / "beir").resolve())
    assert spec.data.path == str((tmp_path / "train.jsonl").resolve())


# --------------------------------------------------------------------------------------------- --set


def test_overrides_are_typed_by_the_schema(tmp_path):
    path = write(tmp_path / "s.yaml", MINIMAL)
    loaded = load_spec(path, ["train.learning_rate=1e-5", "data.limit=500", "negatives.mine_range=[5, 50]"])
    spec = loaded.spec
    assert type(spec.train.learning_rate) is float and spec.train.learning_rate == 1e-5
    assert type(spec.data.limit) is int and spec.data.limit == 500
    assert spec.negatives.mine_range == (5, 50)
    assert loaded.overrides == ["train.learning_rate=1e-5", "data.limit=500", "negatives.mine_range=[5, 50]"]
    # An override creates the sections it names.
    assert load_spec(path, ["train.early_stopping.patience=4"]).spec.train.early_stopping.patience == 4


def test_parse_override():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=") == (["a"], "")
    assert parse_override("a=null") == (["a"], None)
    for bad in ("noequals", "=3"):
        with pytest.raises(SpecError) as info:
            parse_override(bad)
        assert info.value.problems[0].file == "--set"


@pytest.mark.parametrize(
    ("override", "path", "needle"),
    [
        ("train.epochs=many", "train.epochs", "integer"),
        ("data.limit=0", "data.limit", "greater than or equal to 1"),
        ("train.epocs=3", "train.epocs", "did you mean 'epochs'"),
    ],
)
def test_bad_override_reported_with_set(tmp_path, override, path, needle):
    spec = write(tmp_path / "s.yaml", MINIMAL)
    (problem,) = problems_of(spec, [override])
    assert problem.file == f"--set {override}"
    assert problem.path == path
    assert needle in problem.message
    assert str(problem).startswith(f"--set {override}: {path}: ")


@pytest.mark.parametrize("override", ["eval.metrics=[ndcg@5", 'name="unterminated'])
def test_unparseable_override_value_is_a_spec_error(tmp_path, override):
    spec = write(tmp_path / "s.yaml", MINIMAL)
    with pytest.raises(SpecError) as info:
        load_spec(spec, [override])
    assert "--set" in str(info.value)


# --------------------------------------------------------------------------------------------- extends


def test_extends_merges_and_resolves_paths_per_file(tmp_path):
    write(
        tmp_path / "base" / "base.yaml",
        """
        name: base
        description: the parent
        data:
          path: parent-data
          limit: 100
        train:
          epochs: 3
          batch_size: 16
        eval:
          metrics: [recall@1, ndcg@10]
        """,
    )
    child = write(
        tmp_path / "exp" / "child.yaml",
        """
        extends: ../base/base.yaml
        name: child
        train:
          epochs: 1
        eval:
          metrics: [mrr@10]
        """,
    )
    spec = load_spec(child).spec
    assert spec.name == "child"  # child overrides
    assert spec.description == "the parent"  # inherited
    assert spec.train.epochs == 1 and spec.train.batch_size == 16  # nested merge
    assert spec.eval.metrics == ["mrr@10", "ndcg@10"]  # lists are replaced, not merged (main appended)
    assert spec.data.limit == 100
    # data.path is relative to the file that names it: the parent.
    assert spec.data.path == str((tmp_path / "base" / "parent-data").resolve())

    grandchild = write(
        tmp_path / "exp" / "deeper" / "grandchild.yaml",
        """
        extends: ../child.yaml
        name: grandchild
        data:
          path: own-data
        """,
    )
    spec = load_spec(grandchild).spec
    assert spec.data.path == str((tmp_path / "exp" / "deeper" / "own-data").resolve())
    assert spec.data.limit == 100 and spec.train.epochs == 1


def test_extends_problems_point_at_the_parent_file(tmp_path):
    parent = write(tmp_path / "parent.yaml", "name: p\ndata:\n  path: d\ntrain:\n  epohcs: 2\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nname: c\n")
    (problem,) = problems_of(child)
    assert (problem.file, problem.line, problem.col) == (str(parent.resolve()), 5, 3)
    assert "did you mean 'epochs'" in problem.message


def test_extends_errors(tmp_path):
    a = write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\nname: b\ndata:\n  path: d\n")
    (problem,) = problems_of(a)
    assert "circular extends" in problem.message
    assert "a.yaml -> " in problem.message and "b.yaml" in problem.message

    selfish = write(tmp_path / "self.yaml", "extends: self.yaml\nname: s\n")
    assert "circular extends" in problems_of(selfish)[0].message

    missing = write(tmp_path / "m.yaml", "name: m\nextends: nowhere.yaml\n")
    (problem,) = problems_of(missing)
    assert (problem.line, problem.col) == (2, 1)
    assert "file not found" in problem.message

    wrong = write(tmp_path / "w.yaml", "extends: [a.yaml]\nname: w\n")
    assert "extends must be a path" in problems_of(wrong)[0].message


def test_extends_child_hub_id_with_inherited_hf_source(tmp_path):
    write(tmp_path / "base.yaml", "name: b\ndata:\n  source: hf\n  path: org/one\n")
    child = write(tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\nname: c\ndata:\n  path: org/two\n")
    spec = load_spec(child).spec
    assert spec.data.source == "hf"
    assert spec.data.path == "org/two"


def test_data_path_with_home_directory(tmp_path):
    path = write(tmp_path / "s.yaml", "name: s\ndata:\n  path: ~/embx-data\n")
    assert load_spec(path).spec.data.path == str(Path("~/embx-data").expanduser())


def test_hf_hub_id_is_kept_and_local_model_path_resolved(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    path = write(
        tmp_path / "s.yaml",
        """
        name: s
        model:
          base: ./models/mine
        data:
          source: hf
          path: mteb/nfcorpus
        """,
    )
    spec = load_spec(path).spec
    assert spec.data.path == "mteb/nfcorpus"
    assert spec.model.base == str((tmp_path / "models" / "mine").resolve())
    assert load_spec(path, ["model.base=org/model"]).spec.model.base == "org/model"


# --------------------------------------------------------------------------------------------- defaults, schema, hash


def test_defaults_make_a_five_line_spec_valid(tmp_path):
    path = write(
        tmp_path / "five.yaml",
        """
        # embx run five.yaml
        name: five
        model:
          base: all-MiniLM-L6-v2
        data:
          path: data/x
        """,
    )
    assert len(path.read_text().splitlines()) <= 6
    loaded = load_spec(path)
    spec = loaded.spec
    assert loaded.text == path.read_text()
    assert spec.model.pooling is None and spec.model.max_seq_length == 256 and spec.model.normalize is True
    assert spec.data.source == "beir" and spec.data.path == str((tmp_path / "data" / "x").resolve())
    assert (spec.data.splits.train, spec.data.splits.dev, spec.data.splits.test) == ("train", "dev", "test")
    # recipe: auto (runner/spec/recipe.py; tests/test_spec_recipe.py)
    assert spec.negatives.mode == "hard" and spec.negatives.mine_range == (10, 100)
    assert spec.train.epochs == 3 and spec.train.learning_rate == 5e-5 and spec.train.batch_size == 32
    assert spec.train.early_stopping.metric == "ndcg@10" and spec.train.early_stopping.patience == 1  # eval.main
    assert spec.eval.metrics == ["recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"]
    assert spec.eval.main == "ndcg@10" and spec.eval.baseline is True


def _properties(schema: dict):
    yield "Spec", schema["properties"]
    for name, sub in schema.get("$defs", {}).items():
        if "properties" in sub:
            yield name, sub["properties"]


def test_json_schema_documents_every_field():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "data"}
    assert "extends" in schema["properties"]
    seen = 0
    for model, props in _properties(schema):
        for field, body in props.items():
            assert body.get("description"), f"{model}.{field} has no description"
            seen += 1
    assert seen >= 40
    assert {"ModelSpec", "DataSpec", "NegativesSpec", "TrainSpec", "EvalSpec", "EarlyStopping"} <= set(schema["$defs"])


def test_spec_hash_stable_and_sensitive(tmp_path):
    path = write(tmp_path / "s.yaml", MINIMAL)
    first, second = load_spec(path).spec, load_spec(path).spec
    assert first.spec_hash() == second.spec_hash()
    assert len(first.spec_hash()) == 16
    # The hash is of the resolved spec: writing a default explicitly does not change it...
    explicit = write(tmp_path / "s2.yaml", MINIMAL + "train:\n  epochs: 3\n")  # as recipe: auto chooses
    assert load_spec(explicit).spec.spec_hash() == first.spec_hash()
    # ... changing any field does.
    changed = load_spec(path, ["train.learning_rate=3e-5"]).spec
    assert changed.spec_hash() != first.spec_hash()
    assert load_spec(path, ["negatives.per_query=4"]).spec.spec_hash() != first.spec_hash()
    # The resolved JSON holds absolute paths and no spec folder: it hashes as the old, absolute-path hash did
    # (paths written relative in a spec file are hashed relative to it: tests/test_memo.py).
    assert Spec.model_validate_json(first.resolved_json()).spec_hash() == first.legacy_spec_hash()


# --------------------------------------------------------------------------------------------- shipped specs


def shipped_specs() -> list[Path]:
    return sorted((ROOT / "specs").glob("*.yaml")) + sorted((ROOT / "bench" / "specs").glob("*.yaml"))


def test_specs_folder_is_not_empty():
    found = sorted((ROOT / "specs").glob("*.yaml"))
    assert found, f"no example specs in {ROOT / 'specs'}: every example spec must validate in a test"


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_spec_validates(path):
    loaded = load_spec(path)
    assert loaded.spec.name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# embx "), f"{path.name} must open with the command that runs it"


def test_early_stopping_defaults_to_the_main_metric(tmp_path):
    from runner.spec import Spec

    base = {"name": "x", "recipe": "manual", "model": {"base": "./m"}, "data": {"path": "d"}}
    assert Spec.model_validate({**base, "eval": {"main": "mrr@10"}}).train.early_stopping.metric == "mrr@10"
    explicit = {**base, "train": {"early_stopping": {"metric": "recall@10"}}}
    assert Spec.model_validate(explicit).train.early_stopping.metric == "recall@10"
    implicit = Spec.model_validate(base)
    assert (
        implicit.spec_hash()
        == Spec.model_validate({**base, "train": {"early_stopping": {"metric": "ndcg@10"}}}).spec_hash()
    )
