"""Token-exact sequences with the embedded tokenizer: ids kept as generated, mask/logprobs aligned,
the whole sequence equal to the chat template's rendering of the messages."""

from core import protocol
from rollout.tokens import ChatFormat, TokenSequence


def _episode(tok, first_ids):
    fmt = ChatFormat.of(tok)
    msgs = protocol.initial_messages("Run the tests and report.", "/work/repo", 4)
    seq = TokenSequence.start(tok, fmt, msgs)
    prompt = list(seq.token_ids)
    t1 = seq.add_generation(first_ids, [-0.5] * len(first_ids))
    obs = protocol.format_observation(protocol.Observation(1, "FAILED test_x\n"), 3)
    seq.add_user(obs)
    report = "<report><status>failure</status><summary>1 fails</summary><details>test_x</details></report>"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    gen2 = tok.encode(report, add_special_tokens=False) + [im_end]   # the model ended its turn itself
    t2 = seq.add_generation(gen2, [-0.25] * len(gen2))
    return seq, prompt, t1, t2, gen2


def test_chat_format_of_qwen3_template(tok):
    fmt = ChatFormat.of(tok)
    assert fmt.turn_close == "<|im_end|>\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") in fmt.eos_ids


def test_sequence_equals_chat_template_and_invariants(tok):
    text1 = "Run them.\n<command>pytest -q</command>"
    ids1 = tok.encode(text1, add_special_tokens=False)
    seq, prompt, t1, t2, gen2 = _episode(tok, ids1)
    assert t1 == text1 and t2.endswith("</report>")
    n = len(seq.token_ids)
    assert n == len(seq.mask) == len(seq.logprobs)
    # The prompt prefix never changes and is the template's rendering of system + user.
    assert seq.token_ids[:seq.prompt_len] == prompt
    assert prompt == tok.apply_chat_template(seq.messages[:2], tokenize=True, add_generation_prompt=True,
                                             return_dict=False)
    # With canonical generations, the ids equal the template's tokenization of all messages.
    full = tok.apply_chat_template(seq.messages, tokenize=False)
    assert tok.decode(seq.token_ids, skip_special_tokens=False) == full
    assert seq.token_ids == tok.encode(full, add_special_tokens=False)
    # Mask 1 exactly on generated ids; their spans decode to the turns (the EOS kept as generated).
    spans, cur = [], []
    for i, m in zip(seq.token_ids, seq.mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert spans == [ids1, gen2]
    assert tok.decode(spans[0]) == t1
    assert [lp for lp, m in zip(seq.logprobs, seq.mask) if m] == [-0.5] * len(ids1) + [-0.25] * len(gen2)
    assert all(lp == 0.0 for lp, m in zip(seq.logprobs, seq.mask) if not m)
    # Only one <|im_end|> closes the second turn: the model's own (mask 1), then "\n" (mask 0).
    assert seq.token_ids[-2:] == [gen2[-1], tok.encode("\n", add_special_tokens=False)[0]]


def test_noncanonical_generated_ids_are_kept_verbatim(tok):
    text = "<command>ls</command>"
    canonical = tok.encode(text, add_special_tokens=False)
    # Spell the same text one character per token: a tokenization the tokenizer would never produce.
    odd = [t for ch in text for t in tok.encode(ch, add_special_tokens=False)]
    assert odd != canonical
    seq, *_ = _episode(tok, odd)
    start = seq.mask.index(1)
    assert seq.token_ids[start:start + len(odd)] == odd
    assert tok.decode(seq.token_ids, skip_special_tokens=False) == tok.apply_chat_template(seq.messages, tokenize=False)
