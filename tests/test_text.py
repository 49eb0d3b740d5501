"""Text encoders: (tokens, mask) contract, zero padding, truncation, parity with transformers."""

from __future__ import annotations

import pytest
import torch

from kinema.config import TextConfig
from kinema.text import MiniLMEncoder, T5Encoder, build_text_encoder
from kinema.text.minilm import Bert, bert_state_dict_from_hf

PROMPTS = ["a cat", "a red fox runs through deep snow at dawn, cinematic", ""]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(max_length=64)


def _assert_contract(tokens, mask, batch, length, dim):
    assert tokens.shape == (batch, length, dim) and tokens.dtype.is_floating_point
    assert mask.shape == (batch, length) and mask.dtype == torch.bool
    # real tokens form a prefix, everything after is exactly zero
    lengths = mask.sum(1)
    assert torch.equal(mask, torch.arange(length)[None] < lengths[:, None])
    assert tokens[~mask].abs().max() == 0
    assert (tokens[mask].abs().sum(-1) > 0).all()


# ----------------------------------------------------------------------------- MiniLM


def test_minilm_shapes_mask_and_zero_padding(minilm):
    tokens, mask = minilm.encode(PROMPTS)
    _assert_contract(tokens, mask, 3, 64, 384)
    expected = [len(ids) for ids in minilm.token_ids(PROMPTS)]
    assert mask.sum(1).tolist() == expected
    assert expected[0] == 4 and expected[2] == 2  # [CLS] a cat [SEP]; "" is [CLS] [SEP]


def test_minilm_is_deterministic_and_batch_independent(minilm):
    tokens, _ = minilm.encode(PROMPTS)
    again, _ = minilm.encode(PROMPTS)
    assert torch.equal(tokens, again)
    # padding never leaks into real tokens: alone == inside a batch with a longer prompt
    alone, _ = minilm.encode(PROMPTS[:1])
    torch.testing.assert_close(alone[0], tokens[0], atol=1e-5, rtol=1e-5)


def test_minilm_different_prompts_differ_and_mean_sense(minilm):
    prompts = ["a cat sits on a mat", "a kitten is sitting on a rug", "the stock market fell sharply today"]
    tokens, mask = minilm.encode(prompts)
    assert not torch.allclose(tokens[0], tokens[1])
    # the bundled weights (not random ones) are loaded: mean-pooled features keep their meaning
    pooled = torch.nn.functional.normalize((tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3


def test_minilm_truncates_long_prompts(minilm):
    short = MiniLMEncoder(max_length=8)
    assert short._model is minilm._model  # one cached model per device/dtype
    long_prompt = " ".join(["snow"] * 100)
    ids = short.token_ids([long_prompt])[0]
    assert len(ids) == 8 and ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP] kept
    tokens, mask = short.encode([long_prompt, "a cat"])
    _assert_contract(tokens, mask, 2, 8, 384)
    assert mask.sum(1).tolist() == [8, 4]


def test_minilm_null_is_the_empty_prompt(minilm):
    tokens, mask = minilm.null(2)
    empty, empty_mask = minilm.encode([""])
    assert torch.equal(tokens, empty.expand(2, -1, -1)) and torch.equal(mask, empty_mask.expand(2, -1))
    negative, _ = minilm.null(1, negative_prompt="blurry")
    assert not torch.equal(negative[0], tokens[0])


def test_minilm_dtype_move_does_not_touch_the_shared_model(minilm):
    other = MiniLMEncoder().to(torch.bfloat16)
    tokens, _ = other.encode(["a cat"])
    assert tokens.dtype == torch.bfloat16 and other.dtype == torch.bfloat16
    assert minilm.dtype == torch.float32 and minilm.encode(["a cat"])[0].dtype == torch.float32
    reference, _ = minilm.encode(["a cat"])
    torch.testing.assert_close(tokens.float(), reference, atol=0.1, rtol=0.05)


def test_encoder_refuses_bad_prompts(minilm):
    with pytest.raises(TypeError, match=r"\[prompt\]"):
        minilm.encode("a cat")
    with pytest.raises(ValueError, match="empty"):
        minilm.encode([])
    with pytest.raises(TypeError, match="str"):
        minilm.encode(["a cat", 3])
    with pytest.raises(ValueError, match="max_length"):
        MiniLMEncoder(max_length=1)


def test_bert_matches_transformers():
    """Our plain-torch BERT gives the same hidden states as transformers' BertModel with the same weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16)
    reference = transformers.BertModel(config).eval()
    ours = Bert.from_hf_config(config.to_dict()).eval()
    ours.load_state_dict(bert_state_dict_from_hf(reference.state_dict()))
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_build_text_encoder_checks_config(minilm):
    assert isinstance(build_text_encoder(TextConfig(kind="minilm", dim=384)), MiniLMEncoder)
    with pytest.raises(ValueError, match="dim=4096.*384"):
        build_text_encoder(TextConfig(kind="minilm", dim=4096))
    with pytest.raises(ValueError, match="path"):
        build_text_encoder(TextConfig(kind="t5", dim=4096))


# ----------------------------------------------------------------------------- T5 / umT5 (tiny, built offline)

T5_VOCAB_TEXT = ["a red fox runs through deep snow", "a cat sits on a mat", "the camera pans over a city at night"]


@pytest.fixture(scope="module")
def tiny_wan_folder(tmp_path_factory):
    """A diffusers-Wan-shaped folder (text_encoder/ + tokenizer/) with a tiny random umT5 and a word tokenizer."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(T5_VOCAB_TEXT, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    torch.manual_seed(0)
    config = transformers.UMT5Config(vocab_size=tokenizer.get_vocab_size(), d_model=32, d_kv=8, d_ff=64,
                                     num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                     relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1)
    model = transformers.UMT5EncoderModel(config).eval()
    root = tmp_path_factory.mktemp("wan")
    model.save_pretrained(root / "text_encoder")
    fast.save_pretrained(root / "tokenizer")
    return root, model, fast


def _wan_reference(model, tokenizer, prompts, max_length):
    """What Wan's pipeline does: pad to max_length, encode, trim to the real length, zero-pad back."""
    batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    lengths = batch.attention_mask.sum(1)
    return torch.stack([torch.cat([h[:n], h.new_zeros(max_length - n, h.shape[1])]) for h, n in zip(hidden, lengths)])


def test_t5_matches_the_transformers_model(tiny_wan_folder):
    root, model, tokenizer = tiny_wan_folder
    encoder = T5Encoder(root, max_length=12)
    prompts = ["a red fox runs", "the camera pans over a city at night", ""]
    tokens, mask = encoder.encode(prompts)
    _assert_contract(tokens, mask, 3, 12, 32)
    assert mask.sum(1).tolist() == [5, 9, 1]  # words + </s>
    torch.testing.assert_close(tokens, _wan_reference(model, tokenizer, prompts, 12), atol=1e-5, rtol=1e-5)
    null, null_mask = encoder.null(2)
    torch.testing.assert_close(null[0], tokens[2], atol=1e-5, rtol=1e-5)
    assert null_mask.sum(1).tolist() == [1, 1]


def test_t5_truncates_and_builds_from_config(tiny_wan_folder):
    root, model, tokenizer = tiny_wan_folder
    encoder = build_text_encoder(TextConfig(kind="t5", max_length=4, dim=32), path_override=root)
    tokens, mask = encoder.encode(["a red fox runs through deep snow"])
    assert tokens.shape == (1, 4, 32) and mask.all()
    torch.testing.assert_close(tokens, _wan_reference(model, tokenizer, ["a red fox runs through deep snow"], 4))


def test_t5_missing_or_incomplete_folder_is_named(tiny_wan_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*text_encoder"):
        T5Encoder(tmp_path / "nowhere")
    (tmp_path / "half" / "text_encoder").mkdir(parents=True)
    (tmp_path / "half" / "text_encoder" / "config.json").write_text('{"model_type": "umt5"}')
    with pytest.raises(FileNotFoundError, match=r"half.*model\.safetensors.*tokenizer\.json"):
        T5Encoder(tmp_path / "half")


def test_t5_truncated_weights_are_a_weights_error_naming_the_file(tiny_wan_folder, tmp_path):
    import shutil

    from kinema.weights import WeightsError
    root, _, _ = tiny_wan_folder
    shutil.copytree(root, tmp_path / "cut")
    weights = tmp_path / "cut" / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cannot read the text encoder weights .*cut/text_encoder/model\.safetensors"
                                           r".*truncated"):
        T5Encoder(tmp_path / "cut")


def test_t5_refuses_other_model_types_and_widths_as_weights_errors(tiny_wan_folder, tmp_path):
    import json
    import shutil

    from kinema.weights import WeightsError
    root, _, _ = tiny_wan_folder
    shutil.copytree(root, tmp_path / "bert")
    config = tmp_path / "bert" / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "bert"}))
    with pytest.raises(WeightsError, match=r"bert/text_encoder/config.json: model_type is 'bert'.*\('t5', 'umt5'\)"):
        T5Encoder(tmp_path / "bert")
    with pytest.raises(WeightsError, match=r"TextConfig.dim=48 .* gives 32-dim tokens: that encoder belongs to another "
                                           r"model"):
        build_text_encoder(TextConfig(kind="t5", max_length=4, dim=48), path_override=root)


def test_t5_pipeline_folder_without_text_encoder_says_so(tmp_path):
    (tmp_path / "wan" / "transformer").mkdir(parents=True)
    (tmp_path / "wan" / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing text_encoder/ in .*wan"):
        T5Encoder(tmp_path / "wan")


def test_t5_variant_weights_load(tiny_wan_folder, tmp_path):
    """``save_pretrained(variant="fp16")`` names its file model.fp16.safetensors (diffusers' fp16 downloads)."""
    import shutil
    root, model, _ = tiny_wan_folder
    shutil.copytree(root / "tokenizer", tmp_path / "tokenizer")
    model.save_pretrained(tmp_path / "text_encoder", variant="fp16")
    assert (tmp_path / "text_encoder" / "model.fp16.safetensors").is_file()
    assert not (tmp_path / "text_encoder" / "model.safetensors").exists()
    tokens, _ = T5Encoder(tmp_path, max_length=6).encode(["a red fox"])
    torch.testing.assert_close(tokens, T5Encoder(root, max_length=6).encode(["a red fox"])[0])
