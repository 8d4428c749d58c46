"""Generation models in config, the resolved spec, the one greedy loop and the role contract (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vxdeploy.components.common import builtin
from vxdeploy.components.common.config import RunConfig, load_config, parse_config
from vxdeploy.components.common.errors import ConfigError, DataError, ModelIntakeError
from vxdeploy.components.common.run_parameters import config_from_parameters
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.generation.intake import check_contract, whole_signature
from vxdeploy.components.generation.loop import agreement, exact_match, greedy_generate
from vxdeploy.components.generation.spec import GenerationSpec, is_generation

VOCAB = ["<pad>", "<bos>", "<eos>", "a", "cat", "dog"]


def _generation(**over: object) -> dict[str, object]:
    gen: dict[str, object] = {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "max_new_tokens": 4,
        "vocabulary": VOCAB,
    }
    gen.update(over)
    return gen


def _user_model(**over: object) -> dict[str, object]:
    model: dict[str, object] = {
        "uri": "unused",
        "name": "my-vlm",
        "task": "generation",
        "parts": [
            {"name": "enc", "uri": "/m/enc.pt2", "role": "vision_encoder"},
            {"name": "proj", "uri": "/m/proj.pt2", "role": "projector"},
            {"name": "decoder_prefill", "uri": "/m/prefill.onnx"},  # role defaults to the name
            {"name": "step", "uri": "/m/step.onnx", "role": "decoder_step"},
        ],
        "generation": _generation(),
    }
    model.update(over)
    return model


# -- config ------------------------------------------------------------------------------------


def test_builtin_vlm_uri_makes_a_generation_model_with_its_four_parts() -> None:
    cfg = load_config(overrides={"model.uri": "builtin://digits-vlm"})  # what `--model` sets

    assert cfg.model.task == "generation"
    assert cfg.model.name == "digits-vlm"
    assert [(p.name, p.role, p.uri) for p in cfg.model.parts] == [
        (r, r, f"builtin://digits-vlm/{r}")
        for r in ("vision_encoder", "projector", "decoder_prefill", "decoder_step")
    ]
    assert cfg.model.generation is not None
    assert cfg.model.generation.vocabulary[cfg.model.generation.eos_token_id] == "<eos>"
    assert cfg.model.generation.label_captions[3] == "digit three"


def test_builtin_vlm_survives_the_pipeline_parameters() -> None:
    cfg = load_config(overrides={"model.uri": "builtin://digits-vlm"})

    params = cfg.to_pipeline_parameters()

    assert params["model_uri"] == "builtin://digits-vlm"
    assert config_from_parameters(params) == cfg
    # A console run that sets only the flat model_uri gets the same model.
    only_uri = RunConfig().to_pipeline_parameters()
    only_uri["model_uri"] = "builtin://digits-vlm"
    assert config_from_parameters(only_uri).model == cfg.model


def test_single_models_are_unchanged() -> None:
    cfg = RunConfig()

    assert cfg.model.task == "classification"
    assert cfg.model.generation is None and cfg.model.parts == []
    assert not is_generation(cfg.model)


def test_a_user_generation_model_resolves_roles_to_part_names() -> None:
    cfg = parse_config({"model": _user_model()})

    spec = GenerationSpec.from_config(cfg.model)

    assert spec.parts == {
        "vision_encoder": "enc",
        "projector": "proj",
        "decoder_prefill": "decoder_prefill",
        "decoder_step": "step",
    }
    assert spec.role_of("step") == "decoder_step" and spec.role_of("projector") == "projector"
    assert GenerationSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"parts": [{"name": "enc", "uri": "/e.pt2"}]},
            "model.parts[0] 'enc' has no role; set model.parts[0].role",
        ),
        (
            {
                "parts": [
                    {"name": "a", "uri": "/a", "role": "vision_encoder"},
                    {"name": "b", "uri": "/b", "role": "vision_encoder"},
                ]
            },
            "model.parts[1].role='vision_encoder' is also part 'a'",
        ),
        (
            {"parts": [{"name": "vision_encoder", "uri": "/e"}, {"name": "decoder_prefill", "uri": "/p"}]},
            "no part with role ['decoder_step']",
        ),
        ({"generation": None}, "model.generation: missing"),
        (
            {"generation": _generation(eos_token_id=9)},
            "model.generation.eos_token_id=9 outside the vocabulary",
        ),
        ({"task": "classification"}, "model.generation is set but model.task is 'classification'"),
    ],
)
def test_bad_generation_config_names_the_field_and_the_fix(change: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"model": _user_model(**change)})

    assert needle in str(err.value)


def test_builtin_vlm_refuses_another_task() -> None:
    with pytest.raises(ConfigError, match="builtin://digits-vlm is a generation model"):
        parse_config({"model": {"uri": "builtin://digits-vlm", "task": "classification"}})


def test_unknown_role_is_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"model": _user_model(parts=[{"name": "x", "uri": "/x", "role": "tokenizer"}])})

    assert "role='tokenizer'" in str(err.value) and "'vision_encoder'" in str(err.value)


# -- spec ----------------------------------------------------------------------------------------


@pytest.fixture()
def spec() -> GenerationSpec:
    return GenerationSpec(
        parts={"vision_encoder": "enc", "decoder_prefill": "pre", "decoder_step": "step"},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        max_new_tokens=4,
        vocabulary=tuple(VOCAB),
        label_captions=("a cat", "a dog"),
    )


def test_decode_stops_at_eos_and_skips_special_tokens(spec: GenerationSpec) -> None:
    assert spec.decode([1, 3, 4, 2, 5]) == "a cat"
    assert spec.decode([3, 0, 5, 99]) == "a dog"  # pad skipped, out-of-vocabulary id skipped


def test_references_from_labels_or_token_ids(spec: GenerationSpec) -> None:
    assert spec.references(np.array([1, 0])) == ["a dog", "a cat"]
    assert spec.references(np.array([[3, 4, 2, 0], [3, 5, 2, 0]])) == ["a cat", "a dog"]
    with pytest.raises(DataError, match=r"labels \[7\] have no caption"):
        spec.references(np.array([0, 7]))
    no_captions = GenerationSpec.from_dict({**spec.to_dict(), "label_captions": []})
    with pytest.raises(DataError, match="label_captions is empty"):
        no_captions.references(np.array([0]))


def test_spec_needs_the_decoder_roles() -> None:
    with pytest.raises(ConfigError, match=r"missing \['decoder_step'\]"):
        GenerationSpec({"vision_encoder": "e", "decoder_prefill": "p"}, 1, 2, 0, 4, tuple(VOCAB))


def test_is_generation_on_configs_artifacts_and_metadata(spec: GenerationSpec) -> None:
    class Artifact:
        metadata = {"generation": spec.to_dict()}

    assert is_generation(Artifact()) and is_generation({"generation": spec.to_dict()}) and is_generation(spec)
    assert not is_generation({"file": "model.onnx"}) and not is_generation(None)
    assert GenerationSpec.from_metadata(Artifact()) == spec


# -- the loop ------------------------------------------------------------------------------------


def _fake_parts(plans: list[list[int]]):  # type: ignore[no-untyped-def]
    """encode/prefill/step whose greedy outputs are ``plans[row]`` (the cache counts the steps)."""
    vocab = len(VOCAB)

    def onehot(ids: list[int]) -> np.ndarray:
        out = np.zeros((len(ids), vocab), np.float32)
        out[np.arange(len(ids)), ids] = 1.0
        return out

    def encode(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1)

    def prefill(tokens: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, int]:
        assert (ids == 1).all() and ids.dtype == np.int64 and ids.shape == (len(tokens), 1)
        return onehot([p[0] for p in plans]), 1

    def step(ids: np.ndarray, t: int) -> tuple[np.ndarray, int]:
        return onehot([p[min(t, len(p) - 1)] for p in plans]), t + 1

    return encode, prefill, step


def test_greedy_generate_pads_after_eos_and_stops_when_all_are_done(spec: GenerationSpec) -> None:
    encode, prefill, step = _fake_parts([[3, 4, 2, 5], [3, 5, 5, 5]])

    gen = greedy_generate(encode, prefill, step, np.zeros((2, 1, 2, 2), np.float32), spec)

    assert gen.tokens.tolist() == [[3, 4, 2, 0], [3, 5, 5, 5]]
    assert gen.texts == ["a cat", "a dog dog dog"]
    assert gen.ttft_ms <= gen.total_ms and gen.encode_ms <= gen.ttft_ms


def test_greedy_generate_honours_max_new_tokens(spec: GenerationSpec) -> None:
    encode, prefill, step = _fake_parts([[3, 4, 2]])

    gen = greedy_generate(encode, prefill, step, np.zeros((1, 4), np.float32), spec, max_new_tokens=2)

    assert gen.tokens.tolist() == [[3, 4]]


def test_exact_match_and_agreement() -> None:
    assert exact_match(["a cat", "a dog"], ["a cat", "a cat"]) == 0.5
    assert agreement(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 5]])) == 0.5
    with pytest.raises(DataError):
        exact_match(["a"], [])


# -- the role contract ---------------------------------------------------------------------------


def _sig(
    inputs: list[tuple[str, str, tuple[object, ...]]], outputs: list[tuple[str, str, tuple[object, ...]]]
):  # type: ignore[no-untyped-def]
    return ModelSignature(
        tuple(TensorSpec(n, d, s) for n, d, s in inputs),  # type: ignore[arg-type]
        tuple(TensorSpec(n, d, s) for n, d, s in outputs),  # type: ignore[arg-type]
    )


def _contract(vocab: int = 6, step_inputs: list[str] | None = None) -> dict[str, ModelSignature]:
    cache = [("present_key_0", "float32", ("batch", 2, "p", 4))]
    past = step_inputs if step_inputs is not None else ["input_ids", "past_key_0"]
    return {
        "vision_encoder": _sig(
            [("pixels", "float32", ("batch", 3, 4, 4))], [("feats", "float32", ("batch", 4, 8))]
        ),
        "decoder_prefill": _sig(
            [("image_tokens", "float32", ("batch", 4, 8)), ("input_ids", "int64", ("batch", 1))],
            [("logits", "float32", ("batch", vocab)), *cache],
        ),
        "decoder_step": _sig(
            [(n, "int64" if n == "input_ids" else "float32", ("batch", 1)) for n in past],
            [("logits", "float32", ("batch", vocab)), *cache],
        ),
    }


def test_contract_accepts_a_model_without_projector(spec: GenerationSpec) -> None:
    sigs = _contract()
    check_contract(spec, sigs)

    whole = whole_signature(sigs["vision_encoder"], spec)
    assert whole.input_names == ["pixels"]
    assert whole.outputs[0].to_dict() == {"name": "output_ids", "dtype": "int64", "shape": ["batch", 4]}


def test_vocabulary_shorter_than_the_logits_is_a_config_error(spec: GenerationSpec) -> None:
    with pytest.raises(ConfigError) as err:
        check_contract(spec, _contract(vocab=32))

    assert err.value.field == "model.generation.vocabulary"
    assert "logits pick among 32 token ids" in str(err.value) and "6 tokens" in str(err.value)


def test_a_step_without_its_cache_inputs_names_the_part(spec: GenerationSpec) -> None:
    with pytest.raises(
        ModelIntakeError, match=r"part 'step' \(role decoder_step\) has inputs \['input_ids'\]"
    ):
        check_contract(spec, _contract(step_inputs=["input_ids"]))


def test_builtin_datasets_take_the_models_input_name(tmp_path: Path) -> None:
    path = builtin.write_builtin("builtin://digits-eval", tmp_path, input_name="images")

    with np.load(path) as npz:
        assert sorted(npz.files) == ["images", "labels"]
        assert npz["images"].shape == (500, 1, 8, 8)
    with np.load(builtin.write_builtin("builtin://digits-eval", tmp_path / "plain")) as npz:
        assert "input" in npz.files


def test_the_multi_part_builtin_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="multi-part model"):
        builtin.write_builtin("builtin://digits-vlm", tmp_path)
    with pytest.raises(Exception, match="has parts builtin://digits-vlm/vision_encoder"):
        builtin.write_builtin("builtin://digits-vlm/tokenizer", tmp_path)


def test_a_part_named_like_another_role_is_resolved_by_its_name() -> None:
    spec = GenerationSpec(
        {
            "vision_encoder": "vision_encoder",
            "decoder_prefill": "decoder_step",
            "decoder_step": "decoder_prefill",
        },
        1,
        2,
        0,
        4,
        tuple(VOCAB),
    )

    assert spec.role_of("decoder_step") == "decoder_prefill"
    assert spec.by_role({"decoder_prefill": "b.onnx"}) == {"decoder_step": "b.onnx"}
