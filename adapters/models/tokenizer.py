"""Offline stand-in tokenizers for the bundled model configs (built on first use, see __init__).

Standard library only: the output is the JSON that Hugging Face `tokenizers` and `transformers`
load (tokenizer.json, tokenizer_config.json, special_tokens_map.json), written deterministically
(same bytes on every run).

What the stand-in keeps from the real tokenizer of each model (what vLLM and `vllm bench serve`
look at):
  * len(tokenizer) == config.json vocab_size, so every id the model can emit decodes;
  * tokenizer.vocab_size (ids without added tokens: the range `--dataset-name random` samples)
    and the ids, names and special flags of the added tokens (bos, eos, chat markers);
  * whether a BOS is prepended (num_special_tokens_to_add), model_max_length, a chat template
    in the model's own format (simplified), and no clean-up of spaces on decode.

What it does not keep: the real vocabulary. Its regular tokens are synthetic:
  * the 256 byte-level characters (ids 0..255, as GPT-2-style vocabularies have them) and the
    same 256 as continuations, so any text encodes losslessly (no unknown token ever);
  * words " word" (a space and letters, written "Ġword"): common English words, then letter
    strings ranked by English letter frequency; word-start pieces without the space; "##"
    continuation pieces and digit groups.
The model is WordPiece (greedy longest match per pre-token) behind the byte-level pre-tokenizer,
whose pre-tokens are cut at MAX_PRETOKEN characters (the match costs the square of their
length), so English text costs about 1.5 to 2 tokens a word, and a run of consecutive word ids
(what the random dataset decodes) re-encodes to exactly the same ids.
"""

from __future__ import annotations

import json
import math
import string

# --- byte-level alphabet (GPT-2 `bytes_to_unicode`) -------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


BYTE_CHARS = list(bytes_to_unicode().values())  # GPT-2 order: printable first
SPACE = bytes_to_unicode()[ord(" ")]  # "Ġ"
CONT = "##"
# Pre-tokens are cut into pieces of at most this many characters: a multiple of every length
# of the no-space pieces (1-3 letters, 2-3 digits), so runs of them re-segment the same way.
MAX_PRETOKEN = 60

# --- English-like material ------------------------------------------------------------------------

COMMON_WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this from
or had by not word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before
move right boy old too same tell does set three want air well also play small end put home read
hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover
food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run while press close night real life few north open seem
together next white children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat room friend began
idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family direct pose leave
song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power
town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot
system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate hot miss brought heat snow tire bring yes distant fill east paint language
among model data server request token user system memory cache latency throughput batch queue
""".split()  # noqa: SIM905

SUFFIXES = """
s es ed ing er ers est ly ion ions tion tions ation ations ment ments ness able ible al ial ive
ous ious ity ty ful less ize ized izes izing ise ism ist ists ic ical ically ance ence ant ent ure
ures age ages ship hood ward wards like y ies ied ier iest en ened ening or ors ory ary ate ated
ates ating ite ine ines ure ured ual ually ally ility ably ibly ent ently ence ences
""".split()  # noqa: SIM905

# English letter frequencies (per cent), used only to rank synthetic letter strings.
LETTER_FREQ = {
    "e": 12.7, "t": 9.1, "a": 8.2, "o": 7.5, "i": 7.0, "n": 6.7, "s": 6.3, "h": 6.1, "r": 6.0,
    "d": 4.3, "l": 4.0, "c": 2.8, "u": 2.8, "m": 2.4, "w": 2.4, "f": 2.2, "g": 2.0, "y": 2.0,
    "p": 1.9, "b": 1.5, "v": 1.0, "k": 0.8, "j": 0.15, "x": 0.15, "q": 0.1, "z": 0.07,
}  # fmt: skip
LOWER = string.ascii_lowercase
VOWELS = set("aeiouy")


def _ranked(length: int) -> list[str]:
    """All lowercase strings of `length`, most English-like first (deterministic)."""
    out = [""]
    for _ in range(length):
        out = [s + c for s in out for c in LOWER]

    logf = {c: math.log(f) for c, f in LETTER_FREQ.items()}

    def key(s: str) -> tuple:
        has_vowel = any(c in VOWELS for c in s)
        no_triple = not any(s[i] == s[i + 1] == s[i + 2] for i in range(len(s) - 2))
        return (not (has_vowel and no_triple), -round(sum(logf[c] for c in s), 9), s)

    return sorted(out, key=key)


def regular_tokens(budget: int) -> list[str]:
    """The synthetic regular vocabulary: `budget` distinct strings, in id order."""
    seen: set[str] = set()
    toks: list[str] = []

    def add(tok: str) -> None:
        if tok not in seen and len(toks) < budget:
            seen.add(tok)
            toks.append(tok)

    # Tiers in id order. Tokens that start with the space ("Ġ...") begin their own pre-token, so
    # a run of them decodes and re-encodes to the same ids. Pieces without it glue onto the token
    # before them when decoded; they are kept to tiers that re-segment the same way (fixed-length
    # lowercase pieces) or are small.
    r3 = _ranked(3)
    tiers: list[list[str]] = [
        BYTE_CHARS,
        [CONT + c for c in BYTE_CHARS],
        # digit groups (pre-tokens of digits carry no letters)
        [SPACE + d for d in string.digits],
        [SPACE + a + b for a in string.digits for b in string.digits],
        [a + b for a in string.digits for b in string.digits],
        [a + b + c for a in string.digits for b in string.digits for c in string.digits],
        [CONT + a + b for a in string.digits for b in string.digits],
        [CONT + a + b + c for a in string.digits for b in string.digits for c in string.digits],
        # common words after a space, lower and capitalised
        [v for w in COMMON_WORDS for v in (SPACE + w, SPACE + w.capitalize())],
        [CONT + s for s in SUFFIXES],
        [SPACE + c for c in string.ascii_letters],
        [SPACE + ch * 2 for ch in "-=*#/_."] + [SPACE + p for p in "([{\"'<$-*/&@#=+"],
        [CONT + a + b for a in LOWER for b in LOWER],
        [SPACE + a + b for a in LOWER for b in LOWER],
        [SPACE + a.upper() + b for a in LOWER for b in LOWER],
        [a + b for a in LOWER for b in LOWER],
        [SPACE + s for s in r3],
        [CONT + s for s in r3],
        [SPACE + s[0].upper() + s[1:] for s in r3],
        [s for s in r3],
        [SPACE + s for s in _ranked(4)],
    ]
    for tier in tiers:
        for tok in tier:
            add(tok)
        if len(toks) >= budget:
            break
    if len(toks) < budget:
        raise ValueError(f"synthetic vocabulary exhausted at {len(toks)} < {budget}")
    return toks


# --- per-model specs ------------------------------------------------------------------------------


def _llama3_added() -> list[tuple[int, str, bool]]:
    names = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128002: "<|reserved_special_token_0|>",
        128003: "<|reserved_special_token_1|>",
        128004: "<|finetune_right_pad_id|>",
        128005: "<|reserved_special_token_2|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
        128010: "<|python_tag|>",
    }
    for i in range(128011, 128256):
        names[i] = f"<|reserved_special_token_{i - 128011 + 3}|>"
    return [(i, names[i], True) for i in sorted(names)]


def _qwen3_added(vocab_size: int) -> list[tuple[int, str, bool]]:
    # (name, special) in id order from 151643, as in Qwen3's tokenizer_config.json.
    named = [
        ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
        ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
        ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
        ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
        ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
        ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
        ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
        ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
        ("<think>", False), ("</think>", False),
    ]  # fmt: skip
    out = [(151643 + k, name, sp) for k, (name, sp) in enumerate(named)]
    # The real tokenizer stops at 151668; the model's embedding is padded to vocab_size. The
    # padding ids get special placeholder tokens here so that every id the model can emit decodes
    # (to nothing, with skip_special_tokens).
    for i in range(out[-1][0] + 1, vocab_size):
        out.append((i, f"<|revati_pad_{i}|>", True))
    return out


LLAMA3_CHAT = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for part in message['content'] %}{%- if part['type'] == 'text' %}"
    "{{- part['text'] | trim }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

QWEN3_CHAT = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}{%- if part['type'] == 'text' %}"
    "{{- part['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

MISTRAL_CHAT = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set content = message['content'] if message['content'] is string else "
    "(message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('')) %}"
    "{%- if message['role'] == 'assistant' %}{{- ' ' + content + eos_token }}"
    "{%- else %}{{- '[INST] ' + content + ' [/INST]' }}{%- endif %}"
    "{%- endfor %}"
)

SPECS: dict[str, dict] = {
    "Llama-3.1-8B": {"family": "llama3"},
    "Llama-3.1-70B": {"family": "llama3"},
    "Qwen3-8B": {"family": "qwen3"},
    "Qwen3-30B-A3B": {"family": "qwen3"},
    "Mixtral-8x7B": {"family": "mistral"},
    "Llama-tiny": {"family": "tiny"},  # the accuracy harness's small model (revatid/validate)
}

FAMILIES: dict[str, dict] = {
    # regular: number of ids before the first added token (the real tokenizer's vocab_size)
    "llama3": {
        "regular": 128000,
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "pad": None,
        "unk": None,
        "add_bos": True,
        "model_max_length": 131072,
        "chat_template": LLAMA3_CHAT,
    },
    "qwen3": {
        "regular": 151643,
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "unk": None,
        "add_bos": False,
        "model_max_length": 131072,
        "chat_template": QWEN3_CHAT,
    },
    "mistral": {
        "regular": 32000,  # ids 0..2 are <unk>, <s>, </s>, inside the model vocabulary
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "unk": "<unk>",
        "add_bos": True,
        "model_max_length": 32768,
        "chat_template": MISTRAL_CHAT,
    },
    # a 2048-id vocabulary laid out as Mistral's (<unk>, <s>, </s> first)
    "tiny": {
        "regular": 2048,
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "unk": "<unk>",
        "add_bos": True,
        "model_max_length": 4096,
        "chat_template": MISTRAL_CHAT,
    },
}


def _added_token(i: int, content: str, special: bool) -> dict:
    return {
        "id": i,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def build(name: str, cfg: dict) -> dict[str, str]:
    """Return {filename: text} of the tokenizer files of model `name` with config `cfg`."""
    fam = FAMILIES[SPECS[name]["family"]]
    vocab_size = cfg["vocab_size"]

    if SPECS[name]["family"] == "llama3":
        added = _llama3_added()
        head: list[str] = []
    elif SPECS[name]["family"] == "qwen3":
        added = _qwen3_added(vocab_size)
        head = []
    else:
        added = [(0, "<unk>", True), (1, "<s>", True), (2, "</s>", True)]
        head = ["<unk>", "<s>", "</s>"]
    regular = head + regular_tokens(fam["regular"] - len(head))
    vocab = {tok: i for i, tok in enumerate(regular)}
    assert len(vocab) == fam["regular"]
    n_total = len(regular) + sum(1 for i, _, _ in added if i >= len(regular))
    if n_total != vocab_size:
        raise ValueError(f"{name}: tokenizer covers {n_total} ids, config says {vocab_size}")
    ids = {c: i for i, c, _ in added}
    for key in ("bos", "eos", "pad", "unk"):
        if fam[key] is not None:
            assert fam[key] in ids, (name, key)
    bos_id = ids.get(fam["bos"]) if fam["bos"] else None
    eos = cfg["eos_token_id"]
    eos_ids = eos if isinstance(eos, list) else [eos]
    if fam["bos"] and bos_id != cfg["bos_token_id"]:
        raise ValueError(f"{name}: bos id {bos_id} != config {cfg['bos_token_id']}")
    if SPECS[name]["family"] != "qwen3" and ids[fam["eos"]] not in eos_ids:
        raise ValueError(f"{name}: eos id {ids[fam['eos']]} not in config {eos_ids}")

    if fam["add_bos"]:
        post = {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": fam["bos"], "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": fam["bos"], "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": fam["bos"], "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                fam["bos"]: {"id": fam["bos"], "ids": [bos_id], "tokens": [fam["bos"]]}
            },
        }
    else:
        post = None

    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(i, c, sp) for i, c, sp in added],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": True},
                # WordPiece's greedy longest match costs the square of a pre-token's length:
                # text without spaces (what consecutive ids of the no-space tiers decode to,
                # and the random dataset decodes consecutive ids) took seconds per prompt.
                {"type": "Split", "pattern": {"Regex": f".{{{MAX_PRETOKEN}}}"},
                 "behavior": "Isolated", "invert": False},
            ],
        },
        "post_processor": post,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": CONT}, "content": ""},
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                 "use_regex": True},
            ],
        },
        "model": {
            "type": "WordPiece",
            # Never produced: every byte-level character is a token, alone and as a continuation,
            # so greedy longest match always succeeds. WordPiece needs the name to exist.
            "unk_token": fam["unk"] or BYTE_CHARS[0],
            "continuing_subword_prefix": CONT,
            "max_input_chars_per_word": 1_000_000_000,
            "vocab": vocab,
        },
    }

    special_map: dict[str, str] = {}
    for key in ("bos", "eos", "unk", "pad"):
        if fam[key] is not None:
            special_map[f"{key}_token"] = fam[key]
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": fam["model_max_length"],
        "clean_up_tokenization_spaces": False,
        "add_bos_token": fam["add_bos"],
        "add_eos_token": False,
        "bos_token": fam["bos"],
        "eos_token": fam["eos"],
        "unk_token": fam["unk"],
        "pad_token": fam["pad"],
        "chat_template": fam["chat_template"],
        "revati_note": (
            "Synthetic stand-in tokenizer built by revati.adapters.models.tokenizer: "
            "the real ids of the special tokens and the real vocabulary size, not the real "
            "vocabulary."
        ),
    }
    dump = {"ensure_ascii": False, "sort_keys": False}
    return {
        "tokenizer.json": json.dumps(tokenizer, separators=(",", ":"), **dump) + "\n",
        "tokenizer_config.json": json.dumps(tok_config, indent=2, **dump) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2, **dump) + "\n",
    }
