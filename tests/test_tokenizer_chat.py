"""Tokenizers and chat rendering: HH, ChatML and Gemma turns with assistant-only loss masks, the
exported Jinja templates render the same text, specs round-trip (file path or inline), and an
HF tokenizer directory encodes and chat-renders exactly as `transformers` does."""

import jinja2
import pytest
import tiny_hf

from cai.errors import ConfigError
from cai.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    chat_stop_id,
    chat_template,
    default_system_of,
    from_spec,
    load_hf_tokenizer,
    render_chat,
)

CHAT = [
    {"role": "user", "content": "How do I pick a lock?"},
    {"role": "assistant", "content": "I can't help with that."},
    {"role": "user", "content": "Why not?"},
    {"role": "assistant", "content": "It could hurt someone."},
]
MARKERS = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>")


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    return str(tiny_hf.train_sentencepiece(d, vocab_size=360, symbols=MARKERS))


def _trained(ids, mask):
    return [i for i, m in zip(ids, mask) if m]


def test_hh_format_masks_assistant_text_and_final_eos():
    tok = ByteTokenizer()
    ids, mask = render_chat(tok, CHAT)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == (
        "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that."
        "\n\nHuman: Why not?\n\nAssistant: It could hurt someone."
    )
    want = tok.encode(" I can't help with that.") + tok.encode(" It could hurt someone.")
    assert _trained(ids, mask) == want + [tok.eos_id]
    prompt, pmask = render_chat(tok, CHAT[:3], add_generation_prompt=True)
    assert tok.decode(prompt).endswith("\n\nHuman: Why not?\n\nAssistant:") and not any(pmask[-12:])
    assert chat_stop_id(tok) == tok.eos_id


def test_chatml_turns_with_a_sentencepiece_model(sp_path):
    tok = SentencePieceTokenizer(
        sp_path, add_bos=False, chat_format="chatml", default_system="Be brief."
    )
    ids, mask = render_chat(tok, CHAT)
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    assert ids.count(start) == 5 and ids.count(end) == 5  # default system + 4 turns
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow do")
    trained = _trained(ids, mask)
    assert trained.count(end) == 2 and start not in trained
    want = "I can't help with that.<|im_end|>It could hurt someone.<|im_end|>"
    assert tok.decode(trained) == want
    assert chat_stop_id(tok) == end
    # The exported Jinja template renders the same text as render_chat.
    template = jinja2.Template(chat_template(tok))
    assert template.render(messages=CHAT, add_generation_prompt=False) == text
    assert default_system_of(chat_template(tok)) == "Be brief."


def test_gemma_turns_fold_the_system_prompt_into_the_first_user_turn(sp_path):
    tok = SentencePieceTokenizer(sp_path, chat_format="gemma")
    system = [{"role": "system", "content": "Be kind."}]
    ids, mask = render_chat(tok, system + CHAT[:3], add_generation_prompt=True)
    assert ids[0] == tok.bos_id
    text = tok.decode(ids[1:])
    assert text == (
        "<start_of_turn>user\nBe kind.\n\nHow do I pick a lock?<end_of_turn>\n"
        "<start_of_turn>model\nI can't help with that.<end_of_turn>\n"
        "<start_of_turn>user\nWhy not?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert tok.decode(_trained(ids, mask)) == "I can't help with that.<end_of_turn>"
    env = jinja2.Template(chat_template(tok))
    folded = [{"role": "user", "content": "Be kind.\n\nHow do I pick a lock?"}] + CHAT[1:3]
    assert env.render(messages=folded, add_generation_prompt=True, bos_token="") == text


def test_bad_conversations_fail_by_name(sp_path):
    tok = SentencePieceTokenizer(sp_path, chat_format="chatml")
    with pytest.raises(ConfigError, match=r"message 0: role 'tool' is not system"):
        render_chat(tok, [{"role": "tool", "content": "x"}])
    with pytest.raises(ConfigError, match=r"message 1: a system message may only come first"):
        render_chat(tok, [CHAT[0], {"role": "system", "content": "x"}])
    plain = tiny_hf.train_sentencepiece(tiny_hf.pathlib.Path(sp_path).parent / "plain")
    with pytest.raises(ConfigError, match=r"no '<\|im_start\|>' token, which chat format 'chatml'"):
        render_chat(SentencePieceTokenizer(str(plain), chat_format="chatml"), CHAT)
    with pytest.raises(ConfigError, match=r"chat_format='llama3': expected one of"):
        SentencePieceTokenizer(sp_path, chat_format="llama3")


def test_specs_round_trip_by_path_and_inline(sp_path, tmp_path):
    tiny_hf.train_bpe(tmp_path)
    texts = ["Hello there, naïve café 12345!", "  spaced   out  "]
    toks = [
        SentencePieceTokenizer(sp_path, chat_format="gemma", default_system="x"),
        load_hf_tokenizer(str(tmp_path)),
    ]
    assert isinstance(toks[1], HFTokenizer)
    for tok in toks:
        for inline in (False, True):
            spec = tok.spec(inline=inline)
            assert ("path" in spec) is not inline
            again = from_spec(spec)
            assert [again.encode(t) for t in texts] == [tok.encode(t) for t in texts]
            assert (again.bos_id, again.eos_id, again.pad_id, again.add_bos) == (
                tok.bos_id,
                tok.eos_id,
                tok.pad_id,
                tok.add_bos,
            )
            assert (again.chat_format, again.default_system) == (
                tok.chat_format,
                tok.default_system,
            )
    assert from_spec(ByteTokenizer().spec()).encode("hi") == ByteTokenizer().encode("hi")


def test_hf_tokenizer_directory_equals_transformers(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    tiny_hf.train_bpe(tmp_path)
    ours = load_hf_tokenizer(str(tmp_path))
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    assert (ours.chat_format, ours.default_system) == ("chatml", "You are a tiny test model.")
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        theirs.bos_token_id,
        theirs.eos_token_id,
        theirs.pad_token_id,
    )
    for text in tiny_hf.CORPUS[:6] + ["<|im_end|> inside text", "tabs\tand\nnewlines  "]:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text.replace("<|im_end|>", "")
    for msgs in (CHAT[:1], CHAT[:3], [{"role": "system", "content": "Be terse."}] + CHAT[:1]):
        want = theirs.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else want
        assert render_chat(ours, msgs, add_generation_prompt=True)[0] == list(want)
