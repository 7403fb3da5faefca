"""The bundled offline tokenizer, as Hugging Face `tokenizers` loads it (in the vLLM
environment, which has it): what `vllm bench serve`'s random dataset decodes re-encodes to
as many tokens, at a cost linear in the text."""

from __future__ import annotations

import json

import pytest

from revati.adapters.models import model_dir, tokenizer

tokenizers = pytest.importorskip("tokenizers")

LLAMA_REGULAR = 128000
RUN = 2048  # ids per prompt, as `--random-input-len 2048` asks


@pytest.fixture(scope="module")
def llama() -> tokenizers.Tokenizer:
    cfg = json.loads((model_dir("Llama-3.1-8B") / "config.json").read_text())
    return tokenizers.Tokenizer.from_str(tokenizer.build("Llama-3.1-8B", cfg)["tokenizer.json"])


def consecutive(offset: int) -> list[int]:
    """The random dataset's prompt: consecutive ids from a random offset."""
    return [(offset + i) % LLAMA_REGULAR for i in range(RUN)]


@pytest.mark.parametrize("offset", [20_000, 80_000, 100_000, 120_000])
def test_runs_of_word_ids_re_encode_to_the_same_ids(llama: tokenizers.Tokenizer,
                                                    offset: int) -> None:
    ids = consecutive(offset)
    assert llama.encode(llama.decode(ids), add_special_tokens=False).ids == ids


@pytest.mark.parametrize("offset", range(0, LLAMA_REGULAR, 4000))
def test_pre_tokens_stay_short_wherever_the_run_starts(llama: tokenizers.Tokenizer,
                                                       offset: int) -> None:
    """WordPiece's longest match costs the square of a pre-token's length: runs of pieces
    without a space decoded to one pre-token of 6,000 characters, which took the API server
    2-3 s to encode (program time: it showed in TTFT). They are cut now, along the pieces'
    boundaries where the run holds no-space pieces only: the token count stays that of the
    run, but for a piece split where a run crosses from word pieces to them (and the digit
    tiers, which regroup, as before)."""
    text = llama.decode(consecutive(offset))
    longest = max(len(piece) for piece, _ in llama.pre_tokenizer.pre_tokenize_str(text))
    assert longest <= tokenizer.MAX_PRETOKEN
    if offset >= 20_000:  # past the byte and digit tiers
        assert abs(len(llama.encode(text, add_special_tokens=False).ids) - RUN) <= 2
