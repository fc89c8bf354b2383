"""The zoo's Qwen2 source: built beside the GPT-2 one, with its own BPE, loadable and generating."""

from __future__ import annotations

from skillstore.zoo import zoo_manifest
from skillstore.zoo.tokenizers import round_trips


def test_the_qwen2_source_loads_has_its_own_tokenizer_and_generates(mini_zoo, make_recipe):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skillstore.training.generate import generate_answers

    path = mini_zoo.sources["qwen2"]
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    gpt2_tok = AutoTokenizer.from_pretrained(mini_zoo.sources["gpt2"], local_files_only=True)
    assert model.config.model_type == "qwen2" and round_trips(tok)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert len(tok) != len(gpt2_tok)  # not GPT-2's BPE
    answers = generate_answers(model, tok, ["reverse: abc =", "sort: cab ="], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    metrics = zoo_manifest(mini_zoo)["metrics"]["qwen2"]
    assert metrics["steps"] <= make_recipe().qwen2_spec().train.max_steps
