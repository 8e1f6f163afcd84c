import pytest

from llmcompress import ConfigError, Recipe
from llmcompress.recipe import builtin_recipes

GOOD = """
llmcompress: 1
name: t
model: smollm2-135m
evaluation: {max_tokens: 1024}
stages:
  - method: rtn
    bits: 4
    group_size: 64
  - method: dtype
    dtype: bfloat16
"""


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_round_trip(tmp_path):
    r = Recipe.from_yaml(write(tmp_path, GOOD))
    assert [s.METHOD for s in r.stages] == ["rtn", "dtype"]
    assert r.stages[0].bits == 4 and r.stages[0].group_size == 64
    assert r.evaluation.max_tokens == 1024
    again = Recipe.from_yaml_string(r.to_yaml())
    assert again.to_dict() == r.to_dict()
    assert again.stages[0].to_dict()["method"] == "rtn"


def test_python_recipe_matches_yaml(tmp_path):
    from llmcompress.methods.dtype import DtypeConfig
    from llmcompress.methods.rtn import RTNConfig

    r = Recipe(stages=[RTNConfig(bits=4, group_size=64), DtypeConfig(dtype="bfloat16")], name="t",
               model="smollm2-135m")
    assert Recipe.from_yaml_string(r.to_yaml()).stages[0] == r.stages[0]


@pytest.mark.parametrize(
    "text, needles",
    [
        ("stages:\n  - method: nosuch\n", ["stage 1", "unknown method 'nosuch'", "rtn"]),
        ("stages:\n  - method: rtn\n    bitz: 4\n", ["stage 1 (rtn)", "unknown key 'bitz'", "bits"]),
        ("stages:\n  - method: rtn\n    bits: 9\n", ["stage 1 (rtn)", "'bits' must be in [2, 8]", "9"]),
        ("stages:\n  - method: rtn\n    bits: four\n", ["'bits' must be of type int"]),
        ("stages:\n  - method: rtn\n  - method: rtn\n    observer: foo\n", ["stage 2 (rtn)", "'observer' must be one of", "'mse'"]),
        ("stages:\n  - method: dtype\n    dtype: fp8\n", ["'dtype' must be one of"]),
        ("stages:\n  - method: gptq\n    gptaq_alpha: 2\n", ["stage 1 (gptq)", "'gptaq_alpha' must be in [0, 1]"]),
        ("stages:\n  - method: sparsegpt\n    gptaq_alpha: -0.5\n", ["stage 1 (sparsegpt)", "'gptaq_alpha' must be in [0, 1]"]),
        ("stages: []\n", ["'stages' must be a non-empty list"]),
        ("stages:\n  - bits: 4\n", ["stage 1", "missing key 'method'"]),
        ("modle: x\nstages:\n  - method: rtn\n", ["unknown top-level key 'modle'"]),
        ("evaluation: {max_tokenz: 3}\nstages:\n  - method: rtn\n", ["section 'evaluation'", "unknown key 'max_tokenz'"]),
        ("stages: [\n", ["not valid YAML"]),
        ("llmcompress: 7\nstages:\n  - method: rtn\n", ["format version 7"]),
        ("output: {format: gguf}\nstages:\n  - method: rtn\n", ["'format' must be one of"]),
    ],
)
def test_invalid_recipes_name_file_stage_key(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Recipe.from_yaml(path)
    msg = str(err.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.load("no/such/recipe.yaml")
    with pytest.raises(ConfigError, match="built-in"):
        Recipe.load("no-such-builtin")


def test_builtin_recipes_parse():
    recipes = builtin_recipes()
    assert "quickstart" in recipes
    for name, path in recipes.items():
        r = Recipe.from_yaml(path)
        assert r.stages, name
        assert r.description, f"{name} needs a one-line description"


def test_asymmetric_compressed_tensors_refused_before_loading(tmp_path):
    text = "stages:\n  - method: rtn\n    sym: false\n"
    with pytest.raises(ConfigError, match="stage 1 \\(rtn\\).*asymmetric"):
        Recipe.from_yaml(write(tmp_path, text))
